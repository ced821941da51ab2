"""Tests of the synthetic demo dataset generator."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tagseg.data.classes import IGNORE_INDEX, voc_palette
from tagseg.data.synthetic import (
    SYNTHETIC_CLASSES,
    generate_dataset,
    image_labels,
    mark_boundaries,
    render_sample,
    sample_id,
)
from tagseg.errors import ConfigError

NUM_STATS_SAMPLES = 200
SIZE = 160


@pytest.fixture(scope="module")
def samples() -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 160, 160, 3) uint8 and masks (N, 160, 160) uint8 of the first N samples."""
    pairs = [render_sample(i, seed=0, size=SIZE) for i in range(NUM_STATS_SAMPLES)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


# ---------------------------------------------------------------------------- rendering


def test_render_sample_types_and_values() -> None:
    image, mask = render_sample(0)
    assert image.shape == (160, 160, 3) and image.dtype == np.uint8
    assert mask.shape == (160, 160) and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) <= set(range(len(SYNTHETIC_CLASSES)))
    image, mask = render_sample(5, size=96)
    assert image.shape == (96, 96, 3) and mask.shape == (96, 96)


def test_classes() -> None:
    assert SYNTHETIC_CLASSES[0] == "background"
    assert len(SYNTHETIC_CLASSES) == 6 and len(set(SYNTHETIC_CLASSES)) == 6


def test_same_index_gives_identical_arrays() -> None:
    a_img, a_mask = render_sample(7, seed=3)
    b_img, b_mask = render_sample(7, seed=3)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)


def test_sample_does_not_depend_on_render_order() -> None:
    forward = {i: render_sample(i) for i in (1, 2, 3)}
    backward = {i: render_sample(i) for i in (3, 2, 1)}
    for i in (1, 2, 3):
        assert np.array_equal(forward[i][0], backward[i][0])
        assert np.array_equal(forward[i][1], backward[i][1])


def test_index_and_seed_change_the_sample() -> None:
    base = render_sample(4, seed=0)[0]
    assert not np.array_equal(base, render_sample(5, seed=0)[0])
    assert not np.array_equal(base, render_sample(4, seed=1)[0])


