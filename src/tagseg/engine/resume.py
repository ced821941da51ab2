"""Resuming a run: the configuration check and the history of the epochs being redone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from tagseg.errors import TrainingError
from tagseg.utils.io import write_text
from tagseg.utils.nested import changed_values, describe_changes, flatten


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_differences(saved: dict, current: dict, may_change: Sequence[str] = (),
                       matter: Sequence[str] = ()) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved value, current value)}`` for the keys whose values differ, in key order.

    matter: the keys (or section prefixes) whose values decide the result (empty: every key);
    may_change: keys (or prefixes) among them that are allowed to differ. Only keys both configs
    have are compared: a file written before a key existed is read with that key at its default
    (a new key's default keeps the earlier behaviour), and a key the code no longer has cannot
    be compared.
    """
    return {k: v for k, v in changed_values(flatten(saved), flatten(current)).items()
            if (not matter or _under(k, matter)) and not _under(k, may_change)}


def describe_differences(differ: dict[str, tuple[Any, Any]], limit: int = 6) -> str:
    """``"key: old -> new, ..."`` for the first ``limit`` entries of :func:`config_differences`."""
    detail = ", ".join(describe_changes(differ, limit))
    return detail + (", ..." if len(differ) > limit else "")


def check_resumable(saved: dict, current: dict, where: Path, may_change: Sequence[str] = (),
                    matter: Sequence[str] = ()) -> None:
    """Refuse to resume a checkpoint written under another configuration (naming the keys).

    saved / current: the configs as nested dicts; matter: the task's declared keys (empty: every
    key); may_change: keys that may still differ between an interrupted run and its resumption
    (see config_differences).
    """
    differ = config_differences(saved, current, may_change, matter)
    if differ:
        raise TrainingError(f"cannot resume {where}: it was written with another configuration "
                            f"({describe_differences(differ)}); use another --out or the same settings")


def truncate_history(path: Path, epochs_done: int) -> None:
    """Drop history records of epochs after the checkpoint being resumed (they are redone)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= epochs_done]
    write_text(path, "".join(line + "\n" for line in keep))
