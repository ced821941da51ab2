"""Experiment-config sections of the add-ons -> the parameter objects of the add-on modules."""

from __future__ import annotations

from tagseg.addons.hfpl import HFPLConfig
from tagseg.addons.ppc import PPCConfig
from tagseg.addons.rca import RCAConfig
from tagseg.config import HFPLAddonConfig, PPCAddonConfig, RCAAddonConfig


def ppc_settings(c: PPCAddonConfig) -> PPCConfig:
    """``addons.ppc`` -> :class:`PPCConfig` (the on/off key is not part of it)."""
    return PPCConfig(proj_dim=c.proj_dim, view2_size=c.view2_size, bg_score=c.bg_score, top_k=c.top_k,
                     temperature=c.temperature, cross_weight=c.cross_weight, intra_weight=c.intra_weight,
                     hard_negative_fraction=c.hard_negative_fraction,
                     negative_keep_fraction=c.negative_keep_fraction, negative_selection=c.negative_selection,
                     hard_pixel_fraction=c.hard_pixel_fraction, max_pixels_per_class=c.max_pixels_per_class)


def hfpl_settings(c: HFPLAddonConfig) -> HFPLConfig:
    """``addons.hfpl`` -> :class:`HFPLConfig`."""
    return HFPLConfig(lam=c.lam, n_samples=c.n_samples, sigma=c.sigma, mu=c.mu, fsl_weight=c.fsl_weight,
                      block=c.block, window=c.window)


def rca_settings(c: RCAAddonConfig) -> RCAConfig:
    """``addons.rca`` -> :class:`RCAConfig`."""
    return RCAConfig(capacity=c.capacity, momentum=c.momentum, score_threshold=c.score_threshold,
                     temperature=c.temperature, mixup_alpha=c.mixup_alpha,
                     prototypes_per_class=c.prototypes_per_class, kmeans_iters=c.kmeans_iters,
                     aux_weight=c.aux_weight, contrast_weight=c.contrast_weight,
                     contrast_start_epoch=c.contrast_start_epoch)
