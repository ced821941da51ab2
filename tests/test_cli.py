"""The command line: demo at a tiny size, and train + pseudo + eval on real VOC images."""

import json

import pytest

from tagseg.cli import main


@pytest.mark.slow
def test_demo_tiny(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path / "demo"), "data.synthetic_train=16", "data.synthetic_val=4",
                 "train.epochs=1", "train.batch_size=8", "model.encoder=test_resnet", "data.image_size=64",
                 "data.synthetic_size=64", "pseudo.image_size=64", "method.et_crop_size=32"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "tagseg pseudo-masks" in out and "chance: all background" in out and "mIoU" in out
    summary = json.loads((tmp_path / "demo" / "pseudo" / "train" / "eval.json").read_text())
    assert summary["images"] == 16 and 0.0 <= summary["miou"] <= 1.0
    assert (tmp_path / "demo" / "config.yaml").is_file()
    # every stage output folder says how it was made: the data, the training run, the pseudo-masks,
    # and any folder a stage writes images, masks or a model into
    run = tmp_path / "demo"
    outputs = {p.parent for p in run.rglob("*") if p.name in ("masks", "images", "model.safetensors")}
    outputs -= {p for p in outputs if p.parent.name == "checkpoints"}
    assert outputs == {run, run / "data", run / "pseudo" / "train"}
    stages = {folder.relative_to(run).as_posix(): json.loads((folder / "manifest.json").read_text())
              for folder in outputs}
    assert stages["data"]["stage"] == "synthetic data" and stages["data"]["counts"]["on_disk"]["complete"] == 20
    assert stages["pseudo/train"]["stage"] == "pseudo" and stages["pseudo/train"]["counts"]["on_disk"]["complete"] == 16


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["train", "--config", "nope"]) == 2
    assert "unknown config 'nope'" in capsys.readouterr().err
    assert main(["train", "--config", "tkpcl_voc", f"data.root={tmp_path / 'missing'}", "--out",
                 str(tmp_path / "r")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # the data is read before the run folder is made
    assert main(["segment", "train", "--config", "segment_voc_cpu", f"data.root={tmp_path / 'missing'}", "--out",
                 str(tmp_path / "s")]) == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "s").exists()
    assert main(["pseudo", "--run", str(tmp_path)]) == 2
    assert "config.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_train_pseudo_eval_on_real_voc(voc_root, tmp_path, capsys):
    run = tmp_path / "run"
    common = [f"data.root={voc_root}", "data.max_images=8", "data.image_size=64", "data.num_workers=0",
              "model.encoder=test_resnet", "model.pretrained=false", "model.lstm_hidden=8",
              "method.et_crop_size=32", "train.epochs=1", "train.warmup_epochs=0", "train.cpu_threads=1",
              "train.batch_size=4",
              "pseudo.image_size=64", "data.pseudo_split=val"]
    assert main(["train", "--config", "tkpcl_voc", "--out", str(run), *common]) == 0
    assert main(["pseudo", "--run", str(run), "pseudo.flip=true", "pseudo.scales=[1.0,1.5]"]) == 0
    masks = sorted((run / "pseudo" / "val" / "masks").glob("*.png"))
    assert len(masks) == 8
    assert main(["pseudo", "--run", str(run), "pseudo.flip=true", "pseudo.scales=[1.0,1.5]"]) == 0  # resumes
    assert "all 8 already done with these settings and this model" in capsys.readouterr().out
    assert main(["pseudo", "--run", str(run)]) == 2  # other settings: refused, naming them
    assert "other settings (flip: True -> False; scales: [1.0, 1.5] -> [1.0])" in capsys.readouterr().err
    assert main(["eval", "--pred", str(run / "pseudo" / "val" / "masks"), "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "background" in out
    summary = json.loads((run / "pseudo" / "val" / "eval.json").read_text())
    assert summary["images"] == 8 and len(summary["iou"]) == 21


@pytest.mark.slow
def test_pseudo_with_crf_and_workers_then_eval_several_runs(tmp_path, capsys):
    from fixtures import make_voc

    make_voc(tmp_path / "voc", n=4)
    run = tmp_path / "run"
    common = [f"data.root={tmp_path / 'voc'}", "data.dataset=voc", "data.train_split=train",
              "data.pseudo_split=train", "data.image_size=64", "data.num_workers=0", "model.encoder=test_resnet",
              "model.pretrained=false", "model.lstm_hidden=8", "method.et_crop_size=32", "train.epochs=1",
              "train.warmup_epochs=0", "train.cpu_threads=1",
              "train.batch_size=2", "pseudo.image_size=64"]
    assert main(["train", "--config", "tkpcl_voc", "--out", str(run), *common]) == 0
    assert main(["pseudo", "--run", str(run), "--crf", "torch", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 written" in out and "img/s" in out
    assert len(list((run / "pseudo" / "train" / "crf" / "masks").glob("*.png"))) == 4
    # single-process output is identical to the 2-worker output
    assert main(["pseudo", "--run", str(run), "--crf", "torch", "--out", str(tmp_path / "single")]) == 0
    from tagseg.utils.io import read_mask

    for p in (run / "pseudo" / "train" / "masks").glob("*.png"):
        assert (read_mask(p, 21) == read_mask(tmp_path / "single" / "masks" / p.name, 21)).all()
        assert (read_mask(run / "pseudo" / "train" / "crf" / "masks" / p.name, 21)
                == read_mask(tmp_path / "single" / "crf" / "masks" / p.name, 21)).all()
    capsys.readouterr()
    raw, crf = run / "pseudo" / "train" / "masks", run / "pseudo" / "train" / "crf" / "masks"
    # two kinds of masks: side by side, never averaged
    assert main(["eval", "--pred", str(raw), str(crf), "--run", str(run), "--out", str(tmp_path / "kinds.json")]) == 0
    out = capsys.readouterr().out
    assert "contour F" in out and "J&F" in out and "mean ± std" not in out
    kinds = json.loads((tmp_path / "kinds.json").read_text())
    assert "metrics" not in kinds and kinds["runs"] == [str(raw), str(crf)]
    assert len(kinds["per_run"]) == 2 and all(0 <= r["miou"] <= 1 for r in kinds["per_run"])
    assert all(len(r["iou"]) == len(kinds["class_names"]) == 21 for r in kinds["per_run"])  # per class, per folder
    # folders declared seeds of one setting: their mean ± std as well
    assert main(["eval", "--pred", str(raw), str(crf), "--run", str(run), "--seeds",
                 "--out", str(tmp_path / "runs.json")]) == 0
    out = capsys.readouterr().out
    assert "mean ± std" in out and "over 2 runs" in out
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert set(runs["metrics"]) >= {"miou", "contour_f", "j_and_f"}
    assert runs["metrics"]["miou"]["values"] == [r["miou"] for r in kinds["per_run"]]
    assert main(["eval", "--pred", str(raw), "--run", str(run), "--seeds"]) == 2
    assert "--seeds averages several" in capsys.readouterr().err


def test_train_refuses_a_folder_with_checkpoints_unless_resuming(tmp_path, capsys):
    from fixtures import make_voc

    make_voc(tmp_path / "voc", n=2)
    args = ["train", "--config", "tkpcl_voc", "--out", str(tmp_path / "run"), f"data.root={tmp_path / 'voc'}",
            "data.train_split=train", "data.image_size=64", "data.num_workers=0", "model.encoder=test_resnet",
            "model.pretrained=false", "model.lstm_hidden=8", "method.et_crop_size=32", "train.epochs=1",
            "train.warmup_epochs=0", "train.cpu_threads=1", "train.batch_size=2"]
    assert main(args) == 0
    assert main(args) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0


# ------------------------------------------------------------------ one front door: flags and overrides


def _scored_run(tmp_path, n: int = 6):
    """A run folder (config.yaml) over a tiny synthetic dataset, and a 'prediction' folder that is
    a copy of the ground truth (so every score is 1)."""
    import shutil

    from tagseg.config import config_to_yaml, load_config
    from tagseg.data.build import build_index

    cfg = load_config("demo", [f"data.root={tmp_path / 'data'}", f"data.synthetic_train={n}", "data.synthetic_val=2",
                               "data.synthetic_size=48"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config_to_yaml(cfg))
    pred = tmp_path / "pred"
    pred.mkdir()
    for rec in build_index(cfg.data, "train").records:
        shutil.copy(rec.mask_path, pred / f"{rec.id}.png")
    return run, pred


def test_eval_takes_overrides_after_its_folders(tmp_path, capsys):
    import torch

    run, pred = _scored_run(tmp_path)
    # the override after --pred is not swallowed as a folder: only 2 of 6 images are scored
    assert main(["eval", "--run", str(run), "--pred", str(pred), "data.max_images=2", "--threads", "1",
                 "--out", str(tmp_path / "e.json")]) == 0
    summary = json.loads((tmp_path / "e.json").read_text())
    assert summary["images"] == 2 and summary["miou"] == 1.0
    assert torch.get_num_threads() == 1  # --threads is applied
    assert main(["eval", "--run", str(run), "data.max_images=3", "--pred", str(pred),
                 "--out", str(tmp_path / "f.json")]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["images"] == 3
    capsys.readouterr()
    # a bare folder where overrides go gets told where folders go
    assert main(["eval", "--run", str(run), str(pred)]) == 2
    assert "--pred" in capsys.readouterr().err
    assert main(["eval", "--run", str(run), "--pred", str(pred), "data.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err


def test_eval_classes_reports_the_named_classes_miou(tmp_path, capsys):
    import numpy as np

    from PIL import Image

    run, pred = _scored_run(tmp_path, n=4)
    first = sorted(pred.glob("*.png"))[0]
    with Image.open(first) as im:
        Image.fromarray(np.zeros((im.height, im.width), np.uint8)).save(first)  # one image: all background
    assert main(["eval", "--run", str(run), "--pred", str(pred), "--out", str(tmp_path / "all.json")]) == 0
    summary = json.loads((tmp_path / "all.json").read_text())
    names = summary["class_names"]
    imperfect = [n for n, v in zip(names, summary["iou"]) if v is not None and v < 1]
    assert imperfect  # the edited image lowered some class
    pick = [names[0], imperfect[-1]]
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--pred", str(pred), "--classes", ",".join(pick),
                 "--out", str(tmp_path / "sub.json")]) == 0
    assert "subset mIoU" in capsys.readouterr().out
    sub = json.loads((tmp_path / "sub.json").read_text())["subset"]
    by_name = dict(zip(names, summary["iou"]))
    assert sub["miou"] == pytest.approx(np.mean([by_name[n] for n in pick])) and sub["miou"] < 1
    # side by side: a subset column
    assert main(["eval", "--run", str(run), "--pred", str(pred), str(pred), "--classes", pick[1],
                 "--out", str(tmp_path / "runs.json")]) == 0
    assert "subset mIoU" in capsys.readouterr().out
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert [r["subset_miou"] for r in runs["per_run"]] == [pytest.approx(by_name[pick[1]])] * 2
    # a misspelt class is refused before anything is scored, naming the valid ones
    assert main(["eval", "--run", str(run), "--pred", str(pred), "--classes", f"{names[0]},kitten"]) == 2
    err = capsys.readouterr().err
    assert "kitten" in err and names[1] in err
    # the background sweep picks on all classes: a subset there is refused, not ignored
    assert main(["eval", "--run", str(run), "--sweep-bg", "0.3", "--classes", names[0]]) == 2
    assert "--sweep-bg" in capsys.readouterr().err


def test_split_overrides_keeps_existing_paths(tmp_path):
    from tagseg.cli import split_overrides

    odd = tmp_path / "a=b"
    odd.mkdir()
    assert split_overrides([str(odd), "x.y=1", "images/", "pseudo.scales=[1.0,0.5]"]) == (
        [str(odd), "images/"], ["x.y=1", "pseudo.scales=[1.0,0.5]"])


def test_configs_prints_a_resolved_config_with_overrides_and_device(capsys):
    assert main(["configs", "demo", "train.epochs=3", "--device", "cpu", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "device: cpu" in out and "epochs: 3" in out
    assert main(["configs", "train.epochs=3"]) == 2  # overrides need a name


@pytest.mark.parametrize("verb", [["demo"], ["train"], ["pseudo"], ["eval"], ["configs"], ["report"],
                                  ["segment", "train"], ["segment", "eval"], ["predict"]])
def test_every_verb_has_threads_and_overrides(verb, capsys):
    with pytest.raises(SystemExit):
        main([*verb, "--help"])
    text = capsys.readouterr().out
    assert "--threads" in text and "key=value" in text
    assert ("--device" in text) == (verb != ["report"])  # the report runs no network


def test_report_and_predict_reject_overrides_they_cannot_use(tmp_path, capsys):
    from tagseg.segment.config import SegInferenceConfig
    from tagseg.segment.predict import inference_with_overrides

    run, _ = _scored_run(tmp_path)
    assert main(["report", str(run), "train.epochs=3"]) == 2
    assert "only data.key=value" in capsys.readouterr().err
    inf = inference_with_overrides(SegInferenceConfig(), ["inference.flip=true", "inference.scales=[1.0,0.5]"])
    assert inf.flip is True and inf.scales == [1.0, 0.5]
    from tagseg.errors import ConfigError

    with pytest.raises(ConfigError, match="only inference.key=value"):
        inference_with_overrides(SegInferenceConfig(), ["model.head=x"])


def test_a_second_background_sweep_does_not_replace_the_first(tmp_path):
    from tagseg.config import load_config
    from tagseg.evaluate.bg_sweep import sweep_output_path

    cfg = load_config("cam_voc", ["pseudo.image_size=320", "pseudo.flip=true", "pseudo.scales=[1.0,0.5]"])
    first = sweep_output_path(tmp_path, "train", cfg, [0.1, 0.3])
    assert first == tmp_path / "bg_sweep_train.json"
    first.write_text("{}")
    second = sweep_output_path(tmp_path, "train", cfg, [0.1, 0.3])
    assert second.name == "bg_sweep_train_320px_s1-0.5_flip_t0.1-0.3.json"
    second.write_text("{}")
    third = sweep_output_path(tmp_path, "train", cfg, [0.1, 0.3])
    assert third.name == "bg_sweep_train_320px_s1-0.5_flip_t0.1-0.3-2.json"


def test_thread_and_process_defaults(monkeypatch):
    from tagseg.utils import runtime

    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 8)
    assert runtime.default_threads() == 8 and runtime.default_threads(2) == 4 and runtime.default_threads(4, 1) == 1
    assert runtime.default_threads(16) == 1  # never below 1
    # pseudo on a CPU: single-threaded processes, one per 128 images up to min(cores, 4)
    assert runtime.inference_processes("cpu", 100) == (1, 1)
    assert runtime.inference_processes("cpu", 300) == (1, 2)
    assert runtime.inference_processes("cpu", 5000) == (1, 4)
    assert runtime.inference_processes("cuda", 5000) == (8, 1)  # a GPU: one process, cores as threads
    # given values win; a missing thread count is cores / workers
    assert runtime.inference_processes("cpu", 5000, workers=2) == (4, 2)
    assert runtime.inference_processes("cpu", 10, threads=3) == (3, 1)
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    assert runtime.inference_processes("cpu", 5000) == (1, 2)
