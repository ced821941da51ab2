"""Patch encoder: any timm ViT, or a timm CNN cut at stride 16 (METHODS.md §1, "Network").

Input: images (B, 3, H, W) in [0, 1] (the encoder applies its own mean/std normalisation).
Output: a patch grid (B, D, H/16, W/16). For ViTs the grid is the final-norm output with the
prefix tokens ([cls], registers) dropped, and the position embeddings are resampled (bicubic)
whenever the token grid differs from the pretraining grid. For CNNs the grid is the last
feature map at reduction 16; later stages are removed.

With ``output_stride`` given (16 or 8), a CNN is instead built with timm's ``output_stride``
argument: its last stages are dilated and the grid is the deepest feature map, at that stride.
At 16, a CNN without that argument, or a ViT, falls back to the plain grid above; 8 needs it.
With ``cnn_features='head'`` that dilated CNN also keeps its feature head, the layers timm runs
after the last block (``forward_features``: EfficientNet's 1×1 ``conv_head`` + BatchNorm +
activation; nothing for a ResNet). EfficientNet's last block ends in a linear BatchNorm, so
without the head the batch mean of every output channel is pinned to that BatchNorm's bias
whenever its statistics are in train mode.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from tagseg.config import CNN_FEATURES, PATCH_SIZE
from tagseg.errors import ConfigError

PATCH_STRIDE = PATCH_SIZE


def _create_dilated(name: str, weights: str | None, pretrained: bool, output_stride: int) -> nn.Module | None:
    """A CNN with its last stages dilated to ``output_stride``; None if timm's builder lacks the argument."""
    from tagseg.models.factory import build_timm_model

    try:
        return build_timm_model(name, weights=weights, pretrained=pretrained, num_classes=0,
                                output_stride=output_stride)
    except (TypeError, AssertionError):  # no output_stride argument, or timm refuses the value (VGG: 32 only)
        if output_stride != PATCH_STRIDE:
            raise ConfigError(f"encoder {name} has no dilated variant (timm output_stride={output_stride}); "
                              "use a CNN such as a ResNet or an EfficientNet, or output stride 16") from None
        return None


def _create_backbone(name: str, weights: str | None, pretrained: bool, image_size: int,
                     vit_dropout: float = 0.0) -> nn.Module:
    from tagseg.models.factory import build_timm_model

    try:  # ViT-style models: resample position embeddings for any input size at run time; dropout
        # after the attention projection and in the MLP (timm proj_drop_rate), as the original ViT
        return build_timm_model(name, weights=weights, pretrained=pretrained, num_classes=0,
                                img_size=image_size, dynamic_img_size=True, proj_drop_rate=vit_dropout)
    except TypeError:
        return build_timm_model(name, weights=weights, pretrained=pretrained, num_classes=0)


