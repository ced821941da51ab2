"""benchmarks/addons_voc.py: records with several refine methods, the threshold sweep's range, and
(slow) the SEAM rows' pipeline end to end at a tiny size on real VOC images."""

from __future__ import annotations

import json

import pytest

from conftest import load_benchmark


def _scores(miou: float) -> dict:
    return {"miou": miou, "contour_f": 0.05, "j_and_f": (miou + 0.05) / 2}


def test_bg_sweep_reaches_past_seams_choice_and_keeps_the_default():
    bench = load_benchmark("addons_voc")
    assert bench.BG_DEFAULT in bench.BG_SWEEP
    assert list(bench.BG_SWEEP) == sorted(bench.BG_SWEEP)
    # every SEAM run chose 0.5, the old upper end: the sweep must go past it
    assert bench.BG_SWEEP[0] <= 0.1 and bench.BG_SWEEP[-1] >= 0.7


def test_refined_entries_reads_old_and_new_records():
    bench = load_benchmark("addons_voc")
    par = {"method": "par", "train_aug": _scores(0.13)}
    psa = {"method": "psa", "train_aug": _scores(0.15)}
    assert bench.refined_entries({"refined": par}) == {"par": par}
    assert bench.refined_entries({"refined": par, "refined_by": {"psa": psa}}) == {"psa": psa, "par": par}
    assert bench.refined_entries({"refined_by": {"par": psa | {"method": "par"}}, "refined": par})["par"]["train_aug"][
        "miou"] == 0.15  # the newer entry wins
    assert bench.refined_entries({}) == {}


def test_table_has_one_column_per_refine_method_and_counts_missing_seeds():
    bench = load_benchmark("addons_voc")

    def rec(miou: float, refined: dict) -> dict:
        return {"metrics": {"train_aug": _scores(miou), **refined}}

    rows = [("CAM", [rec(0.10, {"refined": {"method": "par", "train_aug": _scores(0.11)}}),
                     rec(0.12, {"refined_by": {"par": {"method": "par", "train_aug": _scores(0.13)},
                                               "psa": {"method": "psa", "train_aug": _scores(0.20)}}})])]
    lines = bench.table(rows).splitlines()
    assert "PAR-refined mIoU" in lines[0] and "AffinityNet-refined mIoU" in lines[0]
    assert lines[1].count("|") == lines[0].count("|")
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells[2] == "11.0 ± 1.4"  # seed mIoU over both seeds
    assert cells[-2] == "12.0 ± 1.4"  # PAR: both seeds
    assert cells[-1] == "20.0 (1 seeds)"  # PSA ran for one seed only


def test_psa_settings_come_from_the_command_line():
    bench = load_benchmark("addons_voc")
    args = bench.argparse.Namespace(max_images=200, psa_images=0, psa_crop=192, psa_epochs=2, psa_batch=8,
                                    psa_walk=[4.0, 8.0, 6.0])
    s = bench.psa_settings(args)
    assert s == {"preset": "seam", "images": 200, "crop_size": 192, "epochs": 2, "batch_size": 8,
                 "walk_alpha": 4.0, "beta": 8.0, "logt": 6}
    args.psa_images, args.psa_walk = 100, None
    s = bench.psa_settings(args)
    assert s["images"] == 100 and s["walk_alpha"] is None and s["logt"] is None


@pytest.mark.slow
def test_seam_rows_pipeline_sweeps_refines_and_rescores(voc_root, tmp_path):
    bench = load_benchmark("addons_voc")
    work = tmp_path / "addons"
    base = ["--voc", str(voc_root), "--work", str(work), "--max-images", "4", "--seeds", "0", "--epochs", "1",
            "--size", "64", "--infer-size", "64", "--batch", "4", "--workers", "0", "--val-images", "2",
            "--variants", "cam", "seam", "--out", str(tmp_path / "out.md")]
    head = ["--psa-images", "2", "--psa-crop", "80", "--psa-epochs", "1", "--psa-batch", "2"]
    assert bench.main(base) == 0
    # the walk swept on val with seam's head; no masks are made by the sweep
    assert bench.main([*base, "--variants", "seam", "--psa-sweep", "--psa-sweep-images", "2", *head]) == 0
    rec = json.loads((work / "seam-seed0" / "addons.json").read_text())
    sweep = rec["psa_sweep"]
    assert len(sweep["miou"]) == len(bench.PSA_WALK_ALPHAS) * len(bench.PSA_WALK_LOGTS)
    assert sweep["best"]["val_miou"] == max(sweep["miou"].values())
    assert sweep["head"]["crop_size"] == 80 and sweep["val_images"] == 2
    assert not (work / "seam-seed0" / "refine" / "psa" / "train_aug").exists()
    b = sweep["best"]
    walk = ["--psa-walk", str(b["walk_alpha"]), str(b["beta"]), str(b["logt"])]
    assert bench.main([*base, "--refine", "psa", *head, *walk]) == 0
    for name in ("cam", "seam"):
        rec = json.loads((work / f"{name}-seed0" / "addons.json").read_text())
        entry = rec["metrics"]["refined_by"]["psa"]
        assert entry["settings"]["walk_alpha"] == b["walk_alpha"] and entry["settings"]["images"] == 2
        assert 0.0 <= entry["train_aug"]["miou"] <= 1.0
        assert len(list((work / f"{name}-seed0" / "refine" / "psa" / "labels" / "train_aug").glob("*.png"))) == 2
        assert len(list((work / f"{name}-seed0" / "refine" / "psa" / "train_aug" / "masks").glob("*.png"))) == 4
    # another head schedule on the same cache is refused instead of mixing settings
    with pytest.raises(SystemExit):
        bench.main([*base, "--refine", "psa", *head[:-2], "--psa-batch", "4", *walk])
    with pytest.raises(SystemExit):  # nor are masks of another walk reused
        bench.main([*base, "--refine", "psa", *head, "--psa-walk", str(b["walk_alpha"] + 1), str(b["beta"]),
                    str(b["logt"])])
    # a rescore keeps the refined entry and sweeps every threshold
    assert bench.main([*base, "--rescore"]) == 0
    rec = json.loads((work / "seam-seed0" / "addons.json").read_text())
    assert "psa" in rec["metrics"]["refined_by"]
    assert set(rec["metrics"]["bg_sweep"]["miou"]) == {str(t) for t in bench.BG_SWEEP}
    assert rec["metrics"]["val_choice"]["threshold"] in bench.BG_SWEEP
    assert bench.main([*base, "--cached-only"]) == 0
    assert "AffinityNet-refined mIoU" in (tmp_path / "out.md").read_text()
