"""benchmarks/gpu_repro.py: the re-encoded subset and the whole pipeline on a tiny slice (CPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]


def test_shrink_keeps_masks_aligned_and_labels(voc_root, tmp_path):
    repro = load_benchmark("gpu_repro")
    out = tmp_path / "small"
    size = repro.shrink(voc_root, out, side=120, max_images=3)
    assert size > 0
    ids = (out / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert ids == (voc_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:3]
    for i in ids:
        with Image.open(out / "JPEGImages" / f"{i}.jpg") as im, Image.open(out / "SegmentationClassAug" / f"{i}.png") as m:
            assert im.size == m.size and max(im.size) == 120
            small = set(np.unique(np.asarray(m)).tolist())
        with Image.open(voc_root / "SegmentationClassAug" / f"{i}.png") as big:
            assert small <= set(np.unique(np.asarray(big)).tolist())  # nearest: no new class values
    sys.path.insert(0, str(REPO / "src"))
    from tagseg.data.voc import read_voc

    index = read_voc(out, "train_aug")
    assert len(index) == 3 and all(r.labels[1:].sum() >= 1 for r in index.records)


@pytest.mark.slow
def test_tiny_pipeline_writes_the_results_table(voc_root, tmp_path):
    repro = load_benchmark("gpu_repro")
    data = tmp_path / "small"
    repro.shrink(voc_root, data, side=96, max_images=4)
    text = repro.run(data, tmp_path / "work", "cpu", tiny=True)
    assert (tmp_path / "work" / "results.md").read_text() == text
    rows = [line for line in text.splitlines() if line.startswith(("| cam |", "| tkpcl |", "| ground truth"))]
    assert len(rows) == 3
    assert "refined, par (train_aug)" in text
    assert (tmp_path / "work" / "cam" / "train" / "refine" / "par" / "train_aug" / "eval.json").is_file()
