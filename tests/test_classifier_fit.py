"""benchmarks/classifier_fit.py: its tag metrics by hand, its cache refusing other settings, and its
background threshold chosen on val images disjoint from the scored ones."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import load_benchmark


def test_average_precision_by_hand():
    fit = load_benchmark("classifier_fit")
    # positives ranked 1st and 3rd: precisions 1/1 and 2/3
    ap = fit.average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, True, False]))
    assert ap == pytest.approx((1 + 2 / 3) / 2)
    assert fit.average_precision(np.array([0.1, 0.9]), np.array([True, False])) == pytest.approx(0.5)


def test_tag_scores_by_hand():
    fit = load_benchmark("classifier_fit")
    probs = np.array([[0.9, 0.2, 0.4], [0.6, 0.7, 0.1]])
    targets = np.array([[True, False, False], [False, True, False]])
    got = fit.tag_scores(probs, targets)
    # class 3 has no positive and is left out; predicted at 0.5: 3 pairs, 2 of them right, 2 targets
    assert got == {"map": pytest.approx(1.0), "f1": pytest.approx(2 * 2 / (3 + 2)), "classes": 2}


def test_a_cached_run_with_other_settings_is_refused(tmp_path):
    fit = load_benchmark("classifier_fit")
    args = fit.argparse.Namespace(work=tmp_path, max_images=200, val_images=100, epochs=3, unfreeze=2, size=160,
                                  infer_size=256, batch=16)
    (tmp_path / "cam-seed0").mkdir()
    record = {"name": "cam", "seed": 0, "settings": fit.settings(args), "losses": [0.7], "final_loss": 0.7}
    (tmp_path / "cam-seed0" / "fit.json").write_text(json.dumps(record))
    assert fit.run_one("cam", 0, args) == record
    args.max_images = 1000
    with pytest.raises(SystemExit, match="give each setting its own --work"):
        fit.run_one("cam", 0, args)


def test_the_disjoint_protocol_chooses_on_other_val_images_than_it_scores():
    fit = load_benchmark("classifier_fit")
    choose, scored = fit.val_split(300, 100, 100, "disjoint")
    assert list(scored) == list(range(100)) and list(choose) == list(range(100, 200))
    assert not set(choose) & set(scored)
    assert fit.val_split(300, 100, 100, "same") == (range(100), range(100))
    with pytest.raises(SystemExit, match="the val split has 150 images"):
        fit.val_split(150, 100, 100, "disjoint")


def test_choose_threshold_takes_the_best_and_ties_to_the_lower():
    fit = load_benchmark("classifier_fit")
    assert fit.choose_threshold({0.3: 0.2, 0.4: 0.25, 0.5: 0.1}) == 0.4
    assert fit.choose_threshold({0.3: 0.25, 0.4: 0.25, 0.5: 0.1}) == 0.3


class _Index:
    def __init__(self, n):
        self.records = [fit_record(f"v{i:03d}") for i in range(n)]
        self.num_classes, self.class_names = 2, ["background", "thing"]

    def __len__(self):
        return len(self.records)


def fit_record(name):
    return type("Record", (), {"id": name})()


def test_score_val_scores_at_the_threshold_chosen_on_the_disjoint_images(tmp_path, monkeypatch):
    """The chooser images and the scored images reach the sweep separately and never overlap; the
    score is the scored images' mIoU at the chooser's best threshold, not at their own best."""
    fit = load_benchmark("classifier_fit")
    cfg = fit.argparse.Namespace(data=fit.argparse.Namespace(max_images=100))
    monkeypatch.setattr(fit, "load_trained_model", lambda path: (None, cfg, None))
    monkeypatch.setattr(fit, "build_index", lambda data, split: _Index(300))
    seen = {}

    def fake_sweep(model, cfg, records, num_classes, class_names, tags):
        ids = [r.id for r in records]
        seen["scored" if tags else "choose"] = ids
        best = 0.2 if tags else 0.4  # each set's own best threshold
        rows = {str(t): (0.5 if t == best else 0.1 + t / 10) for t in fit.BG_SWEEP}
        return {"miou_by_threshold": rows, **({"map": 0.3, "f1": 0.2, "classes": 1} if tags else {})}

    monkeypatch.setattr(fit, "sweep", fake_sweep)
    run_dir = tmp_path / "cam-seed0"
    run_dir.mkdir()
    (run_dir / "fit.json").write_text(json.dumps({"settings": {"infer_size": 256}}))
    args = fit.argparse.Namespace(val_images=100, choose_images=100, protocol="disjoint", infer_size=256,
                                  rescore=False)
    got = fit.score_val(run_dir, args)
    assert seen["scored"] == [f"v{i:03d}" for i in range(100)]
    assert seen["choose"] == [f"v{i:03d}" for i in range(100, 200)]
    assert got["threshold"] == 0.4 and got["miou"] == pytest.approx(0.1 + 0.4 / 10)
    assert got["threshold_chosen_on_scored"] == 0.2 and got["miou_thr_chosen_on_scored"] == 0.5
    assert (got["choose"], got["scored"]) == ([100, 199], [0, 99])
    # both sweeps are cached beside the run: scoring again computes nothing
    seen.clear()
    assert fit.score_val(run_dir, args) == got and not seen
    args.protocol = "same"
    same = fit.score_val(run_dir, args)
    assert same["threshold"] == 0.2 and same["miou"] == 0.5 and not seen
