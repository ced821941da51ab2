"""Ids and names from files never become paths outside their folder.

Ids (``ImageSets/*.txt`` lines, the folder dataset's image names, ``predict`` output names,
report sample names) are joined onto a folder to make a file name, so each must be one plain
name: :func:`check_id` refuses separators, ``..``, absolute paths, drive letters and control
characters (NUL included). :func:`path_inside` is the second line of defence used by every
writer: it resolves the joined path (symlinks followed) and refuses anything outside ``root``.
Names that become folders (a config's ``name`` -> ``runs/<name>``) pass the same rule
(:func:`run_folder`), and so do ids read from list and annotation files, which must also hold no
whitespace (:func:`check_list_id`: a list line ``2008_000123 x`` is refused, never cut).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from tagseg.errors import ConfigError, DataError

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


def check_list_id(value: str, source: str | os.PathLike, line: Optional[int] = None) -> str:
    """:func:`check_id`, and no whitespace anywhere in ``value`` (ids read from list and
    annotation files, where a space would otherwise cut or split the id)."""
    check_id(value, source, line)
    if any(ch.isspace() for ch in value):
        where = f"{source}:{line}" if line is not None else str(source)
        raise DataError(f"{where}: id {value!r} contains whitespace; ids in lists and annotations are single words")
    return value


#: Longest path (characters) tagseg accepts from a user: far beyond any real one, short enough
#: that the operating system's own limit (ENAMETOOLONG, a traceback) is never reached.
MAX_PATH_CHARS = 1024


def check_path_text(value: str | os.PathLike, what: str) -> Path:
    """``value`` as a Path, or DataError (one line) when it is longer than MAX_PATH_CHARS,
    contains NUL, or has a component longer than the file system's 255-byte name limit."""
    text = os.fspath(value)
    if "\x00" in text:
        raise DataError(f"{what} contains a NUL byte")
    if len(text) > MAX_PATH_CHARS:
        raise DataError(f"{what} is {len(text):,} characters long (at most {MAX_PATH_CHARS}): "
                        f"{text[:60]!r}...")
    for part in Path(text).parts:
        if len(os.fsencode(part)) > 255:
            raise DataError(f"{what}: the path component {part[:40]!r}... is longer than 255 bytes")
    return Path(text)


def run_folder(name: str, base: str | os.PathLike = "runs") -> Path:
    """The default run folder ``base/name`` of a config named ``name``; ConfigError when the name
    is not a plain name (``../x``, ``a/b``, absolute, control characters)."""
    problem = id_problem(name)
    if problem is not None:
        raise ConfigError(f"config name {name!r} {problem}; it becomes the run folder {base}/<name>, so it must "
                        "be a plain name (or give --out)")
    return Path(base) / name


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


def refuse_links_out(root: str | os.PathLike, folders_only: bool = False) -> None:
    """DataError when any file or folder inside ``root`` (walked without following links) is a
    symbolic link that resolves outside ``root``: a writer about to fill ``root`` would otherwise
    write through a pre-planted link into the folder it points to. ``root`` itself may be a link
    (the user's choice of where the output lives); a missing ``root`` passes. ``folders_only``:
    only linked folders count (for trees whose writers only ever replace files, never append to
    them, and which hold file links on purpose)."""
    root_path = Path(root)
    if not root_path.is_dir():
        return
    real_root = root_path.resolve()
    for dirpath, dirnames, filenames in os.walk(root_path):
        for name in [*dirnames, *([] if folders_only else filenames)]:
            entry = Path(dirpath) / name
            if not entry.is_symlink():
                continue
            try:
                real = entry.resolve()
            except (OSError, RuntimeError) as exc:
                raise DataError(f"{entry} is a symbolic link that cannot be resolved ({exc}); remove it") from exc
            if real != real_root and real_root not in real.parents:
                raise DataError(f"{entry} is a symbolic link to {real}, outside the output folder {root_path}; "
                                "tagseg does not write through it (remove the link or choose another output)")
