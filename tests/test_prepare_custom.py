"""``prepare voc|coco --custom``: partial or custom sets in the datasets' layouts are verified for
structure (not the standard lists) and exit 0; failures put the real problem first."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prepare_fakes import make_coco_source, make_voc_sources, voc_mask, write_png_mask
from tagseg.cli import main
from tagseg.data.voc import read_voc


def make_custom_voc(root: Path, ids: list[str], n_val: int, masks_dir: str = "SegmentationClass",
                    train_list: str = "train.txt") -> Path:
    """A VOC-layout folder without SBD or annotation XML: images, masks, two lists."""
    rng = np.random.default_rng(3)
    for i, image_id in enumerate(ids):
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        write_png_mask(root / masks_dir / f"{image_id}.png", voc_mask(i, (40, 56)))
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / train_list).write_text("".join(f"{i}\n" for i in ids[n_val:]))
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in ids[:n_val]))
    return root


@pytest.mark.parametrize("ids", [[f"2011_{i:06d}" for i in range(12)], [f"img-{i:02d}.a" for i in range(12)]])
def test_prepare_voc_custom_on_a_12_image_set_exits_0(tmp_path, capsys, ids):
    src = make_custom_voc(tmp_path / "set", ids, n_val=4)
    out = tmp_path / "out"
    assert main(["prepare", "voc", "--voc", str(src), "--out", str(out), "--custom", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "verified in" in printed and "OK" in printed and "custom set" in printed
    assert (out / "ImageSets" / "Segmentation" / "val.txt").read_text().split() == ids[:4]
    assert (out / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split() == sorted(ids[4:])
    assert len(read_voc(out, "train_aug")) == 8
    assert main(["prepare", "voc", "--out", str(out), "--check-only", "--custom", "--workers", "1"]) == 0


def test_without_custom_the_real_problem_comes_first_and_checksums_are_summarised(tmp_path, capsys):
    ids = [f"2011_{i:06d}" for i in range(12)]
    src = make_custom_voc(tmp_path / "set", ids, n_val=4)
    (src / "JPEGImages" / f"{ids[5]}.jpg").unlink()  # the real problem
    voc, sbd, _ = make_voc_sources(tmp_path / "sbd_src")  # an SBD source so the standard path runs
    out = tmp_path / "out"
    assert main(["prepare", "voc", "--voc", str(src), "--sbd", str(sbd), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    problems = [line for line in err if line.strip().startswith("- ")]
    real, summary = problems[:-1], problems[-1]  # every real problem first, the lists' differences last
    assert f"- image missing: {out / 'JPEGImages' / (ids[5] + '.jpg')}" in [p.strip() for p in real]
    assert all("sha256" not in p and "expected 10,582" not in p for p in real)
    assert "the lists are not the expected ones" in summary and "--custom" in summary
    assert "sha256 differs from the standard lists' for train_aug.txt, train.txt, val.txt" in summary


def test_custom_still_verifies_structure(tmp_path, capsys):
    ids = [f"c{i}" for i in range(12)]
    src = make_custom_voc(tmp_path / "set", ids, n_val=4)
    write_png_mask(src / "SegmentationClass" / "c7.png", np.zeros((10, 10), np.uint8))  # wrong size
    (src / "ImageSets" / "Segmentation" / "val.txt").write_text("c0\nc1\nc2\nc3\nc4\n")  # c4 also in train
    assert main(["prepare", "voc", "--voc", str(src), "--out", str(tmp_path / "o"), "--custom", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "overlap in 1 ids: c4" in err and "size mismatch: mask" in err and "c7.png" in err
    assert "the lists are not the expected ones" not in err


def test_custom_refuses_whitespace_and_escaping_ids(tmp_path, capsys):
    src = make_custom_voc(tmp_path / "set", [f"c{i}" for i in range(12)], n_val=4)
    (src / "ImageSets" / "Segmentation" / "val.txt").write_text("c0\n../c1\n")
    assert main(["prepare", "voc", "--voc", str(src), "--out", str(tmp_path / "o"), "--custom", "--workers", "1"]) == 2
    assert "val.txt:2: id '../c1'" in capsys.readouterr().err


def test_custom_voc_with_the_subset_layout(tmp_path, capsys):
    """train_aug.txt and SegmentationClassAug (the layout of the developer subset) are read too."""
    ids = [f"2012_{i:06d}" for i in range(12)]
    src = make_custom_voc(tmp_path / "set", ids, n_val=4, masks_dir="SegmentationClassAug", train_list="train_aug.txt")
    out = tmp_path / "out"
    assert main(["prepare", "voc", "--voc", str(src), "--out", str(out), "--custom", "--workers", "1"]) == 0
    assert not (out / "ImageSets" / "Segmentation" / "train.txt").exists()
    assert len(read_voc(out, "val")) == 4


def test_custom_voc_on_12_real_images_exits_0(tmp_path, voc_root, capsys):
    read = lambda name: (voc_root / "ImageSets" / "Segmentation" / name).read_text().split()  # noqa: E731
    train, val = read("train_aug.txt")[:8], read("val.txt")[:4]
    src = tmp_path / "set"
    for folder, ext in (("JPEGImages", ".jpg"), ("SegmentationClassAug", ".png")):
        (src / folder).mkdir(parents=True)
        for i in train + val:
            shutil.copy2(voc_root / folder / f"{i}{ext}", src / folder / f"{i}{ext}")
    (src / "ImageSets" / "Segmentation").mkdir(parents=True)
    (src / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("".join(f"{i}\n" for i in train))
    (src / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{i}\n" for i in val))
    out = tmp_path / "out"
    assert main(["prepare", "voc", "--voc", str(src), "--out", str(out), "--custom", "--workers", "1"]) == 0
    assert "12 image/mask pairs checked" in capsys.readouterr().out


def test_prepare_coco_custom_exits_0_on_a_partial_set(tmp_path, capsys):
    src, info = make_coco_source(tmp_path / "coco")
    out = tmp_path / "out"
    assert main(["prepare", "coco", "--coco", str(src), "--out", str(out), "--custom", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "custom set" in printed and "OK" in printed
    assert main(["prepare", "coco", "--out", str(out), "--check-only", "--custom", "--workers", "1"]) == 0
    assert main(["prepare", "coco", "--out", str(out), "--check-only", "--workers", "1"]) == 2  # not the standard lists
