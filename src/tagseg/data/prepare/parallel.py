"""Run independent file jobs over CPU processes, streaming, with a bounded number in flight."""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator


def resolve_workers(workers: int) -> int:
    """0 = all CPU cores (at least 1); otherwise the given number (>= 1)."""
    return max(1, os.cpu_count() or 1) if workers <= 0 else workers


def _init_worker() -> None:
    # file conversion is single-threaded work; keep numeric libraries from oversubscribing cores
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def run_jobs(fn: Callable[..., Any], jobs: Iterable[tuple], workers: int,
             max_pending: int = 0) -> Iterator[Any]:
    """Yield ``fn(*job)`` for every job, in completion order.

    workers = 1 runs in this process (no pool); more uses that many processes. At most
    ``max_pending`` (default 8 per worker) jobs are queued at a time, so a streamed archive is
    never held in memory whole. The first exception raised by a job is re-raised here.
    """
    if workers <= 1:
        for job in jobs:
            yield fn(*job)
        return
    max_pending = max_pending or 8 * workers
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
        pending: set[Future] = set()
        try:
            for job in jobs:
                pending.add(pool.submit(fn, *job))
                if len(pending) >= max_pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        yield f.result()
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        except BaseException:
            for f in pending:
                f.cancel()
            raise
