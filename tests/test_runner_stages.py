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


def test_segment_eval_saves_its_masks_through_the_runner_with_the_same_scores(tmp_path):
    """`segment eval --save-masks`: the runner writes <id>.png and manifest.json, and the scores
    read back from those files equal the in-memory scores exactly, shard by shard."""
    from fixtures import make_voc
    from tagseg.data.voc import read_voc
    from tagseg.runner import ManifestInfo
    from tagseg.segment.evaluate import evaluate_segmenter

    cfg = load_segment_config(None, ["model.encoder=test_resnet", "model.head=deeplabv2", "augment.crop_size=64"])
    torch.manual_seed(0)
    model = build_segmenter(cfg.model, len(VOC_CLASSES), 64).eval()
    voc = tmp_path / "voc"
    make_voc(voc, n=5)
    index = read_voc(voc, "train")
    plain = evaluate_segmenter(model, index, cfg.inference, progress=False)
    saved_dir = tmp_path / "predictions" / "train"
    for shard in ((0, 2), (1, 2)):
        part = evaluate_segmenter(model, index, cfg.inference, progress=False, shard=shard, save_dir=saved_dir,
                                  manifest=ManifestInfo(stage="segment eval", settings=cfg.inference, split="train"))
        alone = evaluate_segmenter(model, index, cfg.inference, progress=False, shard=shard)
        assert part["state"] == alone["state"]  # bit-identical sums
    whole = evaluate_segmenter(model, index, cfg.inference, progress=False, save_dir=saved_dir,
                               manifest=ManifestInfo(stage="segment eval", settings=cfg.inference, split="train"))
    assert whole["state"] == plain["state"] and whole["miou"] == plain["miou"]
    manifest = json.loads((saved_dir / "manifest.json").read_text())
    assert manifest["stage"] == "segment eval" and manifest["split"] == "train"
    assert manifest["counts"]["on_disk"] == {"masks": 5, "complete": 5} and manifest["counts"]["written_now"] == 5
    assert sorted(p.stem for p in saved_dir.glob("*.png")) == sorted(r.id for r in index.records)
