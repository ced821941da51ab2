"""Golden inputs: tensors regenerated from a recorded seed and spec, and their checksum.

numpy only (no torch), so that every recorder environment (PyTorch or TensorFlow) and the
tests generate bit-identical inputs. A spec is a dict::

    {"seed": 0, "shape": [2, 128, 16, 16], "dist": "normal", "scale": 1.0, "offset": 0.0}

``dist`` is one of ``normal`` (N(0, 1)), ``uniform`` ([0, 1)), ``integers`` (``low`` to
``high`` exclusive, int64) or ``bernoulli`` (``p``, float 0/1). Float tensors are float32:
``offset + scale * draw``. Each spec draws from its own ``numpy.random.default_rng(seed)``
(PCG64, stable across numpy versions).
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np


def generate(spec: Mapping[str, Any]) -> np.ndarray:
    """The array a spec describes (float32, or int64 for ``integers``)."""
    rng = np.random.default_rng(int(spec["seed"]))
    shape = tuple(int(s) for s in spec["shape"])
    dist = spec.get("dist", "normal")
    if dist == "integers":
        return rng.integers(int(spec["low"]), int(spec["high"]), size=shape, dtype=np.int64)
    if dist == "normal":
        draw = rng.standard_normal(shape)
    elif dist == "uniform":
        draw = rng.random(shape)
    elif dist == "bernoulli":
        draw = (rng.random(shape) < float(spec["p"])).astype(np.float64)
    else:
        raise ValueError(f"unknown golden input distribution {dist!r}")
    out = float(spec.get("offset", 0.0)) + float(spec.get("scale", 1.0)) * draw
    return out.astype(np.float32)


def checksum(array: np.ndarray) -> str:
    """sha256 of the array's little-endian bytes, prefixed with its dtype and shape."""
    a = np.ascontiguousarray(array)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    head = f"{a.dtype.str}{list(a.shape)}".encode()
    return hashlib.sha256(head + a.tobytes()).hexdigest()


def generate_all(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """``{name: array}`` for a case's ``inputs`` mapping; a spec may carry a ``value`` list instead."""
    out = {}
    for name, spec in specs.items():
        if "value" in spec:
            out[name] = np.asarray(spec["value"], dtype=spec.get("dtype", "float32"))
        else:
            out[name] = generate(spec)
    return out


def summarise(array: np.ndarray, probe_seed: int = 12345, n_samples: int = 16) -> dict[str, Any]:
    """A compact, comparable record of a large array (e.g. a gradient).

    ``sum`` (with ``l1`` = sum of |a|, its natural error scale), ``l2``, ``probe`` (dot product
    with a N(0, 1) tensor drawn from ``probe_seed``, with ``probe_abs`` = sum of |a * probe|)
    and ``samples``: the values at ``n_samples`` flat indices drawn from the same seed.
    Computed in float64.
    """
    a = np.asarray(array, dtype=np.float64).reshape(-1)
    rng = np.random.default_rng(probe_seed)
    probe = rng.standard_normal(a.shape[0])
    idx = rng.choice(a.shape[0], size=min(n_samples, a.shape[0]), replace=False)
    return {
        "shape": list(np.shape(array)),
        "sum": float(a.sum()),
        "l1": float(np.abs(a).sum()),
        "l2": float(np.sqrt((a * a).sum())),
        "probe": float(a @ probe),
        "probe_abs": float(np.abs(a * probe).sum()),
        "probe_seed": int(probe_seed),
        "samples": {"index": [int(i) for i in idx], "value": [float(a[i]) for i in idx]},
    }
