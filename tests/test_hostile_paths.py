"""No name or pre-planted link makes a writer write outside its output root: config names, run
folders, prepare trees, per-image writers (a test per writer, with a link and with a ``../`` name)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from prepare_fakes import EXPECTED_VOC, make_coco_source, make_voc_sources
from tagseg.cli import main
from tagseg.data.prepare.coco import prepare_coco
from tagseg.data.prepare.verify import ListExpectation
from tagseg.data.prepare.voc import prepare_voc
from tagseg.errors import ConfigError, DataError
from tagseg.utils.io import atomic_path, output_root, save_mask_png, write_json, write_text
from tagseg.utils.safe_paths import refuse_links_out, run_folder

ESCAPING_NAMES = ["../escape", "../../escape", "a/../../b", "/abs/name", "..", "x\x00y", "C:evil", "sub/dir"]


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder a writer must never touch, with one file in it."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "keep.txt").write_text("untouched\n")
    return folder


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_run_folder_refuses_names_that_leave_runs(name):
    with pytest.raises(ConfigError, match="config name .* plain name"):
        run_folder(name)


def test_run_folder_accepts_plain_names():
    assert run_folder("cam_voc") == Path("runs") / "cam_voc"
    assert run_folder("my run.v2", "base") == Path("base") / "my run.v2"


@pytest.mark.parametrize("verb", [["train", "--config", "demo"], ["segment", "train", "--config", "segment_demo"]])
@pytest.mark.parametrize("name", ["../escape", "a/b"])
def test_train_with_an_escaping_config_name_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys, verb, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert main([*verb, f"name={name}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config name" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["runs"]  # nothing created, inside or out


def test_train_refuses_a_run_folder_holding_a_link_out(tmp_path, outside, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    assert main(["train", "--config", "demo", "--out", str(run), "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and "outside the output folder" in err
    assert snapshot(outside) == before


def test_refuse_links_out_allows_links_inside_and_file_links_when_asked(tmp_path, outside):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "inner").symlink_to(root / "a", target_is_directory=True)
    refuse_links_out(root)  # a link inside the tree is fine
    (root / "a" / "img.jpg").symlink_to(outside / "keep.txt")
    refuse_links_out(root, folders_only=True)  # images=symlink trees hold such file links
    with pytest.raises(DataError, match="outside the output folder"):
        refuse_links_out(root)
    (root / "a" / "deep").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError, match=r"deep is a symbolic link"):
        refuse_links_out(root, folders_only=True)
    refuse_links_out(tmp_path / "missing")  # nothing there yet: nothing to refuse


@pytest.mark.parametrize("writer", ["json", "text", "mask", "atomic"])
def test_every_writer_refuses_a_link_out_inside_an_output_root(tmp_path, outside, writer):
    root = tmp_path / "out"
    root.mkdir()
    (root / "sub").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    target = root / "sub" / "x.out"
    write = {
        "json": lambda p, r: write_json(p, {"a": 1}, root=r),
        "text": lambda p, r: write_text(p, "x", root=r),
        "mask": lambda p, r: save_mask_png(p, np.zeros((2, 2), np.uint8), [0] * 768, root=r),
        "atomic": lambda p, r: atomic_path(p, root=r).__enter__(),
    }[writer]
    with pytest.raises(DataError, match="outside the output folder"):
        write(target, root)  # explicit root
    with output_root(root), pytest.raises(DataError, match="outside the output folder"):
        write(target, None)  # the root the caller opened
    with pytest.raises(DataError, match="outside the output folder"):
        write(root / ".." / "outside" / "y.out", root)  # a ../ name
    assert snapshot(outside) == before


def test_writer_root_check_holds_for_relative_paths(tmp_path, outside, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("out").mkdir()
    Path("out/sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError, match="outside the output folder"):
        write_text(Path("out/sub/x.txt"), "x", root=Path("out"))
    assert not (outside / "x.txt").exists()


def fake_voc_expected():
    return {k: ListExpectation(len(v)) for k, v in EXPECTED_VOC.items()}


@pytest.mark.parametrize("planted", ["JPEGImages", "SegmentationClassAug", "ImageSets"])
def test_prepare_voc_refuses_a_pre_planted_folder_link(tmp_path, outside, planted):
    voc, sbd, _ = make_voc_sources(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / planted).symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    with pytest.raises(DataError, match="symbolic link .* outside the output folder"):
        prepare_voc(voc, sbd, out, workers=1, expected=fake_voc_expected())
    assert snapshot(outside) == before


def test_prepare_refuses_a_linked_lock_file(tmp_path, outside):
    voc, sbd, _ = make_voc_sources(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".prepare.lock").symlink_to(outside / "keep.txt")
    with pytest.raises(DataError, match="symbolic link"):
        prepare_voc(voc, sbd, out, workers=1, expected=fake_voc_expected())
    assert (outside / "keep.txt").read_text() == "untouched\n"


@pytest.mark.parametrize("planted", ["JPEGImages", "SegmentationClass"])
def test_prepare_coco_refuses_a_pre_planted_folder_link(tmp_path, outside, planted):
    coco, _ = make_coco_source(tmp_path / "coco")
    out = tmp_path / "out"
    out.mkdir()
    (out / planted).symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    with pytest.raises(DataError, match="symbolic link .* outside the output folder"):
        prepare_coco(coco, out, workers=1, verify=False)
    assert snapshot(outside) == before


def test_prepare_coco_refuses_annotation_file_names_that_leave_the_folder(tmp_path, outside):
    import json

    coco, _ = make_coco_source(tmp_path / "coco")
    ann = coco / "annotations" / "instances_train2014.json"
    data = json.loads(ann.read_text())
    data["images"][0]["file_name"] = "../../outside/keep.txt"
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match="file_name .* not a plain file name"):
        prepare_coco(coco, tmp_path / "out", workers=1, verify=False)
    assert (outside / "keep.txt").read_text() == "untouched\n"


def test_prepare_with_workers_checks_links_made_after_the_start(tmp_path, outside, monkeypatch):
    """The output root is inherited by pool workers: a link planted while they run is refused."""
    from tagseg.data.prepare import voc as voc_module

    voc, sbd, _ = make_voc_sources(tmp_path / "src")
    out = tmp_path / "out"
    real_copy = voc_module._copy_job

    lock_path = tmp_path / "plant.lock"

    def plant_then_copy(payload, out_path):
        import fcntl

        with open(lock_path, "w") as lock:  # one worker at a time: planting is several steps
            fcntl.flock(lock, fcntl.LOCK_EX)
            images = Path(out_path).parent
            if not images.is_symlink():
                images.mkdir(parents=True, exist_ok=True)
                for f in images.iterdir():
                    f.unlink()
                images.rmdir()
                images.symlink_to(outside, target_is_directory=True)
            return real_copy(payload, out_path)

    monkeypatch.setattr(voc_module, "_copy_job", plant_then_copy)
    before = snapshot(outside)
    with pytest.raises(DataError, match="outside the output folder"):
        prepare_voc(voc, sbd, out, workers=2, expected=fake_voc_expected())
    assert snapshot(outside) == before
    assert os.path.islink(out / "JPEGImages")


@pytest.mark.slow
def test_pseudo_refuses_a_pre_planted_link_in_its_output_and_writes_nothing_outside(tmp_path, outside, capsys):
    run, data = tmp_path / "run", tmp_path / "data"
    tiny = [f"data.root={data}", "data.synthetic_train=8", "data.synthetic_val=4", "data.synthetic_size=64",
            "data.image_size=64", "data.num_workers=0", "train.epochs=1", "train.batch_size=8",
            "method.et_crop_size=32", "pseudo.image_size=64", "model.encoder=test_resnet"]
    assert main(["train", "--config", "demo", "--out", str(run), *tiny]) == 0
    (run / "pseudo" / "val").mkdir(parents=True)
    (run / "pseudo" / "val" / "masks").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    capsys.readouterr()
    assert main(["pseudo", "--run", str(run), "--split", "val", "--workers", "1"]) == 2
    assert "outside the output folder" in capsys.readouterr().err
    assert snapshot(outside) == before


@pytest.mark.parametrize("split", ["../../escape", "a/b", "/abs", ".."])
def test_split_names_that_would_leave_their_folders_are_refused(tmp_path, split):
    from tagseg.config import load_config
    from tagseg.data.build import build_index
    from tagseg.errors import ConfigError

    cfg = load_config("demo", [f"data.root={tmp_path / 'data'}"])
    with pytest.raises(ConfigError, match="split .* plain names"):
        build_index(cfg.data, split)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("argv", [["eval", "--run", "{run}"], ["report", "{run}"], ["pseudo", "--run", "{run}"],
                                  ["segment", "eval", "--run", "{run}"], ["predict", "--model", "m", "--out", "{run}", "x"]])
def test_every_verb_refuses_a_run_or_output_folder_holding_a_link_out(tmp_path, outside, monkeypatch, capsys, argv):
    import tagseg.cli as cli

    run = tmp_path / "run"
    (run / "pseudo").mkdir(parents=True)
    (run / "pseudo" / "val").symlink_to(outside, target_is_directory=True)
    called = []
    parse = cli.parse_args

    def parse_with_recording_handler(argv):  # every verb's handler, lazy or not, records instead of running
        args = parse(argv)
        args.handler = lambda parsed: called.append(parsed) or 0
        return args

    monkeypatch.setattr(cli, "parse_args", parse_with_recording_handler)
    assert cli.main([a.replace("{run}", str(run)) for a in argv]) == 2
    assert "symbolic link" in capsys.readouterr().err and not called
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]


def test_a_link_planted_while_a_verb_runs_is_not_written_through(tmp_path, outside, monkeypatch, capsys):
    import tagseg.cli as cli

    run = tmp_path / "run"
    run.mkdir()

    def plant_then_write(args):
        (run / "late").symlink_to(outside, target_is_directory=True)
        write_json(run / "late" / "eval.json", {"miou": 1.0})
        return 0

    monkeypatch.setattr("tagseg.report.cli.cmd_report", plant_then_write)  # the verb's handler, imported when it runs
    assert cli.main(["report", str(run)]) == 2
    assert "outside the output folder" in capsys.readouterr().err
    assert not (outside / "eval.json").exists()


@pytest.mark.parametrize("verb", ["voc", "coco"])
def test_prepare_into_a_file_or_below_one_is_a_one_line_error(tmp_path, capsys, verb):
    voc, sbd, _ = make_voc_sources(tmp_path / "src")
    coco, _ = make_coco_source(tmp_path / "coco")
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "below"):
        args = ["--voc", str(voc), "--sbd", str(sbd)] if verb == "voc" else ["--coco", str(coco)]
        assert main(["prepare", verb, *args, "--out", str(out), "--workers", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines()[-1].startswith("tagseg prepare: error: cannot create the output folder")
        assert "Traceback" not in err


def test_an_os_error_no_command_anticipated_is_one_line(monkeypatch, capsys):
    import tagseg.cli as cli

    def disk_trouble(args):
        raise PermissionError(13, "Permission denied", "/some/where/file.bin")

    monkeypatch.setattr(cli, "cmd_configs", disk_trouble)
    assert cli.main(["configs"]) == 2
    assert capsys.readouterr().err == "tagseg configs: error: Permission denied (/some/where/file.bin)\n"
