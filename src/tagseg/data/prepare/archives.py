"""Read a dataset source -- an extracted folder or a tar archive -- as one stream of members.

Archives are read in tar streaming mode (``r|*``: plain, gzip, bzip2 or xz), in one sequential
pass, so a 2 GB tar is never extracted to disk nor seeked in. Only regular files are yielded;
links, devices and folders are skipped, and member names never become output paths (callers
map them to validated ids).
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Optional, TypeVar, Union

from tqdm import tqdm

from tagseg.errors import DataError

T = TypeVar("T")

Payload = Union[Path, bytes]
"""A member's content: the file's path (folder sources) or its bytes (archive sources)."""


def is_archive(path: Path) -> bool:
    return path.is_file() and tarfile.is_tarfile(path)


def iter_source(source: str | Path, match: Callable[[PurePosixPath], Optional[T]], desc: str
                ) -> Iterator[tuple[T, Payload]]:
    """Yield (key, payload) for every regular file whose name ``match`` maps to a key (not None).

    Names are posix paths starting with the source's own name (the folder's name, or the tar's
    member names as stored). Folder members are yielded as paths (read by whoever needs them),
    archive members as bytes. A progress bar (tqdm) shows files
    (folders) or compressed bytes read (archives). Raises DataError for a missing source or a
    file that is neither a folder nor a readable tar archive.
    """
    source = Path(source)
    if source.is_dir():
        yield from _iter_folder(source, match, desc)
    elif source.is_file():
        yield from _iter_tar(source, match, desc)
    else:
        raise DataError(f"dataset source not found: {source}")


def _iter_folder(root: Path, match, desc: str) -> Iterator:
    found = []
    for dirpath, _dirnames, filenames in os.walk(root):
        rel_dir = PurePosixPath(root.name) / PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        for name in filenames:
            key = match(rel_dir / name)
            if key is not None:
                found.append((key, Path(dirpath) / name))
    for key, path in tqdm(found, desc=desc, unit="file", leave=False, mininterval=1.0):
        if path.is_symlink() and not path.resolve().is_file():
            raise DataError(f"{path}: broken link")
        yield key, path


def _iter_tar(path: Path, match, desc: str) -> Iterator:
    total = path.stat().st_size
    with path.open("rb") as raw, tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False,
                                      mininterval=1.0) as bar:
        try:
            with tarfile.open(fileobj=raw, mode="r|*") as tf:
                for info in tf:
                    bar.update(raw.tell() - bar.n)
                    if not info.isfile():
                        continue
                    name = PurePosixPath(info.name)
                    if name.is_absolute() or ".." in name.parts:
                        continue
                    key = match(name)
                    if key is None:
                        continue
                    fh = tf.extractfile(info)
                    if fh is None:
                        continue
                    yield key, fh.read()
                bar.update(total - bar.n)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"cannot read archive {path}: {exc} (is it complete? compare its size with the "
                            "download page)") from exc


def read_payload(payload: Payload) -> bytes:
    """The bytes of a member."""
    if isinstance(payload, bytes):
        return payload
    try:
        return Path(payload).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {payload}: {exc}") from exc


def payload_name(payload: Payload, fallback: str) -> str:
    """A name for messages: the file path, or ``fallback`` (the archive member) for bytes."""
    return str(payload) if isinstance(payload, Path) else fallback