def test_identical_bytes_in_a_fresh_process() -> None:
    code = (
        "import hashlib; from tagseg.data.synthetic import render_sample\n"
        "im, m = render_sample(11, seed=2)\n"
        "print(hashlib.sha256(im.tobytes() + m.tobytes()).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    im, m = render_sample(11, seed=2)
    assert out.stdout.strip() == hashlib.sha256(im.tobytes() + m.tobytes()).hexdigest()


def test_shape_windows_match_full_image_reference() -> None:
    """Shapes drawn in their clipped bounding window equal a plain full-image evaluation."""
    from tagseg.data.synthetic import _rotate, _shape_inside, _shape_mask, _Shape

    rng = np.random.default_rng(0)
    size = 96
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    objects = [_Shape(cls, float(rng.uniform(0, size)), float(rng.uniform(0, size)),
                      float(rng.uniform(4, 40)), float(rng.uniform(0, 2 * np.pi)),
                      float(rng.uniform(0.6, 1.0)))
               for cls in range(1, 6) for _ in range(20)]
    # widest extents: square box and cross turned by 45 degrees, star and triangle upright
    objects += [_Shape(cls, 48.2, 47.9, 40.0, angle, 1.0)
                for cls in range(1, 6) for angle in (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)]
    for obj in objects:
        u, v = _rotate(yy - obj.cy, xx - obj.cx, obj.angle)
        reference = _shape_inside(obj.cls, u / obj.radius, v / obj.radius, obj.aspect)
        drawn = np.zeros((size, size), dtype=bool)
        ys, xs, inside, _, _ = _shape_mask(obj, size)
        drawn[ys, xs] = inside
        assert np.array_equal(drawn, reference), obj


def test_bad_arguments_raise() -> None:
    with pytest.raises(ConfigError, match="index"):
        render_sample(-1)
    with pytest.raises(ConfigError, match="size"):
        render_sample(0, size=16)


# ---------------------------------------------------------------------------- statistics


def test_every_image_has_objects_and_counts_vary(samples) -> None:
    _, masks = samples
    counts = np.array([len(image_labels(m)) for m in masks])
    assert counts.min() >= 1 and counts.max() <= 3
    hist = np.bincount(counts, minlength=4)
    assert hist[1] > 0.2 * len(masks) and hist[2] > 0.2 * len(masks) and hist[3] > 0


def test_every_class_is_frequent(samples) -> None:
    _, masks = samples
    present = np.array([[(m == c).any() for c in range(1, 6)] for m in masks])
    freq = present.mean(axis=0)
    assert np.all(freq > 0.15), freq
    assert np.all(freq < 0.5), freq


def test_same_class_twice_occurs(samples) -> None:
    """Some images hold two separate, sizeable regions of one class."""
    _, masks = samples
    repeated = 0
    for m in masks:
        for c in range(1, 6):
            labelled, n = ndimage.label(m == c)
            sizes = np.bincount(labelled.ravel())[1:]
            repeated += int((sizes >= 100).sum() >= 2)
    assert repeated >= 5


def test_object_sizes_span_a_patch_to_a_third_of_the_image(samples) -> None:
    _, masks = samples
    areas = np.array([(m == c).sum() for m in masks for c in range(1, 6) if (m == c).any()])
    image_area = SIZE * SIZE
    assert areas.min() <= 16 * 16  # about one 16-px patch or less
    assert (areas <= 2 * 16 * 16).mean() > 0.1  # small objects are common
    assert areas.max() >= image_area / 4
    assert (areas >= image_area / 8).mean() > 0.05  # large objects are not rare


def test_occlusion_happens(samples) -> None:
    """Some objects touch another object (one is partly hidden behind the other)."""
    _, masks = samples
    touching = 0
    for m in masks:
        fg = m > 0
        right = fg[:, 1:] & fg[:, :-1] & (m[:, 1:] != m[:, :-1])
        down = fg[1:, :] & fg[:-1, :] & (m[1:, :] != m[:-1, :])
        touching += int(right.any() or down.any())
    assert touching >= 10


def test_colour_alone_is_an_imperfect_cue(samples) -> None:
    """A nearest-mean-colour classifier of object pixels beats chance but is far from perfect."""
    images, masks = samples
    fg = masks > 0
    pixels = images[fg].astype(np.float64)
    labels = masks[fg]
    means = np.stack([pixels[labels == c].mean(axis=0) for c in range(1, 6)])
    dist = ((pixels[:, None, :] - means[None]) ** 2).sum(-1)
    accuracy = float((dist.argmin(axis=1) + 1 == labels).mean())
    assert 0.35 < accuracy < 0.85, accuracy


def test_texture_statistics_differ_between_classes(samples) -> None:
    """Mean horizontal colour gradient inside objects: the smooth disc is far below the rest."""
    images, masks = samples
    grad = np.zeros(masks.shape)
    grad[:, :, :-1] = np.abs(np.diff(images.astype(np.float64), axis=2)).sum(-1)
    per_class = []
    for c in range(1, 6):
        interior = np.stack([ndimage.binary_erosion(m == c, iterations=2) for m in masks])
        interior[:, :, -1] = False
        per_class.append(grad[interior].mean())
    disc = SYNTHETIC_CLASSES.index("disc") - 1
    others = [g for k, g in enumerate(per_class) if k != disc]
    assert per_class[disc] < 0.5 * min(others), per_class
    assert max(per_class) > 3 * min(per_class), per_class


def test_background_clutter_uses_saturated_object_like_colours(samples) -> None:
    images, masks = samples
    img = images.astype(np.float64)
    hi, lo = img.max(-1), img.min(-1)
    saturation = (hi - lo) / np.maximum(hi, 1.0)
    per_image = [(saturation[i][masks[i] == 0] > 0.5).mean() for i in range(len(masks))]
    assert min(per_image) > 0.005  # every background holds saturated distractors
    assert np.mean(per_image) < 0.2  # ... but it is mostly muted


# ---------------------------------------------------------------------------- boundaries


def test_mark_boundaries_hand_computed() -> None:
    mask = np.zeros((6, 6), dtype=np.uint8)
    mask[2:4, 2:4] = 3
    out = mark_boundaries(mask, 1)
    expected = np.zeros((6, 6), dtype=np.uint8)
    expected[1:5, 1:5] = IGNORE_INDEX  # the 2x2 object and the 1-px ring around it
    assert np.array_equal(out, expected)
    assert np.array_equal(mark_boundaries(mask, 0), mask)
    assert mark_boundaries(mask, 0) is not mask


def test_mark_boundaries_keeps_object_interior() -> None:
    mask = np.zeros((14, 14), dtype=np.uint8)
    mask[4:10, 4:10] = 1
    out = mark_boundaries(mask, 2)  # ignore every pixel within 2 px (Chebyshev) of a change
    assert np.all(out[6:8, 6:8] == 1) and out[5, 5] == IGNORE_INDEX
    assert out[2, 2] == IGNORE_INDEX and out[2, 6] == IGNORE_INDEX
    assert out[1, 6] == 0 and out[0, 0] == 0 and out[13, 13] == 0
    assert int((out == IGNORE_INDEX).sum()) == 10 * 10 - 2 * 2
    with pytest.raises(ConfigError):
        mark_boundaries(mask, -1)


# ---------------------------------------------------------------------------- folder output


def _read_labels_csv(path) -> dict[str, list[str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "image,labels"
    out = {}
    for line in lines[1:]:
        name, labels = line.split(",")
        out[name] = labels.split(";") if labels else []
    return out


def test_generate_dataset_round_trip(tmp_path) -> None:
    root = generate_dataset(tmp_path / "syn", num_train=6, num_val=3, size=64, seed=5)
    assert (root / "classes.txt").read_text().splitlines() == list(SYNTHETIC_CLASSES)
    train = (root / "splits" / "train.txt").read_text().split()
    val = (root / "splits" / "val.txt").read_text().split()
    assert train == [sample_id(i) for i in range(6)]
    assert val == [sample_id(i) for i in range(6, 9)]
    assert train[0] == "syn_00000"
    labels = _read_labels_csv(root / "labels.csv")
    assert sorted(labels) == sorted(f"{s}.png" for s in train + val)
    palette = voc_palette()
    for i, sid in enumerate(train + val):
        with Image.open(root / "images" / f"{sid}.png") as im:
            assert im.mode == "RGB"
            image = np.asarray(im)
        with Image.open(root / "masks" / f"{sid}.png") as im:
            assert im.mode == "P"
            assert im.getpalette()[: 3 * 256] == palette
            mask = np.asarray(im)
        ref_image, ref_mask = render_sample(i, seed=5, size=64)
        assert np.array_equal(image, ref_image) and np.array_equal(mask, ref_mask)
        names = [SYNTHETIC_CLASSES[c] for c in np.unique(mask) if c != 0]
        assert labels[f"{sid}.png"] == names and names
    params = json.loads((root / "synthetic.json").read_text())
    assert params["seed"] == 5 and params["num_train"] == 6 and params["size"] == 64
    assert params["complete"] is True


def test_generate_dataset_is_skipped_when_complete(tmp_path, monkeypatch) -> None:
    root = generate_dataset(tmp_path / "syn", num_train=2, num_val=1, size=48)
    import tagseg.data.synthetic as synthetic

    def fail(*args, **kwargs):
        raise AssertionError("a complete dataset must not be rendered again")

    monkeypatch.setattr(synthetic, "render_sample", fail)
    assert generate_dataset(root, num_train=2, num_val=1, size=48) == root
    # a missing file makes it incomplete: it is regenerated only with overwrite=True
    (root / "masks" / "syn_00001.png").unlink()
    with pytest.raises(ConfigError, match="overwrite"):
        generate_dataset(root, num_train=2, num_val=1, size=48)
    with pytest.raises(AssertionError, match="rendered again"):
        generate_dataset(root, num_train=2, num_val=1, size=48, overwrite=True)


def test_generated_folder_carries_a_manifest(tmp_path) -> None:
    """The data folder is a stage output like any other: manifest.json with its parameters and
    the files on disk; a complete folder generated before manifests existed gains one."""
    root = generate_dataset(tmp_path / "syn", num_train=3, num_val=2, size=48, seed=4)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["stage"] == "synthetic data" and manifest["settings"]["seed"] == 4
    assert manifest["counts"]["splits"] == {"train": 3, "val": 2}
    assert manifest["counts"]["on_disk"] == {"images": 5, "masks": 5, "complete": 5}
    (root / "manifest.json").unlink()
    generate_dataset(root, num_train=3, num_val=2, size=48, seed=4)
    assert json.loads((root / "manifest.json").read_text())["counts"]["on_disk"]["complete"] == 5


def test_interrupted_generation_is_redone_without_overwrite(tmp_path, monkeypatch) -> None:
    import tagseg.data.synthetic as synthetic

    real = synthetic.render_sample

    def interrupted(index: int, seed: int = 0, size: int = 160):
        if index == 2:
            raise KeyboardInterrupt
        return real(index, seed=seed, size=size)

    monkeypatch.setattr(synthetic, "render_sample", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "syn", num_train=3, num_val=1, size=48)
    marker = json.loads((tmp_path / "syn" / "synthetic.json").read_text())
    assert marker["complete"] is False
    assert not (tmp_path / "syn" / "labels.csv").exists()
    monkeypatch.setattr(synthetic, "render_sample", real)
    root = generate_dataset(tmp_path / "syn", num_train=3, num_val=1, size=48)
    assert json.loads((root / "synthetic.json").read_text())["complete"] is True
    assert len(_read_labels_csv(root / "labels.csv")) == 4


def test_generate_dataset_other_parameters_need_overwrite(tmp_path) -> None:
    root = generate_dataset(tmp_path / "syn", num_train=4, num_val=2, size=48, seed=0)
    with pytest.raises(ConfigError, match="overwrite"):
        generate_dataset(root, num_train=2, num_val=1, size=48, seed=1)
    generate_dataset(root, num_train=2, num_val=1, size=48, seed=1, overwrite=True)
    assert sorted(p.name for p in (root / "images").iterdir()) == [
        "syn_00000.png", "syn_00001.png", "syn_00002.png"
    ]
    assert len(_read_labels_csv(root / "labels.csv")) == 3
    with Image.open(root / "images" / "syn_00000.png") as im:
        assert np.array_equal(np.asarray(im), render_sample(0, seed=1, size=48)[0])
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 1


def test_generate_dataset_ignore_border(tmp_path) -> None:
    root = generate_dataset(tmp_path / "syn", num_train=3, num_val=0, size=96, ignore_border=2)
    labels = _read_labels_csv(root / "labels.csv")
    assert (root / "splits" / "val.txt").read_text() == ""
    for i in range(3):
        sid = sample_id(i)
        with Image.open(root / "masks" / f"{sid}.png") as im:
            mask = np.asarray(im)
        clean = render_sample(i, size=96)[1]
        assert (mask == IGNORE_INDEX).any()
        assert np.array_equal(mask, mark_boundaries(clean, 2))
        keep = mask != IGNORE_INDEX
        assert np.array_equal(mask[keep], clean[keep])  # only boundary pixels changed
        assert labels[f"{sid}.png"] == image_labels(clean)


def test_generate_dataset_rejects_bad_parameters(tmp_path) -> None:
    with pytest.raises(ConfigError, match="num_train"):
        generate_dataset(tmp_path / "a", num_train=0)
    with pytest.raises(ConfigError, match="ignore_border"):
        generate_dataset(tmp_path / "b", num_train=1, num_val=0, ignore_border=-1)
    with pytest.raises(ConfigError, match="size"):
        generate_dataset(tmp_path / "c", num_train=1, num_val=0, size=8)
    assert not (tmp_path / "a").exists()
