"""SEAM through the rest of the pipeline: on other timm CNN encoders (an EfficientNet-Lite and a
plain ResNet, both tiny and untrained), refined by PAR from the command line, and sharded and
resumed by the per-image runner of ``tagseg pseudo`` and ``tagseg refine``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import make_voc
from tagseg.classify.trainer import Trainer
from tagseg.cli import main
from tagseg.data.build import build_index
from tagseg.experiment import load_experiment
from tagseg.inference.loading import load_trained_model
from tagseg.models.seam_net import SEAMNet

from test_seam_family import SEAM_TINY, SMALL


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc") / "voc"
    make_voc(root, n=4)
    return root


@pytest.fixture(scope="module")
def seam_run(voc, tmp_path_factory) -> Path:
    cfg = load_experiment("seam_voc", [f"data.root={voc}", *SEAM_TINY, *SMALL])
    run = tmp_path_factory.mktemp("seam") / "run"
    Trainer(cfg, run, show_progress=False).fit()
    return run


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def _tags(run: Path) -> dict[str, set[int]]:
    cfg = load_experiment(str(run / "config.yaml"))
    return {rec.id: set(np.flatnonzero(rec.labels > 0.5).tolist()) for rec in build_index(cfg.data, "train").records}


@pytest.mark.parametrize("encoder", ["tf_efficientnet_lite0", "resnet18"])
def test_seam_trains_and_infers_on_other_timm_cnns(voc, tmp_path, encoder):
    cfg = load_experiment("seam_voc", [f"data.root={voc}", *SEAM_TINY, *SMALL, f"model.encoder={encoder}"])
    assert cfg.model.encoder == encoder and not cfg.model.pretrained
    Trainer(cfg, tmp_path / "run", show_progress=False).fit()
    history = json.loads((tmp_path / "run" / "history.jsonl").read_text().splitlines()[-1])
    assert {"er", "ecr"} <= set(history) and math.isfinite(history["total"])
    model, _, info = load_trained_model(tmp_path / "run" / "model.safetensors")
    assert info["family"] == "seam" and isinstance(model, SEAMNet)
    assert model.encoder.name == encoder
    maps = model.eval().inference_maps(torch.rand(1, 3, 64, 64))
    assert maps.shape == (1, 20, 4, 4) and (maps >= 0).all()  # 20 foreground maps at output stride 16


def test_par_refines_a_seam_run_by_shards_and_resumes(seam_run, capsys):
    out = seam_run / "refine" / "par" / "train"
    for shard, total in (("0/2", 2), ("1/2", 4)):
        assert main(["refine", "--run", str(seam_run), "--method", "par", "--threads", "1", "--shard", shard]) == 0
        assert len(_masks(out / "masks")) == total
    tags = _tags(seam_run)
    for rec_id, mask in _masks(out / "masks").items():
        assert set(np.unique(mask).tolist()) <= tags[rec_id]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "refine" and manifest["counts"]["on_disk"]["complete"] == 4
    capsys.readouterr()
    assert main(["refine", "--run", str(seam_run), "--method", "par", "--threads", "1"]) == 0
    assert "all 4 already done with these settings and models" in capsys.readouterr().out


def test_pseudo_on_a_seam_run_by_shards_and_resumes(seam_run, capsys):
    out = seam_run / "pseudo" / "train"
    for shard, total in (("0/2", 2), ("1/2", 4)):
        assert main(["pseudo", "--run", str(seam_run), "--threads", "1", "--shard", shard]) == 0
        assert len(_masks(out / "masks")) == total
    before = {p.name: p.stat().st_mtime_ns for p in (out / "masks").glob("*.png")}
    capsys.readouterr()
    assert main(["pseudo", "--run", str(seam_run), "--threads", "1"]) == 0
    assert "all 4 already done with these settings and this model" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "masks").glob("*.png")} == before
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "pseudo" and manifest["extra"]["family"] == "seam"
