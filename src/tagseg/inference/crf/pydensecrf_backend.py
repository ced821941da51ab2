"""Dense CRF through the compiled reference implementation (package ``pydensecrf2``).

The package is optional (``pip install "tagseg[crf]"``) and imported only when this
backend is used.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from tagseg.errors import TagsegError
from tagseg.inference.crf.params import CRFParams

__all__ = ["crf_pydensecrf", "pydensecrf_available"]


def _import_densecrf() -> ModuleType:
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError as exc:
        raise TagsegError(
            'the "pydensecrf" CRF backend needs the optional package pydensecrf2: '
            'pip install "tagseg[crf]" (or pip install pydensecrf2), or use backend="torch"'
        ) from exc
    return densecrf


def pydensecrf_available() -> bool:
    """Whether the compiled reference CRF can be imported."""
    try:
        _import_densecrf()
    except TagsegError:
        return False
    return True


def crf_pydensecrf(
    image: np.ndarray, probs: np.ndarray, params: CRFParams, prob_clip: float = 1e-5
) -> np.ndarray:
    """image uint8 (H, W, 3); probs float32 (K, H, W), K >= 2 -> refined float32 (K, H, W)."""
    densecrf = _import_densecrf()
    k, h, w = probs.shape
    unary = -np.log(np.clip(probs.reshape(k, h * w), prob_clip, None)).astype(np.float32)
    crf = densecrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=float(params.gauss_sxy), compat=float(params.gauss_compat))
    crf.addPairwiseBilateral(
        sxy=float(params.bilateral_sxy),
        srgb=float(params.bilateral_srgb),
        rgbim=np.array(image, dtype=np.uint8, order="C"),  # a writable copy: the binding needs one
        compat=float(params.bilateral_compat),
    )
    q = np.asarray(crf.inference(int(params.iterations)), dtype=np.float32)
    return q.reshape(k, h, w)
