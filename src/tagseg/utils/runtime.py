"""How a command runs on this machine: CPU threads per process and the ``--device`` override."""

from __future__ import annotations

import os
from typing import Optional


def default_threads(processes: int = 1, loader_workers: int = 0) -> int:
    """The machine's cores divided by ``processes``, minus each process's data-loader workers,
    at least 1 (oversubscribed cores make PyTorch's threads spin-wait on each other)."""
    cores = os.cpu_count() or 1
    return max(1, cores // max(1, processes) - loader_workers)


def apply_threads(requested: Optional[int], processes: int = 1, loader_workers: int = 0) -> int:
    """Set torch's intra-op threads of this process to ``requested`` (or the default); returns it."""
    import torch

    threads = requested or default_threads(processes, loader_workers)
    torch.set_num_threads(threads)
    return threads


def world_size() -> int:
    """Processes of this launch (``WORLD_SIZE`` of torchrun; 1 otherwise)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def device_overrides(device: Optional[str]) -> list[str]:
    """``["device=<device>"]`` for a ``--device`` flag (put before the user's overrides, which win)."""
    return [f"device={device}"] if device else []


MAX_AUTO_WORKERS = 4
MIN_IMAGES_PER_WORKER = 8


def default_workers(device_type: str, images: int) -> int:
    """Worker processes for CPU inference when none are asked for: one per core (at most
    ``MAX_AUTO_WORKERS``), each then running 1 thread; 1 on a GPU or when there are fewer than
    ``MIN_IMAGES_PER_WORKER`` images per extra process (starting a process costs seconds).

    Single-threaded processes do not spin-wait on each other when other programs share the
    cores, where one process with several threads can run many times slower."""
    if device_type != "cpu":
        return 1
    cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_AUTO_WORKERS, images // MIN_IMAGES_PER_WORKER))
