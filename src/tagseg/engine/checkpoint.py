"""Checkpoints: safetensors weights + a state file, written atomically, one folder per epoch.

Layout: ``<run>/checkpoints/epoch_0003/{model.safetensors,state.pt}``. A folder is written
under a temporary name and renamed when complete, so a crash never leaves a partial
checkpoint that ``--resume`` would pick up. The final model is ``<run>/model.safetensors``
with its class names and config in the safetensors metadata.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file, safe_open
from torch import nn

from tagseg.errors import TagsegError
from tagseg.utils.io import atomic_path

EPOCH_DIR = re.compile(r"^epoch_(\d{4,})$")


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """A contiguous CPU copy of the state dict (safetensors needs unshared, contiguous tensors)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, epoch: int, model: nn.Module, state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``epoch`` (number of finished epochs) atomically; keep the newest ``keep``."""
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"epoch_{epoch:04d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp_epoch_", dir=ckpt_root))
    try:
        save_file(state_tensors(model), str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and EPOCH_DIR.match(p.name)
             and (p / "model.safetensors").is_file() and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(EPOCH_DIR.match(p.name).group(1)))


def ensure_fresh_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to start a new run in a folder that holds checkpoints unless resuming."""
    if not resume and list_checkpoints(run_dir):
        raise TagsegError(f"{run_dir} already holds checkpoints: pass --resume to continue, or choose another --out")


def load_checkpoint(path: Path, model: nn.Module, check: Any = None) -> dict[str, Any]:
    """Read the state (optimizer, epoch, rng, config, ...), run ``check(state)`` if given (before
    any weight is touched), load the weights into ``model``, and return the state."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    if check is not None:
        check(state)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return state


def save_final_model(path: Path, model: nn.Module, metadata: dict[str, Any]) -> None:
    """Write the trained weights with JSON-encoded metadata (class names, config, ...)."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    with atomic_path(path) as tmp:
        save_file(state_tensors(model), str(tmp), metadata=meta)


def read_model_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Weights and metadata of a file written by :func:`save_final_model`."""
    if not path.is_file():
        raise TagsegError(f"model file not found: {path}")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return load_file(str(path)), meta
