"""Helpers shared by the golden recorders (``record_<source>.py``): pinned-commit check,
input generation with checksums, and the JSON writer.

The recorders run the *official* code from a checkout the user provides; they fetch nothing
and no official code is copied into this repository.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_inputs_module():
    """``tests/golden/inputs.py`` (numpy only), loaded by path so recorders need no test package."""
    spec = importlib.util.spec_from_file_location("golden_inputs", REPO_ROOT / "tests" / "golden" / "inputs.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


inputs = _load_inputs_module()


def check_checkout(path: str | os.PathLike, pinned: str) -> Path:
    """The checkout's root after checking that its HEAD is the pinned commit (SystemExit otherwise)."""
    root = Path(path).resolve()
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"{root}: not a git checkout ({e})") from None
    if head != pinned:
        raise SystemExit(f"{root}: HEAD is {head}, the golden file pins {pinned}; check out the pinned commit")
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           check=True, capture_output=True, text=True).stdout.strip()
    if dirty:
        raise SystemExit(f"{root}: tracked files are modified; record from an unmodified checkout")
    return root


def file_lines(root: Path, rel: str, first: int, last: int) -> str:
    """Lines ``first``..``last`` (1-based, inclusive) of an official file, as text."""
    lines = (root / rel).read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(lines[first - 1:last])


def make_inputs(specs: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arrays, specs with their ``sha256`` added) for a case's input specs."""
    arrays = inputs.generate_all(specs)
    recorded = {name: {**spec, "sha256": inputs.checksum(arrays[name])} for name, spec in specs.items()}
    return arrays, recorded


def write_golden(out: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write the golden JSON (sorted keys, atomically via a temporary file in the same folder)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "python": sys.version.split()[0]}
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, out)
