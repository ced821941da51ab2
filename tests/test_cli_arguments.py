"""Argument order: ``key=value`` overrides may stand anywhere among a verb's options (one test
per verb), ``--version``, and unknown words still refused. Parsing only: nothing runs."""

from __future__ import annotations

import pytest

from tagseg import __version__
from tagseg.cli import parse_args


def _overrides(argv: list[str]) -> list[str]:
    return parse_args(argv).overrides


def test_demo_overrides_before_between_and_after_options():
    assert _overrides(["demo", "a.x=1", "--out", "o", "b.y=2", "--threads", "1", "c.z=3"]) == ["a.x=1", "b.y=2", "c.z=3"]


def test_train_overrides_after_an_option():
    args = parse_args(["train", "--config", "demo", "a.x=1", "--out", "o", "b.y=2", "--resume", "c.z=3"])
    assert (args.config, args.out, args.resume) == ("demo", "o", True)
    assert args.overrides == ["a.x=1", "b.y=2", "c.z=3"]


def test_pseudo_override_after_threads_as_users_write_it():
    args = parse_args(["pseudo", "--run", "R", "--threads", "1", "data.x=y"])
    assert (args.run, args.threads, args.overrides) == ("R", 1, ["data.x=y"])
    args = parse_args(["pseudo", "data.a=1", "--run", "R", "data.b=2", "--overwrite", "data.c=3"])
    assert args.overrides == ["data.a=1", "data.b=2", "data.c=3"] and args.overwrite


def test_eval_overrides_behind_pred_and_after_other_options(tmp_path):
    pred = tmp_path / "masks"
    pred.mkdir()
    args = parse_args(["eval", "--pred", str(pred), "a.x=1", "--run", "R", "b.y=2", "--split", "val", "c.z=3"])
    assert args.pred == [str(pred)] and args.run == "R" and args.split == "val"
    assert args.overrides == ["a.x=1", "b.y=2", "c.z=3"]


def test_configs_overrides_after_threads():
    args = parse_args(["configs", "tkpcl_voc", "--threads", "1", "method.topk=3", "--device", "cpu", "a.b=1"])
    assert (args.name, args.overrides, args.device) == ("tkpcl_voc", ["method.topk=3", "a.b=1"], "cpu")


def test_report_overrides_anywhere():
    args = parse_args(["report", "RUN", "data.max_images=5", "--samples", "3", "data.root=/d", "--thumb", "64"])
    assert (args.run, args.samples, args.thumb) == ("RUN", 3, 64)
    assert args.overrides == ["data.max_images=5", "data.root=/d"]


def test_segment_train_overrides_anywhere():
    args = parse_args(["segment", "train", "train.epochs=1", "--config", "segment_demo", "a.b=2", "--out", "o", "c.d=3"])
    assert args.handler.__name__ == "cmd_segment_train"
    assert args.overrides == ["train.epochs=1", "a.b=2", "c.d=3"]


def test_segment_eval_overrides_anywhere():
    args = parse_args(["segment", "eval", "--run", "R", "inference.flip=true", "--save-masks", "data.max_images=2"])
    assert args.save_masks and args.overrides == ["inference.flip=true", "data.max_images=2"]


def test_predict_overrides_and_images_anywhere(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    args = parse_args(["predict", str(image), "inference.flip=true", "--model", "M", "inference.scales=[1.0]",
                       "--no-flip", str(tmp_path)])
    assert args.images == [str(image), str(tmp_path)] and args.model == "M" and args.flip is False
    assert args.overrides == ["inference.flip=true", "inference.scales=[1.0]"]


def test_refine_overrides_anywhere():
    args = parse_args(["refine", "refine.irn.beta=8", "--run", "R", "--method", "irn", "pseudo.flip=true",
                       "--shard", "0/2", "refine.psa.preset=seam"])
    assert (args.run, args.method, args.shard) == ("R", "irn", (0, 2))
    assert args.overrides == ["refine.irn.beta=8", "pseudo.flip=true", "refine.psa.preset=seam"]


def test_prepare_coco_mask_settings_anywhere():
    args = parse_args(["prepare", "coco", "crowd=background", "--out", "o", "overlap=order", "--workers", "1",
                       "images=copy"])
    assert args.overrides == ["crowd=background", "overlap=order", "images=copy"]


def test_prepare_voc_takes_no_overrides_and_says_so(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["prepare", "voc", "--out", "o", "a.b=1"])
    assert exc.value.code == 2
    assert "unrecognized arguments: a.b=1" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["train", "--config", "demo", "--bogus"], ["pseudo", "a.x=1", "--run", "R", "notakey"],
                                  ["predict", "a.png", "--model", "M", "--bogus"]])
def test_words_that_are_neither_options_nor_overrides_are_still_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"tagseg {__version__}"


def test_every_verb_is_covered_here():
    """A new verb needs a test of its argument order in this file."""
    import argparse

    from tagseg.cli import build_parser

    def verbs(parser: argparse.ArgumentParser, prefix: str = "") -> set[str]:
        found = set()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found |= verbs(sub, f"{prefix}{name} ") or {f"{prefix}{name}"}
        return found

    tested = {"demo", "train", "pseudo", "eval", "configs", "report", "segment train", "segment eval", "predict",
              "prepare voc", "prepare coco", "refine"}
    missing = verbs(build_parser()) - tested
    assert not missing, f"add an argument-order test to tests/test_cli_arguments.py for: {sorted(missing)}"


def test_each_verb_is_registered_and_handled_by_its_own_stage():
    """Each stage package declares its verbs in its cli.py; the top-level cli keeps only the
    pipeline-wide demo and configs."""
    import tagseg.cli as cli

    owners = {
        ("demo",): "tagseg.cli", ("configs",): "tagseg.cli",
        ("prepare", "voc", "--out", "o"): "tagseg.data.prepare.cli",
        ("train", "--config", "demo"): "tagseg.classify.cli",
        ("pseudo", "--run", "R"): "tagseg.pseudo.cli",
        ("refine", "--run", "R", "--method", "par"): "tagseg.refine.cli",
        ("segment", "train", "--config", "segment_demo"): "tagseg.segment.cli",
        ("segment", "eval", "--run", "R"): "tagseg.segment.cli",
        ("predict", "x.png", "--model", "M"): "tagseg.segment.cli",
        ("eval", "--pred", "P", "--run", "R"): "tagseg.evaluate.cli",
        ("report", "R"): "tagseg.report.cli",
    }
    for argv, module in owners.items():
        assert parse_args(list(argv)).handler.__module__ == module, argv
    assert cli.STAGE_VERBS == ("tagseg.data.prepare.cli", "tagseg.classify.cli", "tagseg.pseudo.cli",
                               "tagseg.refine.cli", "tagseg.segment.cli", "tagseg.evaluate.cli", "tagseg.report.cli")
