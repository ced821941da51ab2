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
MIN_IMAGES_PER_WORKER = 128


def default_workers(device_type: str, images: int) -> int:
    """Worker processes for CPU inference when none are asked for: one per core (at most
    ``MAX_AUTO_WORKERS``), but only with at least ``MIN_IMAGES_PER_WORKER`` images per process
    (starting one costs seconds: torch, the model); 1 on a GPU."""
    if device_type != "cpu":
        return 1
    cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_AUTO_WORKERS, images // MIN_IMAGES_PER_WORKER))


def inference_processes(device_type: str, images: int, workers: Optional[int] = None,
                        threads: Optional[int] = None) -> tuple[int, int]:
    """(threads per process, worker processes) for pseudo-mask inference.

    Given values are kept; a missing thread count is the cores divided by the workers, except
    on a CPU with neither given: then every process runs 1 thread (:func:`default_workers` of
    them). Several threads in one process wait for each other when other programs share the
    cores, which made them 4-5x slower than 1 thread on a shared 2-core machine
    (benchmarks/results/pseudo_speed.md)."""
    if workers is None:
        workers = default_workers(device_type, images)
        if threads is None and device_type == "cpu":
            threads = 1
    return threads or default_threads(workers), workers
