"""Checkpoints: two safetensors files per epoch, written atomically, never a pickle.

Layout: ``<run>/checkpoints/epoch_0003/{model.safetensors,state.safetensors}``. A folder is
written under a temporary name and renamed when complete, so a crash never leaves a partial
checkpoint that ``--resume`` would pick up. The final model is ``<run>/model.safetensors``
with its class names and config in the safetensors metadata.

Why safetensors + JSON for the training state (optimizer, epoch, step, RNG states, config):
a checkpoint folder may come from a stranger, and unpickling runs code. ``state.safetensors``
holds every tensor of the state (Adam moments, the torch RNG state, ...) as plain tensors
named ``t0, t1, ...``, and its metadata key ``state`` holds the rest of the structure as JSON,
each tensor replaced by ``{"$t": "t0"}`` (tuples: ``{"$tuple": [...]}``, dicts with
non-string keys such as the optimizer's parameter ids: ``{"$dict": [[key, value], ...]}``).
Reading it runs no code, and the Python/numpy RNG states round-trip exactly (JSON floats use
their shortest exact repr), so a resumed run is bit-identical to an uninterrupted one. Unlike
``torch.save`` (whose zip holds a random serialization id), the bytes are reproducible too:
every safetensors file tagseg writes has its JSON header re-serialised with sorted keys.

A folder holding the ``state.pt`` pickle of earlier tagseg versions is refused without being
opened. ``--resume`` uses :func:`load_latest_checkpoint`: an unreadable newest checkpoint
(truncated, corrupt, old format) falls back to the previous one with a warning on stderr.
No checkpoint or final model is ever written from non-finite weights.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from torch import nn

from tagseg.errors import OutputError, TagsegError, TrainingError
from tagseg.utils.io import atomic_path, umask_mode

EPOCH_DIR = re.compile(r"^epoch_(\d{4,})$")
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
LEGACY_STATE_FILE = "state.pt"  # pickle of tagseg < this format; refused, never opened
STATE_FORMAT = "tagseg.checkpoint_state/1"
MAX_HEADER_BYTES = 100 * 2**20  # the safetensors library's own limit


class CheckpointReadError(TagsegError):
    """One checkpoint folder cannot be used (missing, truncated, corrupt or old-format file)."""


# ----------------------------------------------------------------------------- safetensors bytes

def _canonical_header(data: bytes) -> tuple[bytes, int]:
    """(length prefix + sorted-key JSON header, offset of the tensor bytes in ``data``)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, 8 + n


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header written with sorted keys (the library
    writes the metadata in hash order, which differs between processes). Tensor bytes and
    offsets are unchanged; the header is space-padded to a multiple of 8 bytes."""
    head, start = _canonical_header(data)
    return head + data[start:]


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: Optional[dict[str, str]] = None
                      ) -> None:
    """Write ``tensors`` (+ string ``metadata``) atomically with reproducible bytes."""
    data = save_bytes(tensors, metadata=metadata)
    head, start = _canonical_header(data)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(head)
            fh.write(memoryview(data)[start:])


def _read_header_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's JSON header (ValueError / OSError if unusable)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if size < 8 or n > min(size - 8, MAX_HEADER_BYTES):
            raise ValueError(f"header length {n} does not fit the file size {size} (truncated file?)")
        header = json.loads(fh.read(n))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError("the metadata is not a string -> string map")
    return dict(meta)


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file without reading its tensors (the header only);
    CheckpointReadError naming the file if it is missing or not a safetensors file."""
    if not path.is_file():
        raise CheckpointReadError(f"{path} not found")
    try:
        return _read_header_metadata(path)
    except Exception as exc:  # any parser failure means the file is unusable
        raise CheckpointReadError(f"cannot read {path}: {str(exc)[:300]}") from exc


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; CheckpointReadError naming the file if it is
    missing, truncated or not a safetensors file."""
    if not path.is_file():
        raise CheckpointReadError(f"{path} not found")
    try:
        meta = _read_header_metadata(path)
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # any parser failure means the file is unusable
        raise CheckpointReadError(f"cannot read {path}: {str(exc)[:300]}") from exc
    return tensors, meta


# ----------------------------------------------------------------------------- state <-> JSON

def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous().clone()
        return {"$t": name}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"$dict": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"checkpoint state cannot hold a {type(obj).__name__}")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1 and "$t" in obj:
        name = obj["$t"]
        if not isinstance(name, str) or name not in tensors:
            raise ValueError(f"reference to a missing tensor {name!r}")
        return tensors[name]
    if len(obj) == 1 and "$tuple" in obj and isinstance(obj["$tuple"], list):
        return tuple(_decode(v, tensors) for v in obj["$tuple"])
    if len(obj) == 1 and "$dict" in obj and isinstance(obj["$dict"], list):
        out = {}
        for pair in obj["$dict"]:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ValueError("malformed $dict entry")
            key = _decode(pair[0], tensors)
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise ValueError(f"unsupported dict key type {type(key).__name__}")
            out[key] = _decode(pair[1], tensors)
        return out
    if any(k.startswith("$") for k in obj):
        raise ValueError(f"unknown tag in {sorted(obj)[:3]}")
    return {k: _decode(v, tensors) for k, v in obj.items()}


def encode_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split a training state into safetensors tensors and metadata (format + JSON structure)."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, tensors)
    return tensors, {"format": STATE_FORMAT, "state": json.dumps(structure, separators=(",", ":"))}


def decode_state(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Any:
    """Inverse of :func:`encode_state` (ValueError on anything it did not write)."""
    if metadata.get("format") != STATE_FORMAT:
        raise ValueError(f"not a tagseg checkpoint state (format={metadata.get('format')!r})")
    return _decode(json.loads(metadata["state"]), tensors)


# ----------------------------------------------------------------------------- RNG states

def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy, torch (and CUDA) as lists, numbers and uint8 tensors."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"bit_generator": str(name), "key": [int(v) for v in key], "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state(s: dict[str, Any]) -> tuple:
    return (s["bit_generator"], np.asarray(s["key"], dtype=np.uint32), int(s["pos"]), int(s["has_gauss"]),
            float(s["cached_gaussian"]))


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states returned by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_rng(state: Any) -> None:
    """Apply an RNG state to throw-away generators: raises if it is malformed."""
    if not isinstance(state, dict):
        raise ValueError("an RNG state is not a mapping")
    random.Random().setstate(state["python"])
    np.random.RandomState().set_state(_numpy_state(state["numpy"]))
    if not (isinstance(state["torch"], torch.Tensor) and state["torch"].dtype == torch.uint8):
        raise ValueError("the torch RNG state is not a uint8 tensor")
    torch.Generator().set_state(state["torch"])
    cuda = state.get("cuda", [])
    if not (isinstance(cuda, list) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda)):
        raise ValueError("the CUDA RNG states are not uint8 tensors")


def _check_state(state: Any) -> None:
    """The structure the trainers rely on: epoch, optimizer, rng list (+ config, step)."""
    if not isinstance(state, dict):
        raise ValueError("the state is not a mapping")
    epoch = state.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise ValueError(f"epoch={epoch!r} is not a non-negative integer")
    opt = state.get("optimizer")
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)):
        raise ValueError("no optimizer state")
    rngs = state.get("rng")
    if not isinstance(rngs, list) or not rngs:
        raise ValueError("no RNG states")
    for r in rngs:
        _check_rng(r)
    if not isinstance(state.get("config", {}), dict):
        raise ValueError("the config is not a mapping")


# ----------------------------------------------------------------------------- finiteness

def _first_non_finite(obj: Any, prefix: str) -> Optional[str]:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            return None if bool(torch.isfinite(obj.detach()).all()) else prefix
        return None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        bad = _first_non_finite(v, f"{prefix}.{k}" if prefix else str(k))
        if bad is not None:
            return bad
    return None


def non_finite_tensor(model: nn.Module, state: Any = None) -> Optional[str]:
    """Name of the first parameter/buffer of ``model`` (or tensor in ``state``, e.g. the optimizer's
    moments) holding NaN or inf, or None if all are finite."""
    bad = _first_non_finite(dict(model.state_dict()), "")
    if bad is None and state is not None:
        bad = _first_non_finite(state, "state")
    return bad


# ----------------------------------------------------------------------------- checkpoints

def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """A contiguous CPU copy of the state dict (safetensors needs unshared, contiguous tensors)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_checkpoint(run_dir: Path, epoch: int, model: nn.Module, state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``epoch`` (number of finished epochs) atomically; keep the newest ``keep``.

    Raises TrainingError (writing nothing) if a weight or optimizer tensor is not finite.
    """
    ckpt_root = run_dir / "checkpoints"
    bad = non_finite_tensor(model, state)
    if bad is not None:
        raise TrainingError(f"epoch {epoch}: {bad} holds NaN/inf values; no checkpoint was written from these "
                            f"weights, the last good checkpoint is kept in {ckpt_root}")
    final = ckpt_root / f"epoch_{epoch:04d}"
    tmp: Optional[Path] = None
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp_epoch_", dir=ckpt_root))
        tmp.chmod(umask_mode(folder=True))  # mkdtemp makes it private (0700); the folder follows the umask
        write_safetensors(tmp / MODEL_FILE, state_tensors(model))
        write_safetensors(tmp / STATE_FILE, *encode_state(state))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):  # read-only folder, full disk: earlier checkpoints stay as they were
            raise OutputError(f"cannot write checkpoint {final}: {exc.strerror or exc}") from exc
        raise
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders (``epoch_NNNN`` with a state file, current or old format), oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and EPOCH_DIR.match(p.name)
             and ((p / STATE_FILE).is_file() or (p / LEGACY_STATE_FILE).is_file())]
    return sorted(found, key=lambda p: int(EPOCH_DIR.match(p.name).group(1)))


def ensure_fresh_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to start a new run in a folder that holds checkpoints unless resuming."""
    if not resume and list_checkpoints(run_dir):
        raise TagsegError(f"{run_dir} already holds checkpoints: pass --resume to continue, or choose another --out")


def read_state(path: Path) -> dict[str, Any]:
    """The training state of checkpoint folder ``path``; CheckpointReadError if unusable."""
    file = path / STATE_FILE
    if not file.is_file() and (path / LEGACY_STATE_FILE).is_file():
        raise CheckpointReadError(
            f"{path / LEGACY_STATE_FILE} is a checkpoint of an older tagseg version (a pickle, which tagseg "
            "never loads because unpickling can run code); start a new run in another --out folder")
    tensors, meta = read_safetensors(file)
    try:
        state = decode_state(tensors, meta)
        _check_state(state)
    except Exception as exc:
        raise CheckpointReadError(f"{file} is not a valid checkpoint state: {str(exc)[:300]}") from exc
    return state


def load_checkpoint(path: Path, model: nn.Module, check: Optional[Callable[[dict], Any]] = None) -> dict[str, Any]:
    """Read the state (optimizer, epoch, rng, config, ...), run ``check(state)`` if given (before
    any weight is touched), load the weights into ``model``, and return the state.

    CheckpointReadError if a file is missing, corrupt, of the old format, or its weights do not
    fit ``model`` or are not finite; ``model`` is then left unchanged.
    """
    state = read_state(path)
    if check is not None:
        check(state)
    weights, _ = read_safetensors(path / MODEL_FILE)
    expected = model.state_dict()
    wrong = sorted(set(expected) ^ set(weights)) or [
        k for k in expected if weights[k].shape != expected[k].shape or weights[k].dtype != expected[k].dtype]
    if wrong:
        raise CheckpointReadError(f"{path / MODEL_FILE} does not fit the model (e.g. {wrong[0]!r})")
    bad = _first_non_finite(weights, "")
    if bad is not None:
        raise CheckpointReadError(f"{path / MODEL_FILE}: {bad} holds NaN/inf values")
    model.load_state_dict(weights)
    return state


def load_latest_checkpoint(run_dir: Path, model: nn.Module, check: Optional[Callable[[dict], Any]] = None
                           ) -> Optional[tuple[Path, dict[str, Any]]]:
    """Load the newest usable checkpoint of ``run_dir`` into ``model``: (its folder, its state),
    or None if the run has no checkpoint. An unreadable checkpoint is skipped with a warning on
    stderr (the previous one is tried); TagsegError if none is readable. Errors of ``check``
    (e.g. another configuration) are raised at once."""
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        return None
    reasons = []
    for path in reversed(ckpts):
        try:
            return path, load_checkpoint(path, model, check)
        except CheckpointReadError as exc:
            reasons.append(str(exc))
            if path != ckpts[0]:
                print(f"warning: skipping checkpoint {path.name}: {exc}; trying the previous one", file=sys.stderr)
    raise TagsegError(f"no usable checkpoint in {run_dir / 'checkpoints'} ({len(ckpts)} found); newest: {reasons[0]}")


# ----------------------------------------------------------------------------- final model

def save_final_model(path: Path, model: nn.Module, metadata: dict[str, Any]) -> None:
    """Write the trained weights with JSON-encoded metadata (class names, config, ...), with
    reproducible bytes; TrainingError (writing nothing) if a weight is not finite."""
    bad = non_finite_tensor(model)
    if bad is not None:
        raise TrainingError(f"{bad} holds NaN/inf values; {path} was not written")
    meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    write_safetensors(path, state_tensors(model), meta)


def read_model_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Weights and metadata of a file written by :func:`save_final_model`; TagsegError naming
    the file if it is missing, truncated or not a safetensors file."""
    if not path.is_file():
        raise TagsegError(f"model file not found: {path}")
    return read_safetensors(path)


def model_classes(path: Path, meta: dict[str, str]) -> tuple[list[str], list[int]]:
    """Class names and palette from a model file's metadata, checked: TagsegError naming the
    file if they are missing, not JSON, or not a non-empty list of names / of 0-255 values."""
    values = []
    for key in ("class_names", "palette"):
        if key not in meta:
            raise TagsegError(f"{path}: the model metadata has no {key!r} (not a tagseg model file?)")
        try:
            values.append(json.loads(meta[key]))
        except ValueError as exc:
            raise TagsegError(f"{path}: the model metadata {key!r} is not JSON ({exc})") from exc
    names, palette = values
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise TagsegError(f"{path}: the model metadata 'class_names' is not a non-empty list of names")
    if not (isinstance(palette, list) and len(palette) <= 768
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in palette)):
        raise TagsegError(f"{path}: the model metadata 'palette' is not a list of at most 768 values in 0..255")
    return names, palette
