"""Resuming a run: the configuration check and the history of the epochs being redone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from tagseg.errors import TrainingError
from tagseg.utils.io import write_text


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_resumable(saved: dict, current: dict, where: Path, may_change: Sequence[str] = ()) -> None:
    """Refuse to resume a checkpoint written under another configuration (naming the keys).

    saved / current: the configs as nested dicts; may_change: keys (or section prefixes) that
    may differ between an interrupted run and its resumption.
    """
    a, b = _flatten(saved), _flatten(current)
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)
                    and not any(k == p or k.startswith(p + ".") for p in may_change))
    if differ:
        detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in differ[:6])
        raise TrainingError(f"cannot resume {where}: it was written with another configuration ({detail}"
                            f"{', ...' if len(differ) > 6 else ''}); use another --out or the same settings")


def truncate_history(path: Path, epochs_done: int) -> None:
    """Drop history records of epochs after the checkpoint being resumed (they are redone)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= epochs_done]
    write_text(path, "".join(line + "\n" for line in keep))
