"""Malformed annotation files and arguments: every case is a one-line error (exit 2) naming the
file, record and field -- never a traceback, never silently wrong masks. The cases are generated
(seeded mutations of a valid COCO file), so new ones are found by the fuzzer, not by hand."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from prepare_fakes import make_coco_source, make_voc_sources
from tagseg.cli import main
from tagseg.data.prepare.coco_checks import validate_instances
from tagseg.data.records import read_id_list
from tagseg.errors import DataError

HOSTILE_VALUES = [None, "12", "", " ", -5, 0, 1.5, float("nan"), float("inf"), -float("inf"), 1e308, 2**70, True,
                  [], {}, [1, 2], {"a": 1}, "x" * 3000, "a b", "../x"]
# fields tagseg reads, and the values among HOSTILE_VALUES that are nonetheless valid for them
READ_FIELDS = {
    "images": {"id": (), "file_name": (), "width": (), "height": ()},
    "annotations": {"id": (), "image_id": (), "category_id": (), "iscrowd": (0, True), "segmentation": ()},
    "categories": {"id": (), "name": ()},
}


def _valid_for(table: str, key: str, value) -> bool:
    allowed = READ_FIELDS[table][key]
    return any(type(value) is type(a) and value == a for a in allowed)


def _mutations(data: dict, rng: random.Random):
    """One seeded hostile change to a valid instances file (which must then be refused)."""
    table = rng.choice(["images", "annotations", "annotations", "categories"])
    records = data[table]
    i = rng.randrange(len(records))
    kind = rng.random()
    if kind < 0.1:
        records[i] = rng.choice([7, "record", None, [1, 2]])
        return f"{table}[{i}] replaced by a non-object"
    key = rng.choice(sorted(READ_FIELDS[table]))
    if kind < 0.25 and key != "iscrowd":  # iscrowd is optional (0 when absent)
        del records[i][key]
        return f"{table}[{i}].{key} deleted"
    if table == "annotations" and key == "segmentation" and kind < 0.6 and isinstance(records[i][key], list):
        poly = records[i][key][0]
        poly[rng.randrange(len(poly))] = rng.choice([float("nan"), float("inf"), 1e308, -1e308, "3", None, [1]])
        return f"{table}[{i}] polygon coordinate"
    if table == "annotations" and key == "segmentation" and isinstance(records[i][key], dict):
        field = rng.choice(["size", "counts"])
        records[i][key][field] = rng.choice([None, "x" if field == "size" else 5, [1, -2], [10**9]])
        return f"{table}[{i}] RLE {field}"
    value = rng.choice([v for v in HOSTILE_VALUES if not _valid_for(table, key, v)])
    records[i][key] = value
    return f"{table}[{i}].{key} = {value!r:.40}"


def _write(path: Path, data) -> None:
    path.write_text(json.dumps(data))  # NaN / Infinity written as JSON's common extension, as Python reads it


def _error_lines(err: str) -> list[str]:
    return [x.split("\r")[-1] for x in err.split("\n") if x.split("\r")[-1].strip()]


@pytest.fixture(scope="module")
def coco_source(tmp_path_factory) -> Path:
    src, _ = make_coco_source(tmp_path_factory.mktemp("coco") / "coco")
    return src


@pytest.mark.parametrize("seed", range(60))
def test_generated_malformed_annotations_exit_2_with_one_line(coco_source, tmp_path, seed, capsys):
    rng = random.Random(seed)
    ann_file = coco_source / "annotations" / "instances_train2014.json"
    original = ann_file.read_text()
    data = json.loads(original)
    what = _mutations(data, rng)
    try:
        _write(ann_file, data)
        code = main(["prepare", "coco", "--coco", str(coco_source), "--out", str(tmp_path / "out"), "--workers", "1"])
    finally:
        ann_file.write_text(original)
    lines = _error_lines(capsys.readouterr().err)
    assert code == 2, what
    assert len(lines) == 1 and lines[0].startswith("tagseg prepare: error: "), (what, lines)
    assert "instances_train2014.json" in lines[0], (what, lines[0])


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", "null", '{"images": 3}', "[" * 100_000 + "]" * 100_000,
                                  '{"images": [], "annotations": [], "categories": [] ' + "x"])
def test_broken_json_files_are_one_line_errors(coco_source, tmp_path, text, capsys):
    ann_file = coco_source / "annotations" / "instances_val2014.json"
    original = ann_file.read_text()
    try:
        ann_file.write_text(text)
        code = main(["prepare", "coco", "--coco", str(coco_source), "--out", str(tmp_path / "out"), "--workers", "1"])
    finally:
        ann_file.write_text(original)
    lines = _error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1 and "instances_val2014.json" in lines[0], lines


def _valid(coco_source: Path) -> dict:
    return json.loads((coco_source / "annotations" / "instances_train2014.json").read_text())


@pytest.mark.parametrize("change, message", [
    (lambda d: d["images"][0].__setitem__("height", "32"), r"images\[0\] \(id 100\): field 'height' is '32', expected an integer"),
    (lambda d: d["images"][0].pop("width"), r"images\[0\] \(id 100\): field 'width' is missing"),
    (lambda d: d["annotations"].append(7), r"annotations\[5\]: is a int, expected an object"),
    (lambda d: d["images"][0].update(width=60000, height=60000), r"declares 60000x60000 = 3,600,000,000 pixels, more "
                                                                  r"than the limit"),
    (lambda d: d["images"][0].update(width=-4), r"field 'width' is -4"),
    (lambda d: d["annotations"][0]["segmentation"][0].__setitem__(0, float("nan")), r"annotations\[0\] \(id 1\): field "
                                                                                     r"'segmentation'\[0\]\[0\] is nan"),
    (lambda d: d["annotations"][0]["segmentation"][0].__setitem__(1, 1e308), r"lies far outside the 48x32 image"),
    (lambda d: d["annotations"][0].update(iscrowd=2), r"field 'iscrowd' is 2, expected 0 or 1"),
    (lambda d: d["images"].append(dict(d["images"][0])), r"image id 100 appears twice"),
])
def test_each_field_problem_names_file_record_and_field(coco_source, change, message):
    data = _valid(coco_source)
    change(data)
    with pytest.raises(DataError, match=r"instances_train2014\.json: .*" + message):
        validate_instances(data, str(coco_source / "annotations" / "instances_train2014.json"), 89_478_485)


def test_valid_fake_file_passes_validation(coco_source):
    validate_instances(_valid(coco_source), "f.json", 89_478_485)


def test_declared_size_differing_from_the_real_image_is_refused(coco_source, tmp_path, capsys):
    ann_file = coco_source / "annotations" / "instances_train2014.json"
    original = ann_file.read_text()
    data = json.loads(original)
    data["images"][0]["width"] += 1
    try:
        _write(ann_file, data)
        code = main(["prepare", "coco", "--coco", str(coco_source), "--out", str(tmp_path / "out"), "--workers", "1"])
    finally:
        ann_file.write_text(original)
    lines = _error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1 and "declares 49x32 but the image" in lines[0] and "is 48x32" in lines[0]


def test_file_names_with_whitespace_are_refused(coco_source, tmp_path, capsys):
    ann_file = coco_source / "annotations" / "instances_val2014.json"
    original = ann_file.read_text()
    data = json.loads(original)
    data["images"][0]["file_name"] = "COCO_val2014_000000000200 copy.jpg"
    try:
        _write(ann_file, data)
        assert main(["prepare", "coco", "--coco", str(coco_source), "--out", str(tmp_path / "o"), "--workers", "1"]) == 2
    finally:
        ann_file.write_text(original)
    assert "not a valid image id" in capsys.readouterr().err


@pytest.mark.parametrize("line", ["2008_000001 copy", "2008_000001\tx", "a b c"])
def test_list_ids_with_whitespace_are_refused_not_cut(tmp_path, line):
    lst = tmp_path / "train.txt"
    lst.write_text(f"2008_000002\n{line}\n")
    with pytest.raises(DataError, match=r"train\.txt:2: id .* contains (whitespace|a control character)"):
        read_id_list(lst)


def test_prepare_voc_refuses_list_lines_with_a_space(tmp_path):
    voc, sbd, _ = make_voc_sources(tmp_path / "src")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2008_000001 x\n2008_000002\n")
    assert main(["prepare", "voc", "--voc", str(voc), "--sbd", str(sbd), "--out", str(tmp_path / "o"),
                 "--workers", "1"]) == 2


# ------------------------------------------------------------------ arguments


def _argument_cases(rng: random.Random, n: int) -> list[list[str]]:
    bad_numbers = ["nan", "inf", "-inf", "1e308", "-1", "0", "abc", "", "1,,nan", "1e-320", ",".join(["1"] * 40),
                   "99999999999", str(2**63), "-0"]
    cases = []
    for _ in range(n):
        value = rng.choice(bad_numbers)
        cases.append(rng.choice([
            ["predict", "--model", "m.safetensors", "--scales", value, "x.jpg"],
            ["prepare", "voc", "--out", "o", "--workers", value],
            ["prepare", "voc", "--out", "o", "--check-only", "--max-file-mb", value],
            ["prepare", "coco", "--out", "o", "--check-only", "--max-archive-gb", value],
            ["train", "--config", "demo", f"train.lr={value}"],
            ["train", "--config", "demo", f"data.image_size={value}"],
        ]))
    return cases


@pytest.mark.parametrize("argv", _argument_cases(random.Random(0), 24))
def test_generated_bad_numeric_arguments_exit_2_without_traceback(tmp_path, monkeypatch, argv, capsys):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert "Traceback" not in err and "error" in err
    assert not any(p.is_file() for p in tmp_path.rglob("*")), "nothing written for a refused command"


@pytest.mark.parametrize("argv", [
    ["train", "--config", "demo", "data.root=" + "x" * 5000],
    ["train", "--config", "demo", "--out", "y" * 5000],
    ["eval", "--run", "z" * 5000],
    ["prepare", "voc", "--voc", "v" * 5000, "--sbd", "s", "--out", "o"],
])
def test_very_long_paths_are_one_line_errors(tmp_path, monkeypatch, argv, capsys):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    lines = _error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1 and "error" in lines[0], lines


def test_no_traceback_from_the_installed_entry_point_for_a_hostile_file(coco_source, tmp_path):
    """The same through a fresh interpreter, as a user runs it (nothing printed but the error)."""
    ann_file = coco_source / "annotations" / "instances_train2014.json"
    original = ann_file.read_text()
    data = json.loads(original)
    data["annotations"][1]["segmentation"] = [[1, 2, "x", 4, 5, 6]]
    try:
        _write(ann_file, data)
        proc = subprocess.run([sys.executable, "-m", "tagseg", "prepare", "coco", "--coco", str(coco_source),
                               "--out", str(tmp_path / "o"), "--workers", "1"], capture_output=True, text=True,
                              env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": "/usr/bin:/bin"})
    finally:
        ann_file.write_text(original)
    assert proc.returncode == 2
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and "annotations[1] (id 2): field 'segmentation'[0][2] is str" in lines[0], lines


# ------------------------------------------------------------------ compressed RLE


def test_compressed_rle_runs_match_pycocotools_on_random_masks():
    import numpy as np

    mask_utils = pytest.importorskip("pycocotools.mask")
    from tagseg.data.prepare.coco_checks import rle_string_counts

    rng = np.random.default_rng(0)
    for t in range(200):
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        m = (rng.random((h, w)) > rng.random()).astype(np.uint8)
        m[:] = 0 if t % 7 == 0 else m  # all background now and then
        text = mask_utils.encode(np.asfortranarray(m))["counts"].decode()
        flat = m.T.reshape(-1)  # COCO runs: column-major, starting with a run of zeros
        edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])))
        expected = np.diff(np.concatenate([[0], edges])).tolist()
        assert rle_string_counts(text, h * w, "t") == expected


@pytest.mark.parametrize("counts", ["", "!!!!", "0" * 1000, "zzzz", "o", "\u00e9abc", "1" * 200])
def test_garbage_compressed_rle_is_refused_not_rasterised(coco_source, counts):
    from tagseg.data.prepare.coco import decode_rle

    data = _valid(coco_source)
    data["annotations"][3]["segmentation"] = {"size": [32, 48], "counts": counts}
    with pytest.raises(DataError, match=r"annotations\[3\] \(id 4\): field 'segmentation.counts'"):
        validate_instances(data, "f.json", 89_478_485)
    pytest.importorskip("pycocotools")
    with pytest.raises(DataError, match="segmentation.counts"):
        decode_rle({"size": [32, 48], "counts": counts}, 32, 48, "ann 4")


# ------------------------------------------------------------------ VOC annotation XML


def _xml_cases(rng: random.Random, n: int) -> list[bytes]:
    good = b"<annotation><filename>x.jpg</filename><object><name>dog</name></object></annotation>"
    bomb = (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
            + b"".join(b'<!ENTITY %c "%s">' % (98 + i, b"&%c;" % (97 + i) * 10) for i in range(8))
            + b"]><annotation><object><name>&i;</name></object></annotation>")
    external = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                b"<annotation><object><name>&x;</name></object></annotation>")
    cases = [bomb, external, b"", b"\xff\xfe", b"<annotation>" * 50_000]
    for _ in range(n):
        raw = bytearray(good)
        op = rng.randrange(4)
        if op == 0:
            raw = raw[:rng.randrange(len(raw))]
        elif op == 1:
            for _ in range(rng.randrange(1, 6)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        elif op == 2:
            raw = raw.replace(b"dog", rng.choice([b"", b"cat dog", b"Dog", b"background", b"\x00", b"x" * 5000]))
        else:
            raw = raw.replace(b"<name>dog</name>", rng.choice([b"", b"<name/>", b"<name><b>dog</b></name>"]))
        cases.append(bytes(raw))
    return cases


@pytest.mark.parametrize("data", _xml_cases(random.Random(1), 30))
def test_generated_voc_xml_is_parsed_or_refused_in_one_line(data):
    from tagseg.data.prepare.voc import parse_voc_xml

    try:
        found = parse_voc_xml(data, "Annotations/2008_000001.xml")
    except DataError as exc:
        assert "Annotations/2008_000001.xml" in str(exc) and "\n" not in str(exc)
    else:
        assert found <= set(range(1, 21))
