"""ViT-PCM fidelity choices (official code vs. the earlier recipe), each reachable by a key."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch import nn

from tagseg.config import TrainConfig, load_config
from tagseg.data.views import crop_corner
from tagseg.engine.phases import Phase, apply_phase
from tagseg.errors import ConfigError
from tagseg.models.encoder import PatchEncoder
from tagseg.models.hv_bilstm import HVBiLSTM, keras_lstm_init_


class _Net(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder


def _warmup_encoder(frozen_dropout: bool) -> PatchEncoder:
    torch.manual_seed(0)
    net = _Net(PatchEncoder("vit_tiny_patch16_224", image_size=32, vit_dropout=0.1))
    frozen = apply_phase(net, TrainConfig(unfreeze_blocks=2), Phase("warmup", 1e-3, False), "adapt", frozen_dropout)
    net.train()
    for m in frozen:
        m.eval()
    return net.encoder


def test_frozen_dropout_keeps_vit_dropout_active_in_every_frozen_block():
    enc = _warmup_encoder(frozen_dropout=True)
    assert not any(p.requires_grad for p in enc.parameters())  # still frozen: no gradient
    drops = [m for m in enc.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    assert len(drops) == 3 * len(enc.backbone.blocks) and all(m.training for m in drops)
    x = torch.rand(1, 3, 32, 32)
    assert not torch.allclose(enc(x), enc(x))


def test_without_frozen_dropout_a_frozen_encoder_is_deterministic():
    enc = _warmup_encoder(frozen_dropout=False)
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(enc(x), enc(x))


def test_frozen_dropout_keeps_zero_dropout_layers_in_eval_mode():
    torch.manual_seed(0)
    net = _Net(PatchEncoder("vit_tiny_patch16_224", image_size=32, vit_dropout=0.0))
    frozen = apply_phase(net, TrainConfig(), Phase("warmup", 1e-3, False), "adapt", frozen_dropout=True)
    assert {id(m) for m in net.encoder.modules() if isinstance(m, nn.Dropout)} <= {id(m) for m in frozen}


def test_keras_lstm_initialisation():
    torch.manual_seed(0)
    d, h = 10, 6
    lstm = nn.LSTM(d, h, batch_first=True, bidirectional=True)
    keras_lstm_init_(lstm)
    bound = math.sqrt(6.0 / (d + 4 * h))  # glorot-uniform of Keras' (D, 4H) kernel
    for suffix in ("", "_reverse"):
        w_ih = getattr(lstm, f"weight_ih_l0{suffix}")
        w_hh = getattr(lstm, f"weight_hh_l0{suffix}")
        assert w_ih.abs().max() <= bound and w_ih.abs().max() > 0.8 * bound
        torch.testing.assert_close(w_hh.t() @ w_hh, torch.eye(h), rtol=0, atol=1e-5)  # orthogonal
        b_ih, b_hh = getattr(lstm, f"bias_ih_l0{suffix}"), getattr(lstm, f"bias_hh_l0{suffix}")
        expected = torch.zeros(4 * h)
        expected[h:2 * h] = 1.0  # forget gate
        assert torch.equal(b_ih.detach(), expected) and torch.equal(b_hh.detach(), torch.zeros(4 * h))


def test_torch_lstm_init_is_still_reachable():
    torch.manual_seed(0)
    net = HVBiLSTM(5, 4, init="torch")
    assert net.row_lstm.bias_hh_l0.abs().sum() > 0  # PyTorch's uniform bias, not Keras' zeros
    with pytest.raises(ValueError, match="LSTM init"):
        HVBiLSTM(5, 4, init="tf")
    with pytest.raises(ConfigError, match="model.lstm_init"):
        load_config("demo", ["model.lstm_init=tf"])
    with pytest.raises(ConfigError, match="model.lstm_dropout_masks"):
        load_config("demo", ["model.lstm_dropout_masks=one"])


def _masked_reference(net: HVBiLSTM, seq: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two input masks the layer draws after ``seed``, applied to ``seq`` (same draw order)."""
    torch.manual_seed(seed)
    return net.row_input_dropout(seq), net.row_input_dropout(seq)


@pytest.mark.parametrize("masks", ["per_step", "per_direction"])
def test_separate_directions_draw_their_own_masks(masks):
    torch.manual_seed(0)
    net = HVBiLSTM(6, 4, dropout=0.0, input_dropout=0.5, dropout_masks=masks).train()
    seq = torch.randn(5, 7, 6)
    torch.manual_seed(3)
    out = net._direction_pair(net.row_lstm, net.row_input_dropout, seq)
    fwd_in, bwd_in = _masked_reference(net, seq, 3)
    assert not torch.equal(fwd_in, bwd_in)
    torch.testing.assert_close(out[..., :4], net.row_lstm(fwd_in)[0][..., :4])
    torch.testing.assert_close(out[..., 4:], net.row_lstm(bwd_in)[0][..., 4:])


def test_per_step_masks_change_over_steps_and_per_sequence_masks_do_not():
    seq = torch.ones(50, 7, 6)
    torch.manual_seed(0)
    per_step = HVBiLSTM(6, 4, input_dropout=0.5, dropout_masks="per_step").train().row_input_dropout(seq)
    per_seq = HVBiLSTM(6, 4, input_dropout=0.5, dropout_masks="per_direction").train().row_input_dropout(seq)
    assert not (per_step == per_step[:, :1]).all()
    assert (per_seq == per_seq[:, :1]).all()


