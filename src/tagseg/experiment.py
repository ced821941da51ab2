"""Loading an experiment: the plain config (:mod:`tagseg.config`) checked against the model-family and
add-on registries, with every add-on section typed.

``load_experiment`` is what the trainer and the command line use; ``tagseg.config.load_config``
stays the plain loader (dataclasses only, no registry).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tagseg.addons.registry import check_capabilities, registered_addons, resolve_addons
from tagseg.config import ExperimentConfig, check_verb_overrides, config_from_yaml, load_config, validate_config
from tagseg.errors import ConfigError, TagsegError
from tagseg.methods.families import FAMILIES, get_family
from tagseg.utils.run_kind import TAGS, require_run_kind


def validate_experiment(cfg: ExperimentConfig) -> ExperimentConfig:
    """Every start-up check (ConfigError naming the key): the plain ones, the family, the add-on
    sections (unknown keys, ranges) and whether the family offers every capability the switched-on
    add-ons need. Types ``cfg.addons``."""
    validate_config(cfg)
    family = get_family(cfg.model.family)
    resolve_addons(cfg)
    check_capabilities(cfg, family.name, family.capabilities,
                       {name: f.capabilities for name, f in FAMILIES.items()})
    check_patch_sizes(cfg, family.patch_size, family.name)
    family.validate(cfg)
    return cfg


def check_patch_sizes(cfg: ExperimentConfig, patch: int, family: str) -> None:
    """Every size in px that must sit on the patch grid of ``family`` (patch size ``patch`` px):
    the training and inference inputs, L_ET's crop and views, add-on sizes (ConfigError naming the key)."""
    of = f"(the patch size of model.family={family!r})"
    sizes = [("data.image_size", cfg.data.image_size), ("pseudo.image_size", cfg.pseudo.image_size)]
    sizes += [(a.key(name), getattr(cfg.addons[a.name], name))
              for a in registered_addons().values() for name in a.patch_sized]
    for key, size in sizes:
        if size % patch:
            raise ConfigError(f"{key}={size}: must be a multiple of {patch} {of}")
    d, m = cfg.data, cfg.method
    if m.et_weight > 0:
        if d.image_size % (2 * patch):
            raise ConfigError(f"data.image_size={d.image_size}: L_ET needs a multiple of {2 * patch} "
                              f"(view B is S/2 and must stay on the patch grid) {of}")
        if m.et_crop_size % patch or not patch <= m.et_crop_size <= d.image_size:
            raise ConfigError(f"method.et_crop_size={m.et_crop_size}: must be a multiple of {patch} "
                              f"between {patch} and data.image_size={d.image_size} {of}")


def load_experiment(name_or_path: str | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Defaults <- YAML (a shipped name or a path) <- ``key=value`` overrides, validated."""
    return validate_experiment(load_config(name_or_path, overrides))


def experiment_from_yaml(text: str) -> ExperimentConfig:
    """A run's ``config.yaml`` (or a model file's config) back into a validated experiment."""
    return validate_experiment(config_from_yaml(text))


def load_run_experiment(run: Path, overrides: Sequence[str], verb: str, action: str = "use") -> ExperimentConfig:
    """The configuration of a finished tag-classifier run with the overrides ``verb`` applies
    (any other key is refused, naming it and the verb), validated as training validates it.
    ``action``: what the verb does with the run, for the error when the folder holds another kind."""
    check_verb_overrides(verb, overrides)
    cfg_path = Path(run) / "config.yaml"
    if not cfg_path.is_file():
        raise TagsegError(f"{run} is not a tagseg run folder (no config.yaml)")
    require_run_kind(Path(run), TAGS, action)
    return load_experiment(str(cfg_path), overrides)
