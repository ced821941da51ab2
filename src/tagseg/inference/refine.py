"""Optional dense-CRF refinement of class probabilities (METHODS.md §5), for pseudo-masks and
segmentation predictions alike."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from tagseg.errors import TagsegError


def refine_with_crf(image: np.ndarray, probs: torch.Tensor, backend: str, preset: str = "segmentation",
                    device: Optional[torch.device | str] = None, renormalise: bool = False) -> torch.Tensor:
    """Dense-CRF refinement of probs (K, H, W) for image uint8 (H, W, 3) -> (K, H, W) float32.

    backend: 'torch' (on ``device``, default CPU) or 'pydensecrf'; preset: a name of
    :data:`tagseg.inference.crf.CRF_PRESETS`. ``renormalise`` divides probs by their sum per pixel
    first (bilinear upsampling leaves them off by rounding). TagsegError when the CRF module
    cannot be imported."""
    try:
        from tagseg.inference.crf import dense_crf, get_preset
    except ImportError as exc:
        raise TagsegError(f"crf={backend!r} needs the dense CRF module tagseg.inference.crf, "
                          f"which cannot be imported: {exc}") from exc
    probs = probs.float()
    if renormalise:
        probs = probs / probs.sum(0, keepdim=True).clamp_min(1e-12)
    dev = device if backend == "torch" else None
    return torch.as_tensor(dense_crf(image, probs, get_preset(preset), backend=backend, device=dev))
