"""COCO val_part: derived by `prepare coco` as the first 5,000 ids of the sorted 40,137-id val list."""

from __future__ import annotations

import numpy as np
import pytest

from prepare_fakes import coco_id, make_coco_source
from tagseg.data.coco import read_coco
from tagseg.data.prepare.coco import VAL_PART_SIZE, derive_val_part, prepare_coco
from tagseg.data.prepare.verify import COCO_STANDARD_LISTS, ListExpectation, list_sha256, list_text
from tagseg.errors import DataError

VAL = [coco_id("val", n) for n in (200, 202)]  # the fake source's annotated val images
TRAIN = [coco_id("train", n) for n in (100, 101, 103)]


def _fake_val_list(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct COCO-style val ids, shuffled (ids are not consecutive numbers)."""
    rng = np.random.default_rng(seed)
    numbers = rng.choice(600_000, size=count, replace=False)
    return [f"COCO_val2014_{int(n):012d}" for n in numbers]


def test_val_part_of_a_40137_id_val_list_is_its_first_5000_sorted_ids():
    val = _fake_val_list(40_137)
    part = derive_val_part(val)
    assert COCO_STANDARD_LISTS["val"].count == 40_137 and COCO_STANDARD_LISTS["val_part"].count == VAL_PART_SIZE == 5000
    assert part == sorted(val)[:5000] and len(set(part)) == 5000
    assert max(part) < min(set(val) - set(part))  # nothing smaller was left out
    assert list_text(part) == "".join(f"{i}\n" for i in part)  # already in canonical order
    assert list_sha256(part) != COCO_STANDARD_LISTS["val_part"].sha256  # fake ids, not the real list


@pytest.mark.parametrize("count", [40_136, 40_138, 40_504])
def test_no_val_part_from_a_val_list_of_another_size(count):
    assert derive_val_part(_fake_val_list(count)) is None


def test_duplicates_do_not_make_a_standard_size():
    val = _fake_val_list(40_136)
    assert derive_val_part(val + val[:1]) is None


def _small_standard(monkeypatch, part_size: int = 1) -> None:
    """Make the 2-image fake val list 'standard' so prepare derives a val_part from it."""
    monkeypatch.setitem(COCO_STANDARD_LISTS, "val", ListExpectation(len(VAL), list_sha256(VAL)))
    monkeypatch.setattr("tagseg.data.prepare.coco.VAL_PART_SIZE", part_size)


def _expected(val_part: list[str]) -> dict[str, ListExpectation]:
    return {"train": ListExpectation(len(TRAIN), list_sha256(TRAIN)), "val": ListExpectation(len(VAL), list_sha256(VAL)),
            "val_part": ListExpectation(len(val_part), list_sha256(val_part))}


def test_prepare_coco_derives_and_verifies_val_part(tmp_path, monkeypatch):
    _small_standard(monkeypatch)
    src, _ = make_coco_source(tmp_path / "coco")
    out = tmp_path / "out"
    result = prepare_coco(src, out, workers=1, expected=_expected(sorted(VAL)[:1]))
    assert result.report.ok and result.counts["val_part"] == 1
    assert any("val_part derived" in n for n in result.notes)
    assert (out / "ImageSets" / "val_part.txt").read_text() == f"{sorted(VAL)[0]}\n"
    assert [r.id for r in read_coco(out, "val_part").records] == sorted(VAL)[:1]


def test_prepare_coco_refuses_a_derived_val_part_with_the_wrong_checksum(tmp_path, monkeypatch):
    _small_standard(monkeypatch)
    src, _ = make_coco_source(tmp_path / "coco")
    with pytest.raises(DataError, match="val_part"):
        prepare_coco(src, tmp_path / "out", workers=1, expected=_expected(sorted(VAL)[1:]))


def test_a_given_val_part_list_still_wins(tmp_path, monkeypatch):
    _small_standard(monkeypatch)
    src, _ = make_coco_source(tmp_path / "coco")
    part = tmp_path / "part.txt"
    part.write_text(f"{sorted(VAL)[1]}\n")
    result = prepare_coco(src, tmp_path / "out", workers=1, val_part=part, expected=_expected(sorted(VAL)[1:]))
    assert result.counts["val_part"] == 1 and not any("derived" in n for n in result.notes)
