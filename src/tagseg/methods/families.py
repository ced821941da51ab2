"""The model-family registry: the trainer, the pseudo-mask generator and the CLI work with any
registered :class:`~tagseg.methods.family.Family` (built in: 'patch', 'cam' and 'seam')."""

from __future__ import annotations

from tagseg.errors import ConfigError, TagsegError
from tagseg.methods.cam_objective import CAM_FAMILY
from tagseg.methods.family import Family
from tagseg.methods.objective import PATCH_FAMILY
from tagseg.methods.seam_objective import SEAM_FAMILY

FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"model.family={name!r}: choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_for_format(fmt: str | None) -> Family:
    for fam in FAMILIES.values():
        if fam.format == fmt:
            return fam
    raise TagsegError(f"not a tagseg model file (format={fmt!r}; known: {[f.format for f in FAMILIES.values()]})")


register_family(PATCH_FAMILY)
register_family(CAM_FAMILY)
register_family(SEAM_FAMILY)
