"""Dense (fully connected) CRF refinement with two interchangeable backends.

``dense_crf(image, probs, CRF_PRESETS["patch"])`` runs the PyTorch backend (CPU or GPU);
``backend="pydensecrf"`` runs the compiled reference (optional dependency pydensecrf2).
"""

from tagseg.inference.crf.dense import SUM_TOLERANCE, dense_crf
from tagseg.inference.crf.params import CRF_PRESETS, CRFParams, get_preset
from tagseg.inference.crf.permutohedral import PermutohedralLattice
from tagseg.inference.crf.pydensecrf_backend import pydensecrf_available

__all__ = [
    "CRF_PRESETS",
    "CRFParams",
    "PermutohedralLattice",
    "SUM_TOLERANCE",
    "dense_crf",
    "get_preset",
    "pydensecrf_available",
]
