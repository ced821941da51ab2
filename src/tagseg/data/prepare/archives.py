"""Read a dataset source -- an extracted folder or a tar archive -- as one stream of members.

Archives are read in tar streaming mode (``r|*``: plain, gzip, bzip2 or xz), in one sequential
pass, so a 2 GB tar is never extracted whole nor seeked in. Only regular files are yielded;
links, devices and folders are skipped, and member names never become output paths (callers
map them to validated ids).

Archives are untrusted (a few MB can expand to many GB): every member that is used is checked
against :class:`ExtractionLimits` *before* a byte of it is written -- its declared size against
the per-file limit, the running total of declared sizes against the per-archive limit -- and is
then copied in chunks (never whole in memory) to a staging file, counting the bytes actually
produced, so a member that yields more than it declared is stopped there.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterator, Optional, TypeVar, Union

from tqdm import tqdm

from tagseg.errors import DataError
from tagseg.utils.io import umask_mode

T = TypeVar("T")

MB = 1024 * 1024
GB = 1024 * MB
CHUNK = 1 * MB


@dataclass(frozen=True)
class ExtractionLimits:
    """Bounds on what ``tagseg prepare`` takes from one source (bytes).

    max_file: one image, mask or list file (the largest VOC / COCO photo is under 1 MB);
    max_archive: all the used members of one archive together (VOC 2012 + SBD hold 3.5 GB, COCO's
    train2014.zip 13 GB); max_annotation: one annotation JSON (instances_train2014.json is 332 MB).
    """

    max_file: int = 64 * MB
    max_archive: int = 64 * GB
    max_annotation: int = 512 * MB

    @classmethod
    def from_options(cls, file_mb: Optional[float] = None, archive_gb: Optional[float] = None,
                     annotation_mb: Optional[float] = None) -> "ExtractionLimits":
        """Limits from command-line values (None: the default); DataError for values that are not
        positive finite numbers."""
        default = cls()
        values = {}
        for key, value, unit, flag in (("max_file", file_mb, MB, "--max-file-mb"),
                                       ("max_archive", archive_gb, GB, "--max-archive-gb"),
                                       ("max_annotation", annotation_mb, MB, "--max-annotation-mb")):
            if value is None:
                values[key] = getattr(default, key)
                continue
            if not (isinstance(value, (int, float)) and value == value and 0 < value < 2**40):
                raise DataError(f"{flag} must be a positive number, got {value!r}")
            values[key] = int(value * unit)
        return cls(**values)


DEFAULT_LIMITS = ExtractionLimits()


@dataclass(frozen=True)
class Staged:
    """An archive member copied out to a staging file; whoever uses it removes it
    (:func:`read_payload` and :func:`move_payload` do, :func:`discard` for unused ones)."""

    path: Path
    member: str


Payload = Union[Path, Staged]
"""A member's content: the file's path (folder sources) or its staged copy (archive sources)."""


def _size_text(n: int) -> str:
    return f"{n / MB:,.1f} MB" if n < GB else f"{n / GB:,.2f} GB"


def check_declared(name: str, declared: int, limit: int, flag: str) -> None:
    """DataError (before anything is written) when ``declared`` bytes exceed ``limit``."""
    if declared > limit:
        raise DataError(f"{name} declares {_size_text(declared)}, more than the limit of {_size_text(limit)} "
                        f"(a decompression-bomb guard; raise {flag} if the source is trusted)")


def copy_bounded(src: IO[bytes], dst: IO[bytes], declared: int, name: str) -> int:
    """Copy ``src`` to ``dst`` in chunks; DataError as soon as more than ``declared`` bytes come out
    (the member lied about its size). Returns the bytes copied."""
    copied = 0
    while True:
        chunk = src.read(min(CHUNK, declared - copied + 1))
        if not chunk:
            return copied
        copied += len(chunk)
        if copied > declared:
            raise DataError(f"{name} yields more than the {declared:,} bytes it declares (a corrupt or hostile "
                            "archive); stopped there")
        dst.write(chunk)


def iter_source(source: str | Path, match: Callable[[PurePosixPath], Optional[T]], desc: str,
                staging: Optional[Path] = None, limits: ExtractionLimits = DEFAULT_LIMITS
                ) -> Iterator[tuple[T, Payload]]:
    """Yield (key, payload) for every regular file whose name ``match`` maps to a key (not None).

    Names are posix paths starting with the source's own name (the folder's name, or the tar's
    member names as stored). Folder members are yielded as paths, archive members as
    :class:`Staged` copies in ``staging`` (a folder the caller removes afterwards; default: a
    temporary folder removed when the iteration ends). Every used member is checked against
    ``limits`` first (module docstring). A progress bar (tqdm) shows files (folders) or
    compressed bytes read (archives). Raises DataError for a missing source, a file that is
    neither a folder nor a readable tar archive, or a member over the limits.
    """
    source = Path(source)
    if source.is_dir():
        yield from _iter_folder(source, match, desc, limits)
    elif source.is_file():
        if staging is not None:
            yield from _iter_tar(source, match, desc, staging, limits)
            return
        own = Path(tempfile.mkdtemp(prefix="tagseg-staging-"))
        try:
            yield from _iter_tar(source, match, desc, own, limits)
        finally:
            shutil.rmtree(own, ignore_errors=True)
    else:
        raise DataError(f"dataset source not found: {source}")


def _iter_folder(root: Path, match, desc: str, limits: ExtractionLimits) -> Iterator:
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
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
        check_declared(str(path), size, limits.max_file, "--max-file-mb")
        yield key, path


def _iter_tar(path: Path, match, desc: str, staging: Path, limits: ExtractionLimits) -> Iterator:
    total = path.stat().st_size
    staging.mkdir(parents=True, exist_ok=True)
    used = 0
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
                    member = f"{path}:{info.name}"
                    check_declared(member, info.size, limits.max_file, "--max-file-mb")
                    used += info.size
                    if used > limits.max_archive:
                        raise DataError(f"{path}: its members add up to more than the limit of "
                                        f"{_size_text(limits.max_archive)} (a decompression-bomb guard; raise "
                                        "--max-archive-gb if the archive is trusted)")
                    fh = tf.extractfile(info)
                    if fh is None:
                        continue
                    fd, tmp = tempfile.mkstemp(prefix="member.", dir=staging)
                    os.fchmod(fd, umask_mode())  # it may be renamed into the tree: the umask's mode, not 0600
                    with os.fdopen(fd, "wb") as out:
                        copy_bounded(fh, out, info.size, member)
                    yield key, Staged(Path(tmp), member)
                bar.update(total - bar.n)
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise DataError(f"cannot read archive {path}: {exc} (is it complete? compare its size with the "
                            "download page)") from exc


def read_payload(payload: Payload, limit: int = DEFAULT_LIMITS.max_file) -> bytes:
    """The bytes of a member (a staged copy is removed once read); DataError past ``limit``."""
    path = payload.path if isinstance(payload, Staged) else Path(payload)
    name = payload_name(payload, str(path))
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise DataError(f"cannot read {name}: {exc.strerror or exc}") from exc
    finally:
        discard(payload)
    check_declared(name, len(data), limit, "--max-file-mb")
    return data


def move_payload(payload: Payload, target: Path) -> None:
    """Put a member's bytes at ``target`` (a fresh temporary path): a staged copy is renamed there,
    a folder member copied in chunks (never read whole)."""
    if isinstance(payload, Staged):
        try:
            os.replace(payload.path, target)
            return
        except OSError:  # staged on another file system: copy instead
            shutil.copyfile(payload.path, target)
            discard(payload)
    else:
        shutil.copyfile(payload, target)


def discard(payload: Payload) -> None:
    """Remove a staged copy that will not be used (folder members are left alone)."""
    if isinstance(payload, Staged):
        payload.path.unlink(missing_ok=True)


def payload_name(payload: Payload, fallback: str) -> str:
    """A name for messages: the file path, or the archive member for staged copies."""
    return payload.member if isinstance(payload, Staged) else str(payload)
