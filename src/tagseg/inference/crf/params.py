"""Dense CRF parameter sets (METHODS.md section 5)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tagseg.errors import ConfigError


@dataclass(frozen=True)
class CRFParams:
    """Fully connected CRF parameters, in the conventions of pydensecrf.

    gauss_sxy: spatial standard deviation of the smoothness (Gaussian) kernel, in pixels.
    gauss_compat: Potts weight of the Gaussian kernel.
    bilateral_sxy: spatial standard deviation of the appearance kernel, in pixels.
    bilateral_srgb: colour standard deviation of the appearance kernel, in 0..255 RGB units.
    bilateral_compat: Potts weight of the bilateral kernel.
    iterations: number of mean-field iterations.
    """

    gauss_sxy: float
    gauss_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float
    iterations: int

    def __post_init__(self) -> None:
        for name in ("gauss_sxy", "bilateral_sxy", "bilateral_srgb"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"CRFParams.{name} must be a finite number > 0, got {value!r}")
        for name in ("gauss_compat", "bilateral_compat"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"CRFParams.{name} must be a finite number, got {value!r}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 0:
            raise ConfigError(f"CRFParams.iterations must be an integer >= 0, got {self.iterations!r}")


CRF_PRESETS: dict[str, CRFParams] = {
    # patch-classifier pseudo-masks (ViT-PCM / TKP-PCL)
    "patch": CRFParams(1, 3, 67, 3, 4, 10),
    # CAM pseudo-masks
    "cam": CRFParams(3, 3, 80, 13, 10, 10),
    # segmentation-network outputs
    "segmentation": CRFParams(3, 3, 32, 13, 10, 1),
}


def get_preset(name: str) -> CRFParams:
    """The named parameter set; ConfigError listing the known names otherwise."""
    try:
        return CRF_PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown CRF preset {name!r}; known presets: {sorted(CRF_PRESETS)}") from None
