"""The patch-classifier network of ViT-PCM / TKP-PCL (METHODS.md §1).

Add-on modules live in the container ``addons`` (:mod:`tagseg.models.addon_slots`); this network
does not run them in its forward pass (the add-ons call them on the features it returns).

encoder (B, D, h, w) -> HV-BiLSTM (B, h, w, 4·hidden) = features f -> dropout -> linear
(no bias, N(0, 0.05²) init) -> logits A (B, h, w, K); Z = softmax over K per patch.
Pooling and losses live in ``tagseg.methods``; this module only computes patch scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from tagseg.config import ModelConfig
from tagseg.models.addon_slots import addon_container, end_epoch
from tagseg.models.encoder import PATCH_STRIDE, PatchEncoder
from tagseg.models.hv_bilstm import HVBiLSTM


@dataclass
class PatchOutput:
    """logits (B, h, w, K); features (B, h, w, F): the patch features f used by PCE;
    grid (B, h, w, D): the encoder output the head ran on."""

    logits: torch.Tensor
    features: torch.Tensor
    grid: Optional[torch.Tensor] = None

    @property
    def probs(self) -> torch.Tensor:
        """Z: softmax over classes, float32, (B, h, w, K)."""
        return self.logits.float().softmax(dim=-1)


class PatchClassifierNet(nn.Module):
    def __init__(self, encoder: PatchEncoder, num_classes: int, use_lstm: bool = True,
                 lstm_hidden: int = 192, dropout: float = 0.2, init_std: float = 0.05,
                 lstm_input_dropout: float = 0.2, lstm_init: str = "keras",
                 lstm_dropout_masks: str = "per_step") -> None:
        super().__init__()
        self.encoder = encoder
        self.num_classes = num_classes
        if use_lstm:
            self.conditioning: nn.Module = HVBiLSTM(encoder.out_channels, lstm_hidden, dropout, lstm_input_dropout,
                                                         init=lstm_init, dropout_masks=lstm_dropout_masks)
            feat_dim = self.conditioning.out_dim
        else:
            self.conditioning = nn.Identity()
            feat_dim = encoder.out_channels
        self.classifier_dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(feat_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, mean=0.0, std=init_std)
        self.addons = addon_container()

    def forward(self, images: torch.Tensor) -> PatchOutput:
        """images (B, 3, H, W) in [0, 1] -> PatchOutput with an (H/p)×(W/p) grid (p: the patch size)."""
        return self.head(self.encoder(images).permute(0, 2, 3, 1))

    def head(self, grid: torch.Tensor) -> PatchOutput:
        """Everything after the encoder: grid (B, h, w, D) -> PatchOutput."""
        features = self.conditioning(grid)
        logits = self.classifier(self.classifier_dropout(features))
        return PatchOutput(logits=logits, features=features, grid=grid)

    def encoder_is_frozen(self) -> bool:
        """True when the encoder neither trains nor changes between train and eval mode
        (no trainable parameter, every leaf module and every BatchNorm layer -- timm's BatchNormAct2d
        has children -- in eval mode), so its output can be reused."""
        return not any(p.requires_grad for p in self.encoder.parameters()) and \
            not any(m.training for m in self.encoder.modules()
                    if next(m.children(), None) is None or isinstance(m, nn.modules.batchnorm._BatchNorm))

    def head_parameters(self) -> list[nn.Parameter]:
        """Everything but the encoder (trained from the first epoch)."""
        return [p for n, p in self.named_parameters() if not n.startswith("encoder.")]

    def on_epoch_end(self, epoch: int) -> None:
        """Run the end-of-epoch hooks of the add-on modules."""
        end_epoch(self.addons, epoch)


def build_patch_encoder(cfg: ModelConfig, image_size: int) -> PatchEncoder:
    """The patch encoder of the model config (every patch-family network builds it here)."""
    return PatchEncoder(cfg.encoder, weights=cfg.weights, pretrained=cfg.pretrained, image_size=image_size,
                        output_stride=PATCH_STRIDE if cfg.cnn_grid == "dilated" else None, vit_dropout=cfg.vit_dropout,
                        cnn_features=cfg.cnn_features)


def build_patch_classifier(cfg: ModelConfig, num_classes: int, image_size: int) -> PatchClassifierNet:
    """Build the network from its config section."""
    encoder = build_patch_encoder(cfg, image_size)
    return PatchClassifierNet(encoder, num_classes, use_lstm=cfg.use_lstm, lstm_hidden=cfg.lstm_hidden,
                              dropout=cfg.dropout, init_std=cfg.classifier_init_std,
                              lstm_input_dropout=cfg.lstm_input_dropout, lstm_init=cfg.lstm_init,
                              lstm_dropout_masks=cfg.lstm_dropout_masks)
