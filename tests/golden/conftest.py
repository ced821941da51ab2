"""Shared loader of the golden files: official outputs recorded by ``benchmarks/golden/record_*.py``.

Each ``tests/golden/<source>.json`` holds ``source`` (repository, pinned commit, file:lines of
the official function), ``recorder`` and ``cases``; a case has ``inputs`` (specs of
:mod:`inputs`, each with the ``sha256`` the recorder saw), ``params``, ``outputs`` (numbers
or nested lists) and optionally ``grads`` (summaries of :func:`inputs.summarise`).
The tests need only these files: no official code, nothing fetched.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .inputs import checksum, generate_all, summarise

GOLDEN_DIR = Path(__file__).resolve().parent
RTOL = 1e-5  # relative tolerance every golden comparison uses unless a test says why not


def load_golden(source: str) -> dict[str, Any]:
    """The parsed ``tests/golden/<source>.json``."""
    with open(GOLDEN_DIR / f"{source}.json", encoding="utf-8") as f:
        return json.load(f)


def golden_case(source: str, name: str) -> dict[str, Any]:
    """One case of a golden file by name (KeyError naming the known ones otherwise)."""
    cases = {c["name"]: c for c in load_golden(source)["cases"]}
    if name not in cases:
        raise KeyError(f"golden {source}: no case {name!r} (has {sorted(cases)})")
    return cases[name]


def case_tensors(case: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The case's inputs regenerated from their specs, checked against the recorded checksums."""
    arrays = generate_all(case["inputs"])
    out = {}
    for name, array in arrays.items():
        expected = case["inputs"][name].get("sha256")
        if expected is not None and checksum(array) != expected:
            raise AssertionError(f"golden input {name!r} regenerated differently from the recording")
        out[name] = torch.from_numpy(np.array(array))
    return out


def assert_rel_close(actual: Any, expected: Any, rtol: float = RTOL, atol: float = 0.0, what: str = "") -> None:
    """|actual - expected| <= rtol * max(|expected|) + atol, element-wise, for numbers or nested lists."""
    a = np.asarray(actual.detach().cpu().double() if isinstance(actual, torch.Tensor) else actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != golden {e.shape}"
    scale = float(np.abs(e).max()) if e.size else 0.0
    err = float(np.abs(a - e).max()) if e.size else 0.0
    assert err <= rtol * scale + atol, f"{what}: max |diff| {err:.3g} > {rtol:g} x {scale:.4g} (+{atol:g})"


def assert_summary_close(tensor: torch.Tensor, recorded: dict[str, Any], rtol: float = RTOL, what: str = "") -> None:
    """A tensor (e.g. a gradient) against a recorded :func:`inputs.summarise` record."""
    assert list(tensor.shape) == recorded["shape"], f"{what}: shape {list(tensor.shape)} != {recorded['shape']}"
    mine = summarise(tensor.detach().cpu().double().numpy(), recorded["probe_seed"], len(recorded["samples"]["index"]))
    # A sum's rounding error scales with the sum of magnitudes, not with the (cancelled) sum.
    for key, scale_key in (("sum", "l1"), ("l2", "l2"), ("probe", "probe_abs")):
        scale = max(abs(recorded[scale_key]), 1e-30)
        assert math.isclose(mine[key], recorded[key], rel_tol=0, abs_tol=rtol * scale), (
            f"{what}.{key}: {mine[key]!r} != golden {recorded[key]!r} (tolerance {rtol:g} x {scale_key})")
    assert_rel_close(mine["samples"]["value"], recorded["samples"]["value"], rtol, what=f"{what}.samples")
