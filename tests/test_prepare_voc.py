"""tagseg prepare voc: SBD .mat conversion, merge with VOC, lists, labels, verification, resume."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from prepare_fakes import EXPECTED_VOC, make_voc_archives, make_voc_sources, write_png_mask, write_sbd_mat
from tagseg.cli import main
from tagseg.data.image_labels import read_image_labels
from tagseg.data.prepare.verify import VOC_STANDARD_LISTS, ListExpectation, list_sha256
from tagseg.data.prepare.voc import decode_sbd_mat, prepare_voc, verify_voc
from tagseg.data.voc import load_cls_labels, read_voc
from tagseg.errors import DataError
from tagseg.utils.io import read_mask


def fake_expected() -> dict[str, ListExpectation]:
    return {k: ListExpectation(len(v), list_sha256(v)) for k, v in EXPECTED_VOC.items()}


def check_tree(out, truth) -> None:
    for name, ids in EXPECTED_VOC.items():
        assert (out / "ImageSets" / "Segmentation" / f"{name}.txt").read_text() == "".join(f"{i}\n" for i in ids)
    for image_id, (mask, classes) in truth.items():
        got = read_mask(out / "SegmentationClassAug" / f"{image_id}.png", 21)
        assert (got == mask).all(), image_id
        with Image.open(out / "SegmentationClassAug" / f"{image_id}.png") as im:
            assert im.mode == "P"
    index = read_voc(out, "train_aug")
    assert [r.id for r in index.records] == EXPECTED_VOC["train_aug"]
    for rec in index.records:
        expected = np.zeros(21, dtype=np.float32)
        expected[[0, *truth[rec.id][1]]] = 1
        assert (rec.labels == expected).all(), rec.id
    assert not list(out.rglob("*.tmp*")), "temporary files left behind"


def test_prepare_from_folders(tmp_path):
    voc, sbd, truth = make_voc_sources(tmp_path / "src")
    result = prepare_voc(voc, sbd, tmp_path / "out", workers=1, expected=fake_expected())
    assert result.counts == {"train_aug": 5, "train": 2, "val": 2}
    assert result.report.ok and result.report.files_checked == 7
    check_tree(tmp_path / "out", truth)
    # the VOC mask wins over SBD's (SBD's mat for 2008_000002 is all class 3)
    assert (read_mask(tmp_path / "out" / "SegmentationClassAug" / "2008_000002.png", 21) != 3).any()
    # the label of 2008_000007 comes from the XML: person (15) is annotated but has no pixels
    names, table = read_image_labels(tmp_path / "out" / "cls_labels.json")
    assert table["2008_000007"][15] == 1 and names[15] == "person"
    assert not (tmp_path / "out" / "cls_labels.npy").exists()


def test_prepare_from_archives_equals_folders(tmp_path):
    voc, sbd, truth = make_voc_sources(tmp_path / "src")
    voc_tar, sbd_tgz = make_voc_archives(tmp_path, voc, sbd)
    prepare_voc(voc_tar, sbd_tgz, tmp_path / "a", workers=2, expected=fake_expected())
    check_tree(tmp_path / "a", truth)
    prepare_voc(voc, sbd, tmp_path / "f", workers=1, expected=fake_expected())
    for p in sorted((tmp_path / "f").rglob("*")):
        if p.is_file() and p.name not in ("prepare.json", ".prepare.lock"):
            assert p.read_bytes() == (tmp_path / "a" / p.relative_to(tmp_path / "f")).read_bytes(), p


def test_labels_from_masks_and_npy_for_other_tools(tmp_path):
    voc, sbd, truth = make_voc_sources(tmp_path / "src")
    prepare_voc(voc, sbd, tmp_path / "out", workers=1, labels_from="masks", write_cls_labels_npy=True,
                expected=fake_expected())
    _, table = read_image_labels(tmp_path / "out" / "cls_labels.json")
    assert table["2008_000007"][15] == 0  # no person pixels in the mask
    npy = load_cls_labels(tmp_path / "out" / "cls_labels.npy")
    assert set(npy) == set(table) and all((npy[k] == table[k]).all() for k in table)


def test_reader_prefers_json_labels_over_npy(tmp_path):
    voc, sbd, _ = make_voc_sources(tmp_path / "src")
    out = tmp_path / "out"
    prepare_voc(voc, sbd, out, workers=1, write_cls_labels_npy=True, expected=fake_expected())
    np.save(out / "cls_labels.npy", {2008000001: np.ones(20, dtype=np.float32)})  # disagrees with the JSON
    rec = read_voc(out, "train").records[0]
    assert rec.id == "2008_000001" and rec.labels.sum() < 21


def test_resume_after_interruption(tmp_path):
    voc, sbd, truth = make_voc_sources(tmp_path / "src")
    good = (sbd / "dataset" / "cls" / "2008_000006.mat").read_bytes()
    (sbd / "dataset" / "cls" / "2008_000006.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="2008_000006.mat"):
        prepare_voc(voc, sbd, tmp_path / "out", workers=1, expected=fake_expected())
    out = tmp_path / "out"
    assert not (out / "ImageSets").exists() and not list(out.rglob("*.tmp*"))
    done = sorted(p.name for p in (out / "SegmentationClassAug").glob("*.png"))
    assert "2008_000006.png" not in done and len(done) >= 4
    (sbd / "dataset" / "cls" / "2008_000006.mat").write_bytes(good)
    stale = out / "SegmentationClassAug" / ".2008_000006.png.abc123.tmp.png"  # as a killed run leaves it
    stale.write_bytes(b"half")
    result = prepare_voc(voc, sbd, out, workers=1, expected=fake_expected())
    assert result.skipped >= len(done) and result.written < 7 + 7
    check_tree(out, truth)
    again = prepare_voc(voc, sbd, out, workers=1, expected=fake_expected())
    assert again.written == 0 and again.skipped == 7 + 7  # 7 images + 7 masks already there


def test_verification_rejects_broken_trees(tmp_path):
    voc, sbd, _ = make_voc_sources(tmp_path / "src")
    out = tmp_path / "out"
    prepare_voc(voc, sbd, out, workers=1, expected=fake_expected())
    assert verify_voc(out, fake_expected(), workers=1).ok

    wrong = {**fake_expected(), "train_aug": ListExpectation(6, None)}
    with pytest.raises(DataError, match=r"train_aug.txt: 5 ids, expected 6"):
        verify_voc(out, wrong, workers=1).raise_if_failed()
    report = verify_voc(out, workers=1)  # the standard lists: counts and checksums differ
    assert any("expected 10,582" in p for p in report.problems)
    assert any("sha256" in p and VOC_STANDARD_LISTS["val"].sha256 in p for p in report.problems)

    mask = out / "SegmentationClassAug" / "2008_000005.png"
    saved = mask.read_bytes()
    mask.unlink()
    with pytest.raises(DataError, match=r"mask missing: .*2008_000005\.png"):
        verify_voc(out, fake_expected(), workers=1).raise_if_failed()
    write_png_mask(mask, np.zeros((10, 12), dtype=np.uint8))
    with pytest.raises(DataError, match=r"size mismatch: mask .*2008_000005\.png is 12x10, image .* is 56x40"):
        verify_voc(out, fake_expected(), workers=2).raise_if_failed()
    write_png_mask(mask, np.full((40, 56), 30, dtype=np.uint8))
    with pytest.raises(DataError, match=r"2008_000005\.png contains values \[30\]"):
        verify_voc(out, fake_expected(), workers=1).raise_if_failed()
    mask.write_bytes(saved)

    lists = out / "ImageSets" / "Segmentation"
    lists.joinpath("train_aug.txt").write_text("".join(f"{i}\n" for i in sorted(EXPECTED_VOC["train_aug"] + ["2008_000003"])))
    with pytest.raises(DataError, match=r"lists train_aug and val overlap in 1 ids: 2008_000003"):
        verify_voc(out, workers=1).raise_if_failed()
    lists.joinpath("train_aug.txt").write_text("2008_000002\n2008_000001\n")
    with pytest.raises(DataError, match="not in canonical form"):
        verify_voc(out, workers=1).raise_if_failed()


def test_bad_inputs_are_clear(tmp_path):
    voc, sbd, _ = make_voc_sources(tmp_path / "src")
    with pytest.raises(DataError, match="no dataset/train.txt"):
        prepare_voc(voc, voc, tmp_path / "o1", workers=1, expected=fake_expected())
    with pytest.raises(DataError, match=r"no ImageSets/Segmentation/train.txt found.*VOCtrainval_11-May-2012.tar"):
        prepare_voc(sbd, sbd, tmp_path / "o0", workers=1)
    with pytest.raises(DataError, match="dataset source not found"):
        prepare_voc(tmp_path / "nope", sbd, tmp_path / "o2", workers=1)
    (tmp_path / "broken.tar").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError):
        prepare_voc(tmp_path / "broken.tar", sbd, tmp_path / "o3", workers=1)
    write_sbd_mat(tmp_path / "bad.mat", np.full((4, 4), 40, dtype=np.uint8))
    with pytest.raises(DataError, match=r"values \[40\]"):
        decode_sbd_mat((tmp_path / "bad.mat").read_bytes(), "bad.mat")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2008_000003\n../../etc/passwd\n")
    with pytest.raises(DataError, match=r"val.txt:2: .* is not a VOC id"):
        prepare_voc(voc, sbd, tmp_path / "o4", workers=1)


def test_sbd_mat_layout_is_read(tmp_path):
    mask = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_sbd_mat(tmp_path / "x.mat", mask)
    assert (decode_sbd_mat((tmp_path / "x.mat").read_bytes(), "x.mat") == mask).all()


def test_cli_prepare_voc(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "voc", "--help"])
    assert exc.value.code == 0
    assert "VOCtrainval_11-May-2012.tar" in capsys.readouterr().out
    voc, sbd, _ = make_voc_sources(tmp_path / "src")
    voc_tar, sbd_tgz = make_voc_archives(tmp_path, voc, sbd)
    out = tmp_path / "out"
    # a tiny tree is not the standard dataset: the standard verification must reject it, clearly
    assert main(["prepare", "voc", "--voc", str(voc_tar), "--sbd", str(sbd_tgz), "--out", str(out),
                 "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "verification of" in err and "5 ids, expected 10,582" in err and "differs from the standard" in err
    assert main(["prepare", "voc", "--out", str(out), "--check-only", "--workers", "1"]) == 2
    assert "expected 1,449" in capsys.readouterr().err
    assert main(["prepare", "voc", "--out", str(out)]) == 2
    assert "give --voc and --sbd" in capsys.readouterr().err


@pytest.mark.slow
def test_prepare_from_real_subset_reads_back_the_same(voc_root, tmp_path):
    from prepare_fakes import layout_subset_as_downloads

    voc, sbd, expected = layout_subset_as_downloads(voc_root, tmp_path / "dl", n_train=8, n_val=4, archives=True)
    out = tmp_path / "out"
    exp = {k: ListExpectation(len(v), list_sha256(v)) for k, v in expected.items()}
    result = prepare_voc(voc, sbd, out, workers=2, expected=exp)
    assert result.report.ok and result.counts == {"train_aug": 8, "train": 4, "val": 4}
    original = {r.id: r for split in ("train_aug", "val") for r in read_voc(voc_root, split).records}
    for split in ("train_aug", "val"):
        index = read_voc(out, split)
        assert [r.id for r in index.records] == expected[split]
        for rec in index.records:
            ref = original[rec.id]
            assert (rec.labels == ref.labels).all(), rec.id
            assert (read_mask(rec.mask_path, 21) == read_mask(ref.mask_path, 21)).all(), rec.id
            assert rec.image_path.read_bytes() == ref.image_path.read_bytes()
