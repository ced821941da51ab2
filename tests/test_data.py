"""Dataset readers on tiny fixtures and the real VOC subset; bad input gives clear errors."""

import numpy as np
import pytest
from PIL import Image

from fixtures import make_folder, make_voc, write_mask
from tagseg.data.classes import VOC_CLASSES
from tagseg.data.folder import read_folder
from tagseg.data.views import TrainingViews
from tagseg.data.voc import read_voc
from tagseg.config import AugmentConfig
from tagseg.errors import DataError
from tagseg.utils.io import read_image, read_mask


def test_voc_reader_cls_labels_and_masks(tmp_path):
    ids = make_voc(tmp_path)
    idx = read_voc(tmp_path, "train")
    assert [r.id for r in idx.records] == ids
    assert idx.class_names == VOC_CLASSES and idx.has_masks
    assert np.flatnonzero(idx.records[0].labels).tolist() == [0, 8]
    assert np.flatnonzero(idx.records[1].labels).tolist() == [0, 8, 12]
    from_masks = read_voc(tmp_path, "train", label_source="masks")
    for a, b in zip(idx.records, from_masks.records):
        assert np.array_equal(a.labels, b.labels)
    assert len(read_voc(tmp_path, "train", max_images=2)) == 2


def test_voc_reader_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_voc(tmp_path / "nope", "train")
    make_voc(tmp_path)
    with pytest.raises(DataError, match="val.txt"):
        read_voc(tmp_path, "val")
    (tmp_path / "JPEGImages" / "2008_000002.jpg").unlink()
    with pytest.raises(DataError, match="2008_000002.jpg"):
        read_voc(tmp_path, "train")


def test_cls_labels_that_disagree_with_the_class_list(tmp_path):
    make_voc(tmp_path)
    np.save(tmp_path / "cls_labels.npy", {2008000000: np.zeros(19, dtype=np.float32)})
    with pytest.raises(DataError, match="19 entries"):
        read_voc(tmp_path, "train")
    np.save(tmp_path / "cls_labels.npy", {2008000000: np.zeros(20, dtype=np.float32)})
    with pytest.raises(DataError, match="2008_000001 has no entry"):
        read_voc(tmp_path, "train")


def test_mask_with_unknown_values(tmp_path):
    path = tmp_path / "m.png"
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[0, 0] = 42
    write_mask(path, mask)
    with pytest.raises(DataError, match=r"m.png contains values \[42\]"):
        read_mask(path, 21)
    mask[0, 0] = 255
    write_mask(path, mask)
    assert read_mask(path, 21)[0, 0] == 255


def test_corrupt_and_truncated_images(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="bad.jpg"):
        read_image(bad)
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="trunc.jpg"):
        read_image(trunc)
    with pytest.raises(DataError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")


def test_folder_reader(tmp_path):
    ids = make_folder(tmp_path)
    idx = read_folder(tmp_path)
    assert idx.class_names == ("background", "apple", "pear")
    assert [r.id for r in idx.records] == ids and idx.has_masks
    assert idx.records[1].labels.tolist() == [1.0, 1.0, 1.0]
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("img2\nimg0\n")
    assert [r.id for r in read_folder(tmp_path, "train").records] == ["img2", "img0"]
    with pytest.raises(DataError, match="val.txt"):
        read_folder(tmp_path, "val")


def test_folder_reader_errors(tmp_path):
    make_folder(tmp_path)
    csv = tmp_path / "labels.csv"
    csv.write_text("image,labels\nimg0.png,apple;banana\n")
    with pytest.raises(DataError, match=r"labels.csv:2: unknown class 'banana'"):
        read_folder(tmp_path)
    csv.write_text("image,labels\nimg0.png,apple\nimg0.png,pear\n")
    with pytest.raises(DataError, match="listed twice"):
        read_folder(tmp_path)
    csv.write_text("image,labels\nghost.png,apple\n")
    with pytest.raises(DataError, match="ghost.png"):
        read_folder(tmp_path)
    (tmp_path / "classes.txt").write_text("background\n")
    with pytest.raises(DataError, match="at least one object class"):
        read_folder(tmp_path)


def test_empty_dataset_is_rejected(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "labels.csv").write_text("image,labels\n")
    idx = read_folder(tmp_path)
    with pytest.raises(DataError, match="no images"):
        TrainingViews(idx, 64, AugmentConfig(), patch_size=16)


def test_training_views_are_deterministic_and_well_formed(tmp_path):
    make_voc(tmp_path)
    idx = read_voc(tmp_path, "train")
    ds = TrainingViews(idx, 64, AugmentConfig(), patch_size=16, seed=3, equivariance=True, crop_prob=1.0, crop_size=32)
    a, b = ds[1], ds[1]
    assert torch_equal(a["image"], b["image"]) and torch_equal(a["view_b"], b["view_b"])
    assert a["image"].shape == (3, 64, 64) and a["view_b"].shape == (3, 32, 32)
    assert a["geom_b"][3] == 1 and a["geom_b"][4] % 16 == 0 and a["geom_b"][5] % 16 == 0
    assert a["geom_b"][4] + 32 <= 64
    ds.set_epoch(1)
    assert not torch_equal(ds[1]["image"], a["image"])


def torch_equal(x, y):
    import torch

    return torch.equal(x, y)


def test_real_voc_subset(voc_root):
    train = read_voc(voc_root, "train_aug")
    val = read_voc(voc_root, "val")
    assert len(train) == 1000 and len(val) == 300
    assert train.has_masks and val.has_masks
    # cls_labels.npy lists every mask class (README: never the other way round)
    for rec in val.records[:25]:
        from_mask = np.unique(read_mask(rec.mask_path, 21))
        from_mask = from_mask[from_mask < 21]
        assert set(from_mask.tolist()) <= set(np.flatnonzero(rec.labels).tolist())
    img = read_image(val.records[0].image_path)
    assert img.dtype == np.uint8 and img.ndim == 3 and max(img.shape[:2]) <= 500
