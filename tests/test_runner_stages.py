"""Stages on the per-image runner beyond pseudo-masks: predict writes its manifest, keeps going
past unreadable images, and counts only what is on disk."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from tagseg.data.classes import VOC_CLASSES, voc_palette
from tagseg.engine.checkpoint import save_final_model
from tagseg.segment.config import load_segment_config
from tagseg.segment.models import build_segmenter
from tagseg.segment.predict import run_predict
from tagseg.segment.inference import model_metadata


def test_predict_writes_a_manifest_that_matches_its_files(tmp_path):
    cfg = load_segment_config(None, ["model.encoder=test_resnet", "model.head=deeplabv2", "augment.crop_size=64"])
    torch.manual_seed(0)
    model = tmp_path / "model.safetensors"
    save_final_model(model, build_segmenter(cfg.model, len(VOC_CLASSES), 64),
                     model_metadata(cfg, VOC_CLASSES, voc_palette()))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(images / name)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    report = run_predict([images], model, out, progress=False)
    assert sorted(p.name for p in report.written) == ["a.png", "b.png", "c.png"]
    assert [f[0] for f in report.failures] == [str(images / "broken.jpg")]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "predict" and manifest["run"] == str(tmp_path)
    assert manifest["settings"]["scales"] == list(cfg.inference.scales)
    counts = manifest["counts"]
    assert counts["on_disk"] == {"masks": 3, "overlays": 3, "complete": 3} and counts["failed_now"] == 1
    assert counts["images"] == 4 and counts["written_now"] == 3
    assert len(list((out / "masks").iterdir())) == counts["on_disk"]["masks"]
