"""Affinity labels from seeds: which pixel pairs are confidently the same region (background
or foreground) and which are confidently different.

Seeds come as foreground scores (C, H, W) for the image's present classes (CAM scores scaled to
[0, 1], or patch-classifier class probabilities) and ``keys`` (C,), their class ids (background
= 0 is not among them). Two confidence maps are made from them, one permissive about the
background and one strict, each cleaned by a dense CRF; pixels on which they disagree are
ignored (255).

- IRN (``step/cam_to_ir_label.py``): background = a constant score, 0.30 (confident foreground)
  and 0.05 (confident background), argmax, then a CRF whose unary is the argmax label with
  probability 0.7 (:data:`IRN_LABEL_CRF`).
- PSA (``infer_cls.py``): background = (1 - max_c score)^α with a low α = 4 (confident
  foreground) and a high α = 32 (confident background), CRF on the scores
  (:data:`PSA_SCORE_CRF`, the project's "cam" preset), argmax.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from tagseg.config import SEED_CRF_MODES
from tagseg.errors import ConfigError
from tagseg.inference.crf import CRFParams, dense_crf

IGNORE = 255

# IRN misc/imutils.crf_inference_label: Gaussian sxy 3 compat 3, bilateral sxy 50 srgb 5
# compat 10, 10 iterations.
IRN_LABEL_CRF = CRFParams(3, 3, 50, 5, 10, 10)
# PSA tool/imutils.crf_inference: Gaussian sxy 3 compat 3, bilateral sxy 80 srgb 13 compat 10,
# 10 iterations.
PSA_SCORE_CRF = CRFParams(3, 3, 80, 13, 10, 10)

# (K, H, W) probabilities, image -> (K, H, W) refined probabilities
CRFFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _check_scores(scores: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float32)
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if scores.ndim != 3 or scores.shape[0] != keys.shape[0]:
        raise ConfigError(f"seed scores must be (C, H, W) with one key per class, got "
                          f"{scores.shape} and {keys.shape[0]} keys")
    if np.any(keys <= 0) or np.any(keys >= IGNORE):
        raise ConfigError(f"seed keys must be foreground class ids in 1..254, got {keys.tolist()}")
    return scores, keys


def label_unary_probs(labels: np.ndarray, n_labels: int, gt_prob: float = 0.7) -> np.ndarray:
    """(n_labels, H, W) float32 probabilities that put ``gt_prob`` on each pixel's label and
    share the rest equally (pydensecrf ``unary_from_labels`` with zero_unsure=False)."""
    if n_labels < 2:
        raise ConfigError(f"a label unary needs at least 2 labels, got {n_labels}")
    probs = np.full((n_labels,) + labels.shape, (1.0 - gt_prob) / (n_labels - 1), dtype=np.float32)
    np.put_along_axis(probs, labels[None].astype(np.int64), np.float32(gt_prob), axis=0)
    return probs


def _default_crf(params: CRFParams, backend: str) -> CRFFn:
    """The project's dense CRF. Scores are divided by their per-pixel sum first: PSA feeds the
    raw [background, scores] to the CRF, and a per-pixel constant added to every label's unary
    (-log of the sum) leaves mean-field inference unchanged (up to the 1e-5 clip)."""
    def run(image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        probs = probs / np.maximum(probs.sum(0, keepdims=True), 1e-12)
        return np.asarray(dense_crf(image, probs.astype(np.float32), params, backend=backend, present_only=False))
    return run


def irn_label_crf(image: np.ndarray, labels: np.ndarray, n_labels: int, gt_prob: float = 0.7,
                  crf: Optional[CRFFn] = None, backend: str = "torch") -> np.ndarray:
    """IRN's label-unary CRF: int64 (H, W) labels in [0, n_labels) -> refined labels (H, W)."""
    if n_labels == 1:
        return np.zeros_like(labels, dtype=np.int64)
    run = crf or _default_crf(IRN_LABEL_CRF, backend)
    return np.argmax(run(image, label_unary_probs(labels, n_labels, gt_prob)), axis=0)


def combine_confident(fg_conf: np.ndarray, bg_conf: np.ndarray) -> np.ndarray:
    """uint8 label map from the permissive-foreground map ``fg_conf`` and the strict-background
    map ``bg_conf`` (class ids, 0 = background): foreground where ``fg_conf`` says so,
    background where both say background, 255 elsewhere."""
    out = fg_conf.astype(np.int64).copy()
    out[fg_conf == 0] = IGNORE
    out[(fg_conf == 0) & (bg_conf == 0)] = 0
    return out.astype(np.uint8)


