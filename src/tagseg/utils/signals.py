"""SIGTERM (what schedulers and ``kill`` send) handled like Ctrl-C.

Inside :func:`sigterm_as_interrupt`, SIGTERM raises :class:`Terminated`, a KeyboardInterrupt, so
the code that already cleans up after Ctrl-C (temporary files, locks, worker pools) runs for it
too; outputs are written atomically, so finished files and the last checkpoint stay intact. The
caller reports it and exits with 143 (128 + SIGTERM), as a shell does for a terminated program.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

EXIT_SIGTERM = 128 + signal.SIGTERM  # 143
EXIT_SIGINT = 128 + signal.SIGINT  # 130


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While open (in the main thread), SIGTERM raises :class:`Terminated`; the previous handler is
    restored afterwards. Elsewhere (another thread) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
