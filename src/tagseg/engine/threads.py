"""CPU thread setting shared by every command."""

from __future__ import annotations

import os

from tagseg.utils.runtime import default_threads


def cpu_threads(requested: int, loader_workers: int, processes: int = 1) -> int:
    """Intra-op threads for CPU work: ``requested``, or (0) the cores left after the data-loader
    workers of every process, at least 1. Oversubscribed cores make PyTorch's threads spin-wait
    on each other, which costs far more than it gains."""
    if requested > 0:
        return requested
    return default_threads(processes, loader_workers)


def loader_workers(requested: int) -> int:
    """Data-loader workers: ``requested`` capped at the cores minus one (one core keeps computing);
    on a 2-core machine 4 workers would leave PyTorch a single, oversubscribed thread."""
    cap = max(0, (os.cpu_count() or 1) - 1)
    if requested > cap:
        print(f"note: data.num_workers={requested} capped at {cap} (cores minus one on this machine)")
        return cap
    return requested
