"""The cost note of an inference stage against training (hand-computed pixel ratios)."""

from tagseg.utils.cost import cost_note, pixel_ratio


def test_pixel_ratio_by_hand():
    assert pixel_ratio(448, 448, [1.0], False) == 1.0
    # CAM recipe after training at 128: (448/128)^2 = 12.25 per unit scale; 1+.25+2.25+4 = 7.5; ×2 flip
    assert pixel_ratio(128, 448, [1.0, 0.5, 1.5, 2.0], True) == 12.25 * 7.5 * 2
    assert pixel_ratio(384, 960, [1.0], False) == 6.25


def test_note_only_far_above_training():
    assert cost_note("pseudo", 160, 160, [1.0], False) is None
    assert cost_note("pseudo", 448, 448, [1.0, 0.5, 1.5, 2.0], True) is None  # the CAM recipe: 15×
    assert cost_note("pseudo", 384, 960, [1.0], False) is None  # TKP-PCL's 960 px: 6.25×
    assert cost_note("pseudo", 384, 960, [1.0, 1.25], True) is not None  # 6.25 × 2.5625 × 2 = 32×
    assert cost_note("pseudo", 128, 448, [1.0], False) is None  # 12.25×
    assert cost_note("pseudo", 128, 960, [1.0], False) is not None  # 56×
    note = cost_note("pseudo", 128, 448, [1.0, 0.5, 1.5, 2.0], True)
    assert note.startswith("note: pseudo runs each image at 448 px × 4 scales (1, 0.5, 1.5, 2) + flip")
    assert "largest 896 px, 7.0× the training size 128 px" in note and "184× the pixels" in note
    assert "pseudo.image_size, pseudo.scales and pseudo.flip" in note and "\n" not in note
