"""Dense CRF against the official ViT-PCM ``DenseCRF`` (pydensecrf), recorded by
``benchmarks/golden/record_vit_pcm_crf.py``; the tests need only ``vit_pcm_crf.json``.

The pydensecrf backend runs the same compiled code on the same unary and must match exactly; the
PyTorch backend approximates the same permutohedral filtering in float32 and is held to
|ΔQ| <= 2e-5 (measured: at most 6e-6 on these cases) and the same per-pixel argmax on all but 0.1 %
of pixels.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from tagseg.inference.crf import CRF_PRESETS, dense_crf, pydensecrf_available

from .inputs import checksum as _checksum, generate

GOLDEN = json.loads((Path(__file__).parent / "vit_pcm_crf.json").read_text())
CASES = GOLDEN["cases"]
TORCH_ATOL = 2e-5
ARGMAX_DISAGREEMENT = 0.001


def _draw(spec: dict) -> np.ndarray:
    x = generate(spec)  # the shared golden-input generator (tests/golden/inputs.py)
    assert _checksum(x) == spec["sha256"], "golden input regenerated differently from the recording"
    return x


def inputs(case: dict) -> tuple[np.ndarray, np.ndarray]:
    """The recorder's image (H, W, 3) uint8 and probabilities (K, H, W) float32."""
    rec = case["inputs"]
    f = rec["derive"]["factor"]
    img = np.kron(_draw(rec["colours"]), np.ones((f, f, 1), np.float32)) * np.float32(200.0) + \
        _draw(rec["noise"]) * np.float32(55.0)
    image = np.clip(np.floor(img), 0, 255).astype(np.uint8)
    scores = np.kron(_draw(rec["scores_coarse"]), np.ones((1, f, f), np.float32)) * np.float32(2.0) + \
        _draw(rec["scores_fine"]) * np.float32(0.5)
    e = np.exp(scores - scores.max(axis=0, keepdims=True))
    probs = (e / e.sum(axis=0, keepdims=True)).astype(np.float32)
    absent = rec["derive"]["absent"]
    if absent:
        probs[absent] = 0.0
        probs = (probs / probs.sum(axis=0, keepdims=True)).astype(np.float32)
    assert _checksum(image) == rec["derive"]["image_sha256"] and _checksum(probs) == rec["derive"]["probs_sha256"]
    return image, probs


def official_q(case: dict) -> np.ndarray:
    out = case["outputs"]
    q = np.frombuffer(base64.b64decode(out["q_float32_le_base64"]), dtype="<f4").reshape(out["q_shape"])
    assert _checksum(q.astype(np.float32)) == out["q_sha256"]
    return q.astype(np.float32)


def _params(case: dict):
    p = CRF_PRESETS[case["params"]["preset"]]
    official = case["params"]
    assert (p.iterations, p.gauss_compat, p.gauss_sxy, p.bilateral_compat, p.bilateral_sxy, p.bilateral_srgb) == \
        (official["iter_max"], official["pos_w"], official["pos_xy_std"], official["bi_w"], official["bi_xy_std"],
         official["bi_rgb_std"])
    return p


def test_recorded_from_the_pinned_commit():
    assert GOLDEN["source"]["repo"] == "deepplants/ViT-PCM" and GOLDEN["source"]["commit"].startswith("1fea66f")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_pydensecrf_backend_matches_official_exactly(case):
    if not pydensecrf_available():
        pytest.skip("optional pydensecrf2 not installed")
    image, probs = inputs(case)
    # the official code runs the CRF on all K maps (absent classes clipped to 1e-5), not only present ones
    ours = dense_crf(image, probs, _params(case), backend="pydensecrf", present_only=False)
    np.testing.assert_array_equal(ours, official_q(case))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_torch_backend_matches_official_within_tolerance(case):
    image, probs = inputs(case)
    ref = official_q(case)
    ours = dense_crf(image, probs, _params(case), backend="torch", present_only=False)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TORCH_ATOL)
    assert (ours.argmax(0) != ref.argmax(0)).mean() <= ARGMAX_DISAGREEMENT


@pytest.mark.parametrize("case", [c for c in CASES if c["name"].startswith("label_merged")], ids=lambda c: c["name"])
def test_present_only_keeps_the_official_labels(case):
    """tagseg's default runs the CRF on present classes only (absent ones stay 0); the official code
    gives them the clipped unary -log(1e-5) and a sliver of mass. The labels agree."""
    image, probs = inputs(case)
    ref = official_q(case)
    ours = dense_crf(image, probs, _params(case), backend="torch")
    absent = case["inputs"]["derive"]["absent"]
    assert np.all(ours[absent] == 0) and np.all(ref[absent] > 0)
    assert (ours.argmax(0) != ref.argmax(0)).mean() <= ARGMAX_DISAGREEMENT
