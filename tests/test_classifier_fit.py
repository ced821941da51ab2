"""benchmarks/classifier_fit.py: its tag metrics by hand and its cache refusing other settings."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from conftest import REPO_ROOT


def _script():
    spec = importlib.util.spec_from_file_location("classifier_fit", REPO_ROOT / "benchmarks" / "classifier_fit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_average_precision_by_hand():
    fit = _script()
    # positives ranked 1st and 3rd: precisions 1/1 and 2/3
    ap = fit.average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, True, False]))
    assert ap == pytest.approx((1 + 2 / 3) / 2)
    assert fit.average_precision(np.array([0.1, 0.9]), np.array([True, False])) == pytest.approx(0.5)


def test_tag_scores_by_hand():
    fit = _script()
    probs = np.array([[0.9, 0.2, 0.4], [0.6, 0.7, 0.1]])
    targets = np.array([[True, False, False], [False, True, False]])
    got = fit.tag_scores(probs, targets)
    # class 3 has no positive and is left out; predicted at 0.5: 3 pairs, 2 of them right, 2 targets
    assert got == {"map": pytest.approx(1.0), "f1": pytest.approx(2 * 2 / (3 + 2)), "classes": 2}


def test_a_cached_run_with_other_settings_is_refused(tmp_path):
    fit = _script()
    args = fit.argparse.Namespace(work=tmp_path, max_images=200, val_images=100, epochs=3, unfreeze=2, size=160,
                                  infer_size=256, batch=16)
    (tmp_path / "cam-seed0").mkdir()
    record = {"name": "cam", "seed": 0, "settings": fit.settings(args), "losses": [0.7], "final_loss": 0.7}
    (tmp_path / "cam-seed0" / "fit.json").write_text(json.dumps(record))
    assert fit.run_one("cam", 0, args) == record
    args.max_images = 1000
    with pytest.raises(SystemExit, match="give each setting its own --work"):
        fit.run_one("cam", 0, args)
