"""Ids and names from files never become paths outside their folder.

Ids (``ImageSets/*.txt`` lines, the folder dataset's image names, ``predict`` output names,
report sample names) are joined onto a folder to make a file name, so each must be one plain
name: :func:`check_id` refuses separators, ``..``, absolute paths, drive letters and control
characters (NUL included). :func:`path_inside` is the second line of defence used by every
writer: it resolves the joined path (symlinks followed) and refuses anything outside ``root``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from tagseg.errors import DataError

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def id_problem(value: str) -> Optional[str]:
    """Why ``value`` cannot be used as a file name inside a folder, or None when it can."""
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, not text"
    if not value.strip():
        return "is empty"
    if "\x00" in value:
        return "contains a NUL byte"
    if _CONTROL.search(value):
        return "contains a control character"
    if "/" in value or "\\" in value:
        return "contains a path separator ('/' or '\\')"
    if ".." in value:
        return "contains '..'"
    if _DRIVE.match(value):
        return "starts with a drive letter"
    if os.path.isabs(value):
        return "is an absolute path"
    if value.strip(" .") == "":
        return "is made only of dots"
    return None


def check_id(value: str, source: str | os.PathLike, line: Optional[int] = None) -> str:
    """Return ``value`` if it is a plain name (see the module docstring); DataError naming
    ``source`` (and ``line``, 1-based) otherwise."""
    problem = id_problem(value)
    if problem is not None:
        where = f"{source}:{line}" if line is not None else str(source)
        raise DataError(f"{where}: id {value!r} {problem}; ids must be plain names that stay inside their folder")
    return value


def path_inside(root: str | os.PathLike, *parts: str | os.PathLike) -> Path:
    """``root`` joined with ``parts``, refused (DataError) unless it resolves inside ``root``.

    Symlinks are followed on both sides, so a link inside ``root`` that points elsewhere is
    refused too. The returned path is the plain join (not resolved), for readable messages.
    """
    root_path = Path(root)
    path = root_path.joinpath(*parts)
    if any("\x00" in str(p) for p in (root_path, *parts)):
        raise DataError(f"path {str(path)!r} contains a NUL byte")
    try:
        real_root = root_path.resolve()
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # symlink loops, unreadable components
        raise DataError(f"cannot resolve output path {path}: {exc}") from exc
    if real != real_root and real_root not in real.parents:
        raise DataError(f"refusing to write {path}: it resolves to {real}, outside the output folder {root_path}")
    return path
