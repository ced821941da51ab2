"""``dense_crf``: one call, two backends (PyTorch lattice or the compiled pydensecrf2)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from tagseg.config import CRF_BACKENDS
from tagseg.errors import ConfigError, TagsegError
from tagseg.inference.crf.params import CRFParams
from tagseg.inference.crf.pydensecrf_backend import crf_pydensecrf
from tagseg.inference.crf.torch_backend import crf_torch

__all__ = ["SUM_TOLERANCE", "dense_crf"]

SUM_TOLERANCE = 1e-3  # allowed |sum_k p_k - 1| per pixel


def _check_image(image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise TagsegError(f"image must be a numpy array or torch tensor, got {type(image).__name__}")
    if image.dtype not in (np.uint8, torch.uint8):
        raise TagsegError(f"image must have dtype uint8 (0..255 RGB), got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise TagsegError(f"image must have shape (H, W, 3) (RGB, channels last), got {tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise TagsegError(f"image is empty: shape {tuple(image.shape)}")
    return image


def _check_probs(probs: np.ndarray | torch.Tensor, image_shape: tuple[int, ...]) -> torch.Tensor:
    """Validated probabilities as a float32 torch tensor (K, H, W) on their own device."""
    if isinstance(probs, np.ndarray):
        if not np.issubdtype(probs.dtype, np.floating):
            raise TagsegError(f"probs must be floating point, got dtype {probs.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))
    elif isinstance(probs, torch.Tensor):
        if not probs.is_floating_point():
            raise TagsegError(f"probs must be floating point, got dtype {probs.dtype}")
        tensor = probs.detach().to(torch.float32)
    else:
        raise TagsegError(f"probs must be a numpy array or torch tensor, got {type(probs).__name__}")
    if tensor.ndim != 3 or tensor.shape[0] == 0:
        raise TagsegError(f"probs must have shape (K, H, W) with K >= 1, got {tuple(tensor.shape)}")
    if tuple(tensor.shape[1:]) != tuple(image_shape[:2]):
        raise TagsegError(
            f"probs spatial size {tuple(tensor.shape[1:])} does not match image size {tuple(image_shape[:2])}"
        )
    finite = torch.isfinite(tensor)
    if not finite.all():
        bad = (~finite).nonzero()[0].tolist()
        raise TagsegError(f"probs contain NaN or inf (first at class, row, col = {bad})")
    if (tensor < 0).any():
        raise TagsegError(f"probs contain negative values (min {tensor.min().item():.3g})")
    sums = tensor.sum(0)  # float32 rounding (< 1e-5 here) is far below the tolerance
    err = (sums - 1.0).abs()
    if (err > SUM_TOLERANCE).any():
        row, col = divmod(int(err.argmax()), tensor.shape[2])
        raise TagsegError(
            f"probs must sum to 1 over classes (tolerance {SUM_TOLERANCE}); the sum at pixel "
            f"(row {row}, col {col}) is {float(sums[row, col]):.6f}"
        )
    return tensor


def _selected_classes(
    probs: torch.Tensor, present_only: bool, classes: Sequence[int] | None
) -> list[int]:
    k = probs.shape[0]
    if classes is not None:
        chosen = [int(c) for c in classes]
        if not chosen:
            raise TagsegError("classes is empty: give at least one class index")
        bad = [c for c in chosen if not 0 <= c < k]
        if bad:
            raise TagsegError(f"classes {bad} out of range for probs with {k} classes")
        if len(set(chosen)) != len(chosen):
            raise TagsegError(f"classes contains duplicates: {chosen}")
        return sorted(chosen)
    if not present_only:
        return list(range(k))
    present = (probs.reshape(k, -1).amax(1) > 0).nonzero().flatten().tolist()
    return present


def dense_crf(
    image: np.ndarray | torch.Tensor,
    probs: np.ndarray | torch.Tensor,
    params: CRFParams,
    backend: str = "torch",
    present_only: bool = True,
    device: str | torch.device | None = None,
    classes: Sequence[int] | None = None,
    prob_clip: float = 1e-5,
) -> np.ndarray | torch.Tensor:
    """Refine class probabilities with a fully connected CRF (METHODS.md section 5).

    image: uint8 (H, W, 3) RGB. probs: float (K, H, W), non-negative, summing to 1 over K
    (tolerance ``SUM_TOLERANCE``). Returns refined probabilities float32 (K, H, W): a numpy
    array for numpy ``probs``, a tensor on ``probs.device`` for tensor ``probs``.

    The CRF runs only on the selected classes: ``classes`` if given, else (``present_only``)
    the classes whose probability is > 0 somewhere, else all K; the others stay 0. With a
    single selected class the result is 1 for it everywhere. Unary = -log(max(p, prob_clip)).
    backend: "torch" (this package's lattice, CPU or GPU via ``device``; default: the device
    of ``probs``) or "pydensecrf" (compiled reference, CPU, optional dependency).
    """
    if backend not in CRF_BACKENDS:
        raise ConfigError(f"unknown CRF backend {backend!r}; choose one of {CRF_BACKENDS}")
    if not isinstance(params, CRFParams):
        raise ConfigError(f"params must be a CRFParams, got {type(params).__name__}")
    if not 0 < prob_clip < 1:
        raise ConfigError(f"prob_clip must be in (0, 1), got {prob_clip}")
    image = _check_image(image)
    probs_t = _check_probs(probs, tuple(image.shape))
    selected = _selected_classes(probs_t, present_only, classes)
    if not selected:
        raise TagsegError("no class has a positive probability anywhere")

    k, h, w = probs_t.shape
    sub = probs_t[selected]
    if len(selected) == 1:
        refined = torch.ones(1, h, w, dtype=torch.float32, device=probs_t.device)
    elif backend == "torch":
        dev = torch.device(device) if device is not None else probs_t.device
        image_t = image.to(dev) if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image)).to(dev)
        refined = crf_torch(image_t, sub.to(dev), params, prob_clip=prob_clip).to(probs_t.device)
    else:
        if device is not None and torch.device(device).type != "cpu":
            raise ConfigError(f'the "pydensecrf" backend runs on the CPU only; got device={device!r}')
        image_np = image.cpu().numpy() if isinstance(image, torch.Tensor) else image
        refined = torch.from_numpy(
            crf_pydensecrf(image_np, sub.cpu().numpy(), params, prob_clip=prob_clip)
        ).to(probs_t.device)

    out = torch.zeros(k, h, w, dtype=torch.float32, device=probs_t.device)
    out[selected] = refined
    if isinstance(probs, np.ndarray):
        return out.numpy()
    return out
