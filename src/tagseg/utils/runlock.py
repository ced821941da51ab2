"""One process owns a run folder: an OS lock on ``<folder>/.lock`` for the length of a command.

The lock is an advisory whole-file lock (a POSIX record lock, ``fcntl.lockf``, on POSIX;
``msvcrt.locking`` on Windows) held on an open file that also records the holder's pid. The
operating system drops it when the holder exits, however it exits (``kill -9`` included), so a
stale lock file never blocks the next run. POSIX record locks belong to the process, not to the
open file: children forked by the holder (e.g. data-loader workers still winding down after
their parent was killed) do not keep it. The holding process must therefore never open and
close the lock file itself (that would drop its lock). A second process that finds the lock
taken stops at once with a :class:`RunLockedError` naming the holder's pid. Under ``torchrun``
only rank 0 takes the folder's lock (all ranks of one job share the folder); a process working
on a shard takes that shard's lock whatever its rank.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path
from typing import Iterator, Optional

from tagseg.errors import OutputError, TagsegError

LOCK_NAME = ".lock"


class RunLockedError(TagsegError):
    """Another live process holds the lock of the folder."""


def lock_name(shard: Optional[tuple[int, int]] = None) -> str:
    """``.lock``, or ``.lock.shard-i-of-n`` for shard i of n (n > 1), so shards run side by side."""
    if shard is None or shard[1] <= 1:
        return LOCK_NAME
    return f"{LOCK_NAME}.shard-{shard[0]}-of-{shard[1]}"


def _is_secondary_rank() -> bool:
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0
    except ValueError:
        return False


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 0, 0, os.SEEK_SET)  # the whole file, from byte 0
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        return True

    def _unlock(fd: int) -> None:
        fcntl.lockf(fd, fcntl.LOCK_UN, 0, 0, os.SEEK_SET)


def read_holder_pid(path: Path) -> Optional[int]:
    """The pid recorded in a lock file, or None when it holds none."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, shard: Optional[tuple[int, int]] = None) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if missing) while the block runs; yields the lock file.

    RunLockedError (naming the holder's pid) when another process holds it; OutputError when the
    folder or the lock file cannot be created.
    """
    folder = Path(folder)
    path = folder / lock_name(shard)
    if _is_secondary_rank() and (shard is None or shard[1] <= 1):  # a shard (e.g. --shard auto) locks its own
        yield path
        return
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot create the lock file {path}: {exc.strerror or exc}") from exc
    try:
        if not _try_lock(fd):
            pid = read_holder_pid(path)
            holder = f"pid {pid}" if pid is not None else "a process whose pid is not recorded yet"
            raise RunLockedError(f"{folder} is in use by another tagseg process ({holder}; lock file {path}); "
                                 "wait for it to finish, or use another output folder")
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        except OSError as exc:
            _unlock(fd)
            raise OutputError(f"cannot write the lock file {path}: {exc.strerror or exc}") from exc
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no stale pid for the next reader; the file stays (same inode for all)
            _unlock(fd)
    finally:
        os.close(fd)