def test_shared_dropout_uses_one_mask_for_both_directions():
    torch.manual_seed(0)
    net = HVBiLSTM(6, 4, dropout=0.0, input_dropout=0.5, dropout_masks="shared").train()
    seq = torch.randn(5, 7, 6)
    torch.manual_seed(3)
    out = net._direction_pair(net.row_lstm, net.row_input_dropout, seq)
    shared, _ = _masked_reference(net, seq, 3)
    torch.testing.assert_close(out, net.row_lstm(shared)[0])


def test_per_direction_dropout_is_plain_in_eval_mode():
    torch.manual_seed(0)
    net = HVBiLSTM(6, 4, input_dropout=0.5).eval()
    x = torch.randn(2, 3, 4, 6)
    shared = HVBiLSTM(6, 4, input_dropout=0.5, dropout_masks="shared").eval()
    shared.load_state_dict(net.state_dict())
    assert torch.equal(net(x), shared(x))


class _Enumerate:
    """A stand-in generator whose ``integers(n)`` returns each of 0..n-1 in turn."""

    def __init__(self) -> None:
        self.next = 0

    def integers(self, n: int) -> int:
        value, self.next = self.next % n, self.next + 1
        return value


def test_official_crop_corners_pile_up_on_the_last_valid_corner():
    rng = _Enumerate()
    counts = Counter(crop_corner(rng, 384, 128, 16, "official") for _ in range(25))  # 0, 16, ..., 384
    assert counts[256] == 9 and all(counts[c] == 1 for c in range(0, 256, 16)) and sum(counts.values()) == 25


def test_uniform_crop_corners_cover_the_valid_corners_once():
    rng = _Enumerate()
    counts = Counter(crop_corner(rng, 384, 128, 16, "uniform") for _ in range(17))
    assert sorted(counts) == list(range(0, 257, 16)) and set(counts.values()) == {1}
    with pytest.raises(ValueError, match="crop corners"):
        crop_corner(rng, 384, 128, 16, "centre")


def test_official_crop_corner_frequencies_with_a_real_generator():
    import numpy as np

    rng = np.random.default_rng(0)
    draws = [crop_corner(rng, 384, 128, 16, "official") for _ in range(5000)]
    assert abs(draws.count(256) / 5000 - 9 / 25) < 0.03 and max(draws) == 256 and min(draws) == 0


def test_paper_configs_state_their_warmup_crop_and_selection():
    voc, coco = load_config("vitpcm_voc"), load_config("vitpcm_coco")
    assert voc.train.warmup_epochs == coco.train.warmup_epochs == 1  # the official ViT-PCM code
    assert load_config("tkpcl_voc").train.warmup_epochs == load_config("tkpcl_coco").train.warmup_epochs == 2
    assert coco.method.et_crop_prob == 0.0 and load_config("tkpcl_coco").method.et_crop_prob == 0.0
    assert voc.method.et_crop_prob == 0.3
    assert voc.train.select == coco.train.select == "best"
    for cfg in (voc, coco):
        assert cfg.model.frozen_dropout and cfg.model.lstm_init == "keras"
        assert cfg.model.lstm_dropout_masks == "per_step"
        assert cfg.method.et_align_corners and cfg.method.et_crop_corners == "official"


def test_demo_keeps_its_first_recipe():
    demo = load_config("demo")
    assert (demo.model.lstm_init, demo.model.lstm_dropout_masks, demo.model.frozen_dropout) == ("torch", "shared", False)
    assert (demo.method.et_crop_corners, demo.method.et_align_corners) == ("uniform", False)
    assert not demo.pseudo.align_corners and load_config("vitpcm_voc").pseudo.align_corners
    with pytest.raises(ConfigError, match="method.et_crop_corners"):
        load_config("demo", ["method.et_crop_corners=centre"])


def test_patch_pseudo_probabilities_with_aligned_corners_follow_a_plain_reference():
    """pseudo.align_corners=true (default): the input is resized to image_size and the merged
    probabilities back to the image size, both bilinear with align_corners=True, no antialiasing."""
    import torch.nn.functional as F

    from tagseg.config import PseudoConfig
    from tagseg.inference.patch import patch_merged_probabilities
    from tagseg.methods.label_merge import label_merge

    class Grid(nn.Module):  # a stand-in classifier: the mean colour of each 16×16 patch, softmaxed
        def forward(self, x):
            class Out:
                probs = F.avg_pool2d(x, 16).permute(0, 2, 3, 1).mul(4).softmax(-1)
            return Out()

    image = torch.rand(3, 45, 61, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1.0, 0.0, 1.0])
    cfg = PseudoConfig(image_size=64)
    assert cfg.align_corners
    got = patch_merged_probabilities(Grid(), image, labels, cfg)
    x = F.interpolate(image[None], size=(64, 64), mode="bilinear", align_corners=True)
    z = Grid()(x).probs.permute(0, 3, 1, 2)
    want = F.interpolate(label_merge(z, labels[None]), size=(45, 61), mode="bilinear", align_corners=True)[0]
    torch.testing.assert_close(got, want)
    old = patch_merged_probabilities(Grid(), image, labels, PseudoConfig(image_size=64, align_corners=False))
    assert not torch.allclose(got, old, atol=1e-3)
