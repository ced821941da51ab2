"""tagseg prepare coco: semantic masks (crowd, overlaps), lists, labels, val_part, verification, reader."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from prepare_fakes import (CAT, DOG, PERSON, box_polygon, coco_id, make_coco_archives, make_coco_source,
                           rle_uncompressed)
from tagseg.cli import main
from tagseg.data.coco import COCO_CLASSES, read_coco
from tagseg.data.image_labels import read_image_labels
from tagseg.data.prepare.coco import (CocoMaskConfig, decode_rle, polygon_mask, prepare_coco, semantic_mask,
                                      verify_coco)
from tagseg.data.prepare.verify import COCO_STANDARD_LISTS, ListExpectation, list_sha256
from tagseg.errors import DataError
from tagseg.utils.io import read_mask

CAT_INDEX = {cid: i + 1 for i, cid in enumerate(sorted([1, 2, 3, 17, 18]))}
IDX = {PERSON: COCO_CLASSES.index("person"), DOG: COCO_CLASSES.index("dog"), CAT: COCO_CLASSES.index("cat")}
TRAIN = [coco_id("train", n) for n in (100, 101, 103)]  # 102 has no annotation
VAL = [coco_id("val", n) for n in (200, 202)]  # 201 has no annotation


def fake_expected(train=TRAIN, val=VAL, val_part=None) -> dict[str, ListExpectation]:
    exp = {"train": ListExpectation(len(train), list_sha256(train)), "val": ListExpectation(len(val), list_sha256(val))}
    if val_part is not None:
        exp["val_part"] = ListExpectation(len(val_part), list_sha256(val_part))
    return exp


def test_class_list_and_canonical_checksums():
    assert len(COCO_CLASSES) == 81 and COCO_CLASSES[:3] == ("background", "person", "bicycle")
    assert COCO_CLASSES[-1] == "toothbrush" and IDX == {PERSON: 1, DOG: 17, CAT: 16}
    assert COCO_STANDARD_LISTS["train"] == ListExpectation(
        82081, "2985c4b482da49946f2e5dfb9a12f44bee154529cd601f63b1105942d763a8f9")
    assert COCO_STANDARD_LISTS["val"] == ListExpectation(
        40137, "6f65de2c151265166b98f2202c9822d6a81f607f2c39e39c01d279d9de690c1a")
    assert COCO_STANDARD_LISTS["val_part"].count == 5000
    # the checksum is of the sorted, '\n'-terminated text: hand-checked value of a two-id list
    # sha256 of b"a\nb\n", computed once with hashlib
    assert list_sha256(["b", "a", "b"]) == "911169ddaaf146aff539f58c26c489af3b892dff0fe283c1c264c65ae5aa59a2"


def test_overlap_rules():
    cats = {PERSON: 1, DOG: 17}
    big = {"id": 1, "category_id": PERSON, "iscrowd": 0, "segmentation": [box_polygon(0, 0, 9, 9)]}
    small = {"id": 2, "category_id": DOG, "iscrowd": 0, "segmentation": [box_polygon(2, 2, 5, 5)]}
    smaller = semantic_mask([small, big], 10, 10, cats, CocoMaskConfig(), "t")
    assert smaller[3, 3] == 17 and smaller[8, 8] == 1  # the smaller instance wins
    assert (smaller == 17).sum() == 16  # PIL fills the 4x4 box including its edges
    # the small dog is listed later (id 3 > 1) or earlier (id 0 < 1): 'smaller' does not care
    assert semantic_mask([dict(small, id=0), big], 10, 10, cats, CocoMaskConfig(), "t")[3, 3] == 17
    # 'order': the annotation with the higher id is painted last and wins
    assert semantic_mask([small, big], 10, 10, cats, CocoMaskConfig(overlap="order"), "t")[3, 3] == 17
    assert semantic_mask([dict(small, id=0), big], 10, 10, cats, CocoMaskConfig(overlap="order"), "t")[3, 3] == 1


def test_crowd_rules():
    cats = {PERSON: 1, CAT: 16}
    crowd = np.zeros((10, 10), dtype=bool)
    crowd[:, :5] = True
    anns = [{"id": 1, "category_id": PERSON, "iscrowd": 1, "segmentation": rle_uncompressed(crowd)},
            {"id": 2, "category_id": CAT, "iscrowd": 0, "segmentation": [box_polygon(3, 3, 6, 6)]}]
    ignore = semantic_mask(anns, 10, 10, cats, CocoMaskConfig(), "t")
    assert ignore[0, 0] == 255 and ignore[0, 9] == 0 and ignore[4, 4] == 16  # the instance is painted over crowd
    assert semantic_mask(anns, 10, 10, cats, CocoMaskConfig(crowd="background"), "t")[0, 0] == 0
    as_class = semantic_mask(anns, 10, 10, cats, CocoMaskConfig(crowd="class"), "t")
    assert as_class[0, 0] == 1 and as_class[4, 4] == 16  # the cat is smaller than the crowd


def test_rasterisation_without_pycocotools(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    m = np.zeros((6, 7), dtype=bool)
    m[1:4, 2:6] = True
    m[5, 0] = True
    assert (decode_rle(rle_uncompressed(m), 6, 7, "t") == m).all()
    poly = polygon_mask([box_polygon(1, 2, 4, 3)], 6, 7, "t")
    expected = np.zeros((6, 7), dtype=bool)
    expected[2:4, 1:5] = True
    assert (poly == expected).all()
    with pytest.raises(DataError, match=r"compressed RLE needs pycocotools: pip install 'tagseg\[coco\]'"):
        decode_rle({"size": [6, 7], "counts": "abc"}, 6, 7, "t")
    with pytest.raises(DataError, match="do not add up"):
        decode_rle({"size": [6, 7], "counts": [3, 4]}, 6, 7, "t")


def test_rle_and_polygons_agree_with_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    m = rng.random((23, 31)) > 0.6
    rle = rle_uncompressed(m)
    assert (decode_rle(rle, 23, 31, "t") == m).all()
    compressed = mask_utils.frPyObjects(rle, 23, 31)
    compressed["counts"] = compressed["counts"].decode()
    assert (decode_rle(compressed, 23, 31, "t") == m).all()
    poly = [[3.5, 2.0, 25.0, 4.0, 20.0, 19.5, 6.0, 15.0]]
    ours = polygon_mask(poly, 23, 31, "t")
    theirs = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, 23, 31))).astype(bool)
    iou = (ours & theirs).sum() / (ours | theirs).sum()
    assert iou > 0.85, iou  # rasterisers differ only along edges


def test_prepare_coco_tree(tmp_path):
    src, _ = make_coco_source(tmp_path / "coco")
    out = tmp_path / "out"
    result = prepare_coco(src, out, workers=1, expected=fake_expected())
    assert result.counts == {"train": 3, "val": 2} and result.report.ok
    assert any("val_part not written" in n for n in result.notes)
    assert (out / "ImageSets" / "train.txt").read_text() == "".join(f"{i}\n" for i in TRAIN)
    m = read_mask(out / "SegmentationClass" / f"{coco_id('train', 100)}.png", 81)
    assert m[15, 15] == IDX[DOG] and m[5, 30] == IDX[PERSON] and m[30, 45] == 0
    m = read_mask(out / "SegmentationClass" / f"{coco_id('train', 101)}.png", 81)
    assert m[12, 2] == 255 and m[12, 18] == IDX[CAT] and m[2, 2] == 0
    m = read_mask(out / "SegmentationClass" / f"{coco_id('train', 103)}.png", 81)
    assert set(np.unique(m).tolist()) == {0, 255}
    names, table = read_image_labels(out / "cls_labels.json")
    assert names == COCO_CLASSES
    assert np.flatnonzero(table[coco_id("train", 101)]).tolist() == [0, IDX[PERSON], IDX[CAT]]  # crowd counts
    assert np.flatnonzero(table[coco_id("train", 103)]).tolist() == [0, IDX[DOG]]
    index = read_coco(out, "train")
    assert index.num_classes == 81 and [r.id for r in index.records] == TRAIN and index.has_masks
    assert (out / "classes.txt").read_text().splitlines() == list(COCO_CLASSES)
    assert (out / "JPEGImages" / f"{TRAIN[0]}.jpg").read_bytes() == (src / "train2014" / f"{TRAIN[0]}.jpg").read_bytes()
    with pytest.raises(DataError, match="val_part list is not shipped"):
        read_coco(out, "val_part")
    again = prepare_coco(src, out, workers=1, expected=fake_expected())
    assert again.written == 0 and again.skipped == 5
    with pytest.raises(DataError, match="other mask settings"):
        prepare_coco(src, out, CocoMaskConfig(crowd="background"), workers=1, expected=fake_expected())


def test_prepare_from_zips_equals_folders(tmp_path):
    src, _ = make_coco_source(tmp_path / "coco")
    zips = make_coco_archives(src, tmp_path / "downloads")
    prepare_coco(zips, tmp_path / "z", workers=2, expected=fake_expected())
    prepare_coco(src, tmp_path / "f", workers=1, expected=fake_expected())
    files = sorted(p.relative_to(tmp_path / "f") for p in (tmp_path / "f").rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".png"]) == 5
    for rel in files:
        if rel.name not in ("prepare.json", ".prepare.lock"):
            assert (tmp_path / "z" / rel).read_bytes() == (tmp_path / "f" / rel).read_bytes(), rel
    (zips / "val2014.zip").write_bytes(b"PK broken")
    with pytest.raises(DataError, match="cannot read archive .*val2014.zip"):
        prepare_coco(zips, tmp_path / "z2", workers=1, expected=fake_expected())


def test_options_keep_unannotated_and_crowd_labels(tmp_path):
    src, info = make_coco_source(tmp_path / "coco")
    cfg = CocoMaskConfig(keep_unannotated=True, labels_include_crowd=False, images="copy")
    all_train, all_val = sorted(info["train"]), sorted(info["val"])
    result = prepare_coco(src, tmp_path / "out", cfg, workers=2, expected=fake_expected(all_train, all_val))
    assert result.counts == {"train": 4, "val": 3}
    empty = read_mask(tmp_path / "out" / "SegmentationClass" / f"{coco_id('train', 102)}.png", 81)
    assert (empty == 0).all()
    _, table = read_image_labels(tmp_path / "out" / "cls_labels.json")
    assert np.flatnonzero(table[coco_id("train", 101)]).tolist() == [0, IDX[CAT]]
    assert np.flatnonzero(table[coco_id("train", 103)]).tolist() == [0]


def test_val_part_list(tmp_path):
    src, _ = make_coco_source(tmp_path / "coco")
    part = tmp_path / "val_part.txt"
    part.write_text(f"{VAL[1]}\n")
    out = tmp_path / "out"
    prepare_coco(src, out, workers=1, val_part=part, expected=fake_expected(val_part=[VAL[1]]))
    assert [r.id for r in read_coco(out, "val_part").records] == [VAL[1]]
    report = verify_coco(out, fake_expected(val_part=[VAL[0]]), workers=1)
    assert any("val_part.txt: sha256" in p for p in report.problems)
    (out / "ImageSets" / "val_part.txt").write_text(f"{TRAIN[0]}\n")
    with pytest.raises(DataError, match=r"1 ids of val_part are not in val"):
        verify_coco(out, fake_expected(val_part=[TRAIN[0]]), workers=1).raise_if_failed()
    with pytest.raises(DataError, match="val_part list not found: .*missing.txt"):
        prepare_coco(src, tmp_path / "out3", workers=1, val_part=tmp_path / "missing.txt", expected=fake_expected())
    part.write_text(f"{TRAIN[0]}\n")
    with pytest.raises(DataError, match="val_part ids are not in the val list"):
        prepare_coco(src, tmp_path / "out2", workers=1, val_part=part, expected=fake_expected())


def test_verification_rejects_broken_coco_trees(tmp_path):
    src, _ = make_coco_source(tmp_path / "coco")
    out = tmp_path / "out"
    prepare_coco(src, out, workers=1, expected=fake_expected())
    report = verify_coco(out, workers=1)  # the standard lists
    assert any("3 ids, expected 82,081" in p for p in report.problems)
    assert any(COCO_STANDARD_LISTS["val"].sha256 in p for p in report.problems)
    assert any("val_part.txt absent" in n for n in report.notes)
    (out / "SegmentationClass" / f"{VAL[0]}.png").unlink()
    with pytest.raises(DataError, match=r"mask missing: .*COCO_val2014_000000000200\.png"):
        verify_coco(out, fake_expected(), workers=1).raise_if_failed()
    (out / "ImageSets" / "val.txt").write_text("".join(f"{i}\n" for i in sorted(VAL + [TRAIN[0]])))
    with pytest.raises(DataError, match="lists train and val overlap in 1 ids"):
        verify_coco(out, workers=1).raise_if_failed()


def test_bad_coco_inputs(tmp_path):
    src, _ = make_coco_source(tmp_path / "coco")
    path = src / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["images"][0]["file_name"] = "../../escape.jpg"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="not a plain file name"):
        prepare_coco(src, tmp_path / "o1", workers=1, expected=fake_expected())
    data["categories"] = data["categories"][:5]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="differ from COCO's 80"):
        prepare_coco(src, tmp_path / "o2", workers=1, expected=fake_expected())
    path.write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        prepare_coco(src, tmp_path / "o3", workers=1)
    with pytest.raises(DataError, match="COCO folder not found"):
        prepare_coco(tmp_path / "missing", tmp_path / "o4")


def test_cli_prepare_coco(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "coco", "--help"])
    assert exc.value.code == 0
    assert "annotations_trainval2014.zip" in capsys.readouterr().out
    src, _ = make_coco_source(tmp_path / "coco")
    out = tmp_path / "out"
    assert main(["prepare", "coco", "--coco", str(src), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "verification of" in err and "3 ids, expected 82,081" in err
    assert main(["prepare", "coco", "--out", str(out), "--check-only", "--workers", "1"]) == 2
    assert "expected 40,137" in capsys.readouterr().err
    assert main(["prepare", "coco", "--coco", str(src), "--out", str(out), "crowd=everywhere"]) == 2
    assert "crowd='everywhere'" in capsys.readouterr().err
    assert main(["configs"]) == 0
    listed = capsys.readouterr().out.split()
    assert {"tkpcl_coco", "vitpcm_coco", "cam_coco"} <= set(listed)
