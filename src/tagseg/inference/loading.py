"""Rebuilding a trained tag classifier (any family) from its model file."""

from __future__ import annotations

from pathlib import Path

import torch

from tagseg.config import ExperimentConfig, config_from_yaml
from tagseg.errors import TagsegError
from tagseg.models.patch_classifier import PatchClassifierNet
from tagseg.engine.checkpoint import model_classes, read_model_file, read_safetensors_metadata


def load_trained_model(path: str | Path, device: torch.device | str = "cpu"
                       ) -> tuple[torch.nn.Module, ExperimentConfig, dict]:
    """Rebuild a trained network of any family from ``model.safetensors`` (weights + metadata),
    in eval mode. Returns (model, its training config, info with 'class_names', 'palette' and
    'family')."""
    from tagseg.methods.families import family_for_format

    weights, meta = read_model_file(Path(path))
    family = family_for_format(meta.get("format"))
    names, palette = model_classes(Path(path), meta)
    if "config" not in meta:
        raise TagsegError(f"{path}: the model metadata has no 'config'")
    cfg = config_from_yaml(meta["config"], source=f"{path} (metadata 'config')")
    info = {"class_names": names, "palette": palette, "family": family.name}
    cfg.model.weights, cfg.model.pretrained = None, False  # the file holds every weight
    model = family.build(cfg, len(info["class_names"]))
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise TagsegError(f"{path}: weights do not match the model its metadata describes: {exc}") from exc
    return model.to(device).eval(), cfg, info


def model_family(path: str | Path) -> str:
    """The family name of a model file ('patch', 'cam', 'seam', ...) from its metadata alone, without
    reading the weights; TagsegError naming the file if it is missing or not a tagseg model file."""
    from tagseg.methods.families import family_for_format

    path = Path(path)
    if not path.is_file():
        raise TagsegError(f"model file not found: {path}")
    return family_for_format(read_safetensors_metadata(path).get("format")).name


def load_patch_classifier(path: str | Path, device: torch.device | str = "cpu"
                          ) -> tuple[PatchClassifierNet, ExperimentConfig, dict]:
    """:func:`load_trained_model` for a file that must hold a patch classifier."""
    model, cfg, info = load_trained_model(path, device)
    if not isinstance(model, PatchClassifierNet):
        raise TagsegError(f"{path} holds a {info['family']!r} model, not a patch classifier")
    return model, cfg, info
