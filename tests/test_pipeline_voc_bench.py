"""benchmarks/pipeline_voc.py: the whole command-line pipeline on a tiny VOC folder (CPU), its
resumption, and the table it writes."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import load_benchmark
from fixtures import make_voc

TINY_TRAIN = ["model.encoder=test_resnet", "model.weights=null", "data.image_size=64", "train.epochs=1",
              "train.warmup_epochs=1", "train.batch_size=2", "data.num_workers=0"]
TINY_SEG = ["model.encoder=test_resnet", "model.weights=null", "model.aspp_channels=16", "model.low_level_channels=8",
            "model.aspp_rates=[1,2,3]", "augment.crop_size=32", "train.batch_size=2", "train.epochs=1",
            "data.num_workers=0"]


@pytest.mark.slow
def test_tiny_cam_pipeline_writes_its_table_and_resumes(tmp_path):
    bench = load_benchmark("pipeline_voc")
    voc = tmp_path / "voc"
    make_voc(voc, n=4)
    lists = voc / "ImageSets" / "Segmentation"
    for split in ("train_aug", "val"):
        shutil.copy(lists / "train.txt", lists / f"{split}.txt")
    argv = ["--voc", str(voc), "--family", "cam", "--work", str(tmp_path / "work"), "--crf", "torch",
            "--threads", "1", "--workers", "0", "--per-image-workers", "1", "--choose-images", "2",
            "--train-set", *TINY_TRAIN, "--pseudo-set", "pseudo.image_size=64", "--segment-set", *TINY_SEG]
    assert bench.main(argv) == 0
    out = tmp_path / "work" / "cam-seed0"
    result = json.loads((out / "results.json").read_text())
    for split in ("train_aug", "val"):
        assert set(result[split]) == {"seed", "crf", "par"}
        assert all(0 <= v <= 100 for v in result[split].values())
    assert result["bg_threshold"] in {float(t) for t in bench.BG_SWEEP.split(",")}
    assert 0 <= result["deeplab"] <= 100 and 0 <= result["ceiling"] <= 100
    assert (tmp_path / "work" / "ceiling" / "model.safetensors").is_file()  # shared by families and seeds
    text = (out / "results.md").read_text()
    assert "| PAR-refined |" in text and "of the ceiling" in text
    # a second call reuses every finished step: only the per-image stages run again (and skip their images)
    first_model_time = (out / "run" / "model.safetensors").stat().st_mtime_ns
    assert bench.main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["train_aug"] == result["train_aug"] and again["deeplab"] == result["deeplab"]
    assert (out / "run" / "model.safetensors").stat().st_mtime_ns == first_model_time  # not trained again
    # reused steps keep the first call's wall time
    assert again["seconds"]["train"] == result["seconds"]["train"] > 0
    # --until seed from the same network: the seed row alone (no CRF, no refinement), the same scores
    assert bench.main([*argv, "--run", str(out / "run"), "--name", "seed-only", "--until", "seed"]) == 0
    only_dir = tmp_path / "work" / "seed-only"
    only = json.loads((only_dir / "results.json").read_text())
    assert {split: only[split] for split in ("train_aug", "val")} == {
        split: {"seed": result[split]["seed"]} for split in ("train_aug", "val")}
    assert not (only_dir / "refine").exists() and not (only_dir / "pseudo" / "val" / "crf").exists()
    assert "| + dense CRF | - | - |" in (only_dir / "results.md").read_text()


def test_cam_recipe_scores_one_scale_without_flip():
    """The CAM network's pseudo-masks are scored as classifier_fit chose (256 px, one scale, no
    flip), not with cam_voc's paper settings (4 scales + flip: 8 forwards per image)."""
    from tagseg.config import load_config

    bench = load_benchmark("pipeline_voc")
    cfg = load_config("cam_voc", bench.RECIPES["cam"]["pseudo"])
    assert (cfg.pseudo.image_size, cfg.pseudo.scales, cfg.pseudo.flip) == (256, [1.0], False)
    assert load_config("cam_voc").pseudo.scales != [1.0]  # the override is needed


@pytest.mark.parametrize("family", ["cam", "seam", "tkpcl"])
def test_each_family_recipe_is_a_valid_experiment(family, tmp_path):
    """Every recipe resolves under tagseg's validation (SEAM's must drop the CAM-only class prior)."""
    from tagseg.config import load_config

    bench = load_benchmark("pipeline_voc")
    recipe = bench.RECIPES[family]
    cfg = load_config(recipe["config"], [*bench.train_overrides(family, tmp_path, 0, 0), *recipe["pseudo"]])
    assert bool(recipe.get("bg_sweep")) == (family != "tkpcl")  # the CAM families choose a background threshold
    assert cfg.data.image_size == (320 if family == "tkpcl" else 160)
    if family == "seam":
        assert cfg.model.family == "seam" and cfg.cam.class_prior == "none"
