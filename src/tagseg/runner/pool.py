"""Worker processes for per-image steps: spawned, each builds its own step once, and each exits
on its own when the parent dies (even by ``kill -9``), so no orphan keeps running."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from tagseg.errors import OutputError
from tagseg.runner.layout import OutputLayout
from tagseg.utils.io import max_image_pixels, set_max_image_pixels

Step = Callable[[Any, dict[str, Path]], None]
"""(record, its output files by name from the layout) -> None; writes those files."""

PARENT_POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_WORKER: dict[str, Any] = {}


@dataclass(frozen=True)
class WorkerStep:
    """How a worker process builds its step: ``build(*args)`` returns the :data:`Step`.

    ``build`` must be a module-level function and ``args`` picklable (workers are spawned):
    e.g. a function that loads the model from its file and returns a closure over it.
    """

    build: Callable[..., Step]
    args: tuple = ()


def exit_with_parent(parent_pid: int) -> None:
    """Make this (worker) process die when ``parent_pid`` does: the Linux parent-death signal,
    plus a watchdog thread that polls ``os.getppid()`` (every platform, and a backstop)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still works
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_SECONDS)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="tagseg-parent-watchdog", daemon=True).start()


def check_root(root: Path) -> None:
    """OutputError when the output folder no longer exists (deleted or moved mid-run): writing on
    would silently recreate it and count results that are not where the run reports them."""
    if not root.is_dir():
        raise OutputError(f"the output folder {root} vanished during the run (deleted or moved by another "
                          "program?); nothing more is written — run the command again to redo the missing images")


def run_step(step: Step, record: Any, layout: OutputLayout) -> None:
    """One record: check the output folder is still there, then run the step on its files."""
    check_root(layout.root)
    step(record, layout.paths(record.id))


def _init_worker(worker_step: WorkerStep, threads: Optional[int], parent_pid: int, max_pixels: int) -> None:
    exit_with_parent(parent_pid)
    if threads:
        import torch

        torch.set_num_threads(threads)
    set_max_image_pixels(max_pixels)
    _WORKER["step"] = worker_step.build(*worker_step.args)


def _work(chunk: Sequence[Any], layout: OutputLayout) -> int:
    for record in chunk:
        run_step(_WORKER["step"], record, layout)
    return len(chunk)


def run_pool(todo: Sequence[Any], layout: OutputLayout, worker_step: WorkerStep, workers: int,
             threads: Optional[int] = None) -> Iterator[int]:
    """Run the step on ``todo`` in ``workers`` spawned processes; yield the number of records
    finished per completed chunk. The first failure stops the pool (queued chunks are cancelled)
    and is raised here."""
    chunk = max(1, min(16, len(todo) // (4 * workers)))
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(worker_step, threads, os.getpid(), max_image_pixels())) as pool:
        futures = [pool.submit(_work, list(todo[i:i + chunk]), layout) for i in range(0, len(todo), chunk)]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        except BaseException:  # e.g. a full disk: stop at once instead of running every queued chunk
            pool.shutdown(wait=True, cancel_futures=True)
            raise
