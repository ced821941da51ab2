"""Speed options shared by training and inference: precision, channels-last, torch.compile.

``precision`` is ``fp32``, ``bf16`` or ``fp16`` (autocast to that dtype; fp16 training adds a
gradient scaler), or ``auto``: bf16 on a CUDA device, fp32 elsewhere (the behaviour of the
older ``amp`` switch). Channels-last (NHWC) memory helps CNN convolutions on GPUs with tensor
cores; it changes no result beyond rounding. ``torch.compile`` is applied to a wrapper, never
to the module whose weights are saved, so checkpoints keep their plain parameter names.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Optional

import torch
from torch import nn

from tagseg.config import check_speed_options

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device, amp: bool = True, section: str = "train") -> str:
    """The precision a run uses on ``device``: fp32, bf16 or fp16.

    precision: auto | fp32 | bf16 | fp16; amp: the older ``train.amp`` switch (``amp=false``
    keeps meaning fp32 with ``precision=auto``; with an explicit lower precision it is a
    ConfigError naming both keys); section: the config section named in errors.
    """
    check_speed_options(precision, amp, section)
    if precision == "auto":
        return "bf16" if amp and device.type == "cuda" else "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> ContextManager[Any]:
    """Autocast context for a resolved precision on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 (bf16 has fp32's exponent range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def channels_last(model: nn.Module) -> nn.Module:
    """Store the 4-D weights of ``model`` channels-last (in place); returns it."""
    return model.to(memory_format=torch.channels_last)


def batch_channels_last(batch: dict) -> dict:
    """The 4-D floating tensors of a batch (images, views) channels-last; others unchanged."""
    return {k: v.contiguous(memory_format=torch.channels_last)
            if torch.is_tensor(v) and v.dim() == 4 and v.is_floating_point() else v for k, v in batch.items()}


def compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(model)`` when enabled (parameters shared with ``model``), else ``model``."""
    return torch.compile(model) if enabled else model


class InferenceSpeed:
    """Precision, channels-last and compile for an inference model (the inference layer's helper).

    >>> speed = InferenceSpeed("bf16", torch.device("cpu"))
    >>> net = speed.prepare(net)          # eval mode, channels-last / compiled when asked
    >>> with speed.context():             # inference_mode + autocast
    ...     logits = net(speed.input(images)).float()
    """

    def __init__(self, precision: str = "auto", device: Optional[torch.device] = None, *,
                 use_channels_last: bool = False, compile: bool = False, section: str = "pseudo") -> None:
        self.device = device or torch.device("cpu")
        self.precision = resolve_precision(precision, self.device, section=section)
        self.use_channels_last = use_channels_last
        self.compile = compile

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` in eval mode, channels-last when asked; a compiled wrapper when asked."""
        model.eval()
        if self.use_channels_last:
            channels_last(model)
        return compiled(model, self.compile)

    def input(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in the memory format the model expects."""
        return images.contiguous(memory_format=torch.channels_last) if self.use_channels_last else images

    @contextlib.contextmanager
    def context(self):
        """``torch.inference_mode`` plus autocast for the resolved precision."""
        with torch.inference_mode(), autocast(self.precision, self.device):
            yield