def irn_seed_labels(image: np.ndarray, scores: np.ndarray, keys: np.ndarray, fg_thres: float = 0.30,
                    bg_thres: float = 0.05, crf: Optional[CRFFn] = None, backend: str = "torch",
                    gt_prob: float = 0.7) -> np.ndarray:
    """IRN's inter-pixel relation labels: uint8 (H, W) class ids, 0 background, 255 unsure.

    image: uint8 (H, W, 3); scores: (C, H, W) foreground scores of the present classes;
    keys: (C,) their class ids."""
    scores, keys = _check_scores(scores, keys)
    all_keys = np.concatenate([[0], keys])
    maps = []
    for thres in (fg_thres, bg_thres):
        padded = np.concatenate([np.full((1,) + scores.shape[1:], thres, np.float32), scores], 0)
        pred = irn_label_crf(image, np.argmax(padded, axis=0), len(all_keys), gt_prob, crf, backend)
        maps.append(all_keys[pred])
    return combine_confident(*maps)


def psa_background(scores: np.ndarray, alpha: float) -> np.ndarray:
    """PSA's background score (1, H, W) = (1 - max_c scores)^alpha."""
    return np.power(1.0 - np.max(scores, axis=0, keepdims=True), alpha).astype(np.float32)


def psa_seed_labels(image: np.ndarray, scores: np.ndarray, keys: np.ndarray, low_alpha: float = 4,
                    high_alpha: float = 32, crf: Optional[CRFFn] = None, backend: str = "torch",
                    seed_crf: str = "score", gt_prob: float = 0.7) -> np.ndarray:
    """AffinityNet's training labels: uint8 (H, W), from a low-α (confident foreground) and a
    high-α (confident background) CRF: the low-α class where it is foreground, background where
    the high-α map says background, 255 elsewhere and where no score is above 1e-5.

    As PSA (``infer_cls.py`` + ``voc12/data.py``), the CRF runs on the un-normalised
    concatenation [background, scores]. ``seed_crf='label'`` is the SEAM-family variant (usr922/wseg
    ``aff_prepare.py``): the argmax of [background, scores] through a label-unary CRF (PSA's
    kernel parameters, ``gt_prob``); the image's absent classes are left out of that CRF."""
    scores, keys = _check_scores(scores, keys)
    if seed_crf not in SEED_CRF_MODES:
        raise ConfigError(f"seed_crf={seed_crf!r}: choose score or label")
    all_keys = np.concatenate([[0], keys])
    run = crf or _default_crf(PSA_SCORE_CRF, backend)
    maps, no_score = [], None
    for alpha in (low_alpha, high_alpha):
        bg_scores = np.concatenate([psa_background(scores, alpha), scores], 0)
        if len(all_keys) == 1:
            refined = np.ones_like(bg_scores)
        elif seed_crf == "label":
            refined = run(image, label_unary_probs(np.argmax(bg_scores, 0), len(all_keys), gt_prob))
        else:
            refined = run(image, bg_scores)
        maps.append(all_keys[np.argmax(refined, axis=0)])
        top = np.max(refined, axis=0) < 1e-5
        no_score = top if no_score is None else (no_score & top)
    low, high = maps
    out = low.astype(np.int64).copy()          # PSA: high-α background overrides, unlike IRN
    out[low == 0] = IGNORE
    out[high == 0] = 0
    out[no_score] = IGNORE
    return out.astype(np.uint8)


def pair_labels(labels: np.ndarray | torch.Tensor, src: np.ndarray | torch.Tensor,
                dst: np.ndarray | torch.Tensor, ignore_index: int = IGNORE
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affinity labels of pairs on a label map (H, W) (class ids, ``ignore_index`` = unsure).

    src, dst: flat pixel indices of the pair ends, any equal shapes (IRN: src (S,) broadcast
    against dst (P, S)). Returns float32 (bg_pos, fg_pos, neg) of the broadcast shape: both ends
    background; both the same foreground class; both known and different. A pair with an unsure
    end is in none of them (IRN ``GetAffinityLabelFromIndices``, PSA
    ``ExtractAffinityLabelInRadius``)."""
    flat = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).reshape(-1)
    flat = flat.long()
    a = flat[torch.as_tensor(src, dtype=torch.long)]
    b = flat[torch.as_tensor(dst, dtype=torch.long)]
    a, b = torch.broadcast_tensors(a, b)
    valid = (a != ignore_index) & (b != ignore_index)
    same = (a == b) & valid
    bg_pos = (same & (a == 0)).float()
    fg_pos = (same & (a != 0)).float()
    neg = ((a != b) & valid).float()
    return bg_pos, fg_pos, neg
