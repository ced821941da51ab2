"""The patch classifier with the add-on modules it can carry (PPC projector, RCA memory bank).

Built only when an add-on that needs a module is switched on; otherwise the patch family builds
the plain :class:`~tagseg.models.patch_classifier.PatchClassifierNet`. Both add-ons act on the
patch features f (B, h, w, F) of the HV-BiLSTM (or the encoder grid without it):

- ``ppc_projector``: 1×1 conv -> ReLU -> L2 normalisation, f -> v (B, P, h, w).
- ``rca_memory``: region memory bank over the K−1 foreground classes (buffers), released after
  the last training epoch (the patch family has no aggregation head, so inference needs nothing
  from it).
"""

from __future__ import annotations

from typing import Optional

from tagseg.addons.ppc import PPCProjector
from tagseg.addons.rca import RCAConfig, RegionMemoryBank
from tagseg.config import ExperimentConfig
from tagseg.models.encoder import PatchEncoder
from tagseg.models.patch_classifier import PatchClassifierNet, build_patch_encoder


class PatchClassifierWithAddons(PatchClassifierNet):
    """:class:`PatchClassifierNet` + ``ppc_projector`` (projector_dim > 0) + ``rca_memory`` (rca given)."""

    def __init__(self, encoder: PatchEncoder, num_classes: int, use_lstm: bool = True, lstm_hidden: int = 192,
                 dropout: float = 0.2, init_std: float = 0.05, projector_dim: int = 0,
                 rca: Optional[RCAConfig] = None, last_epoch: Optional[int] = None) -> None:
        super().__init__(encoder, num_classes, use_lstm=use_lstm, lstm_hidden=lstm_hidden, dropout=dropout,
                         init_std=init_std)
        feat_dim = self.classifier.in_features
        self.ppc_projector = PPCProjector(feat_dim, projector_dim) if projector_dim > 0 else None
        self.rca_memory = (RegionMemoryBank(num_classes - 1, feat_dim, rca.capacity, rca.momentum,
                                            rca.score_threshold) if rca is not None else None)
        self.last_epoch = last_epoch

    def on_epoch_end(self, epoch: int) -> None:
        """Release the RCA memory bank after the last training epoch."""
        if self.rca_memory is not None and self.last_epoch is not None and epoch >= self.last_epoch:
            self.rca_memory.release()


def build_patch_classifier_with_addons(cfg: ExperimentConfig, num_classes: int) -> PatchClassifierWithAddons:
    """The patch classifier of ``cfg`` with the modules of its enabled add-ons."""
    from tagseg.addons.settings import rca_settings

    m, a = cfg.model, cfg.addons
    encoder = build_patch_encoder(m, cfg.data.image_size)
    return PatchClassifierWithAddons(
        encoder, num_classes, use_lstm=m.use_lstm, lstm_hidden=m.lstm_hidden, dropout=m.dropout,
        init_std=m.classifier_init_std, projector_dim=a.ppc.proj_dim if a.ppc.enabled else 0,
        rca=rca_settings(a.rca) if a.rca.enabled else None, last_epoch=cfg.train.epochs - 1)