class PatchEncoder(nn.Module):
    """A timm backbone that returns a stride-16 patch grid (B, D, h, w).

    ``output_stride`` (16 or 8): a dilated CNN whose deepest map is the grid, (B, D, H/s, W/s);
    ``self.dilated`` says whether that happened (see the module docstring).
    """

    def __init__(self, name: str, weights: str | None = None, pretrained: bool = False,
                 image_size: int = 384, output_stride: int | None = None, vit_dropout: float = 0.0,
                 cnn_features: str = "last_block") -> None:
        super().__init__()
        if output_stride not in (None, 8, PATCH_STRIDE):
            raise ConfigError(f"output stride {output_stride}: choose 16 or 8")
        if cnn_features not in CNN_FEATURES:
            raise ConfigError(f"cnn_features={cnn_features!r}: choose one of {CNN_FEATURES}")
        self.name = name
        self.output_stride = output_stride or PATCH_STRIDE
        dilated = _create_dilated(name, weights, pretrained, output_stride) if output_stride else None
        self.dilated = dilated is not None
        if self.dilated:
            self.backbone = dilated
            info = self.backbone.feature_info
            self.feature_index = len(info) - 1
            if info[self.feature_index]["reduction"] != output_stride:
                raise ConfigError(f"encoder {name}: deepest feature map has stride "
                                  f"{info[self.feature_index]['reduction']}, not {output_stride}")
            self.out_channels = info[self.feature_index]["num_chs"]
            self.with_head = cnn_features == "head"
            if self.with_head:  # built with num_classes=0: no classifier; timm's pruning would drop the head
                self.out_channels = self.backbone.num_features
            else:
                self.backbone.prune_intermediate_layers([self.feature_index], prune_norm=True, prune_head=True)
            self.is_vit = False
        else:
            self.with_head = False
            self.backbone = _create_backbone(name, weights, pretrained, image_size, vit_dropout)
            self.is_vit = hasattr(self.backbone, "patch_embed") and hasattr(self.backbone, "blocks")
            self._select_grid(name)
        mean, std = self._normalization(weights)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def _select_grid(self, name: str) -> None:
        """The stride-16 grid of a ViT (final-norm tokens) or of a CNN (later stages removed)."""
        if self.is_vit:
            patch = self.backbone.patch_embed.patch_size
            patch = patch[0] if isinstance(patch, (tuple, list)) else patch
            if patch != PATCH_STRIDE:
                raise ConfigError(f"encoder {name} has patch size {patch}; tagseg needs {PATCH_STRIDE}")
            self.feature_index = len(self.backbone.blocks) - 1
            self.backbone.prune_intermediate_layers([self.feature_index], prune_norm=False, prune_head=True)
            self.out_channels = self.backbone.embed_dim
        else:
            info = self.backbone.feature_info
            stride16 = [i for i, f in enumerate(info) if f["reduction"] == PATCH_STRIDE]
            if not stride16:
                raise ConfigError(f"encoder {name} has no feature map at stride {PATCH_STRIDE} "
                                  f"(reductions: {[f['reduction'] for f in info]})")
            self.feature_index = stride16[-1]
            self.out_channels = info[self.feature_index]["num_chs"]
            self.backbone.prune_intermediate_layers([self.feature_index], prune_norm=True, prune_head=True)

    def _normalization(self, weights: str | None) -> tuple[Sequence[float], Sequence[float]]:
        if weights == "lite":
            from tagseg.models.lite import lite_normalization

            return lite_normalization(self.name)
        cfg = getattr(self.backbone, "pretrained_cfg", {}) or {}
        return cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1], H and W multiples of 16 -> (B, D, H/s, W/s), s = output stride."""
        if images.shape[-1] % PATCH_STRIDE or images.shape[-2] % PATCH_STRIDE:
            raise ValueError(f"input size {tuple(images.shape[-2:])} is not a multiple of {PATCH_STRIDE}")
        x = (images - self.mean) / self.std
        if self.with_head:
            return self.backbone.forward_features(x)
        kwargs = {"norm": True} if self.is_vit else {}
        return self.backbone.forward_intermediates(x, indices=[self.feature_index],
                                                   intermediates_only=True, **kwargs)[0]

    def block_groups(self) -> list[nn.Module]:
        """Encoder blocks in input-to-output order (the unit of progressive unfreezing)."""
        b = self.backbone
        if hasattr(b, "blocks"):
            return list(b.blocks)
        if hasattr(b, "stages"):
            return list(b.stages)
        layers = [getattr(b, f"layer{i}") for i in range(1, 5) if isinstance(getattr(b, f"layer{i}", None), nn.Module)]
        if layers:
            return layers
        return [b]

    def final_norm(self) -> list[nn.Module]:
        """Modules after the last block that shape the output (ViT final norm; a CNN's feature head
        with ``cnn_features='head'``)."""
        if self.with_head:
            return [m for m in (getattr(self.backbone, "conv_head", None), getattr(self.backbone, "bn2", None))
                    if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]
        norm = getattr(self.backbone, "norm", None) if self.is_vit else None
        return [norm] if isinstance(norm, nn.Module) else []
