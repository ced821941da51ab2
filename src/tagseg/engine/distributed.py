"""Process-group helpers: one process, or several under ``torchrun`` (rank 0 writes), and the GPU a
launched process takes (where it stands in the launch: :mod:`tagseg.runner.launch`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from tagseg.errors import ConfigError
from tagseg.runner.launch import Launch


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def per_process_batch(global_batch: int, world_size: int, key: str = "train.batch_size") -> int:
    """``key`` is the global batch (all processes together, as the papers state it): each of the
    ``world_size`` processes takes ``global_batch / world_size``; ConfigError when it does not divide."""
    if world_size < 1 or global_batch % world_size:
        raise ConfigError(f"{key}={global_batch} is the global batch and must divide evenly over the "
                          f"{world_size} processes (choose a multiple of {world_size})")
    return global_batch // world_size


def launch_device(launch: Launch, requested: str = "auto", cuda_count: Optional[int] = None) -> str:
    """The device of a launched process: one GPU per process.

    requested: auto | cpu | cuda | cuda:N (a given index is kept); cuda_count: visible GPUs
    (default: torch's count). ``auto``/``cuda`` -> ``cuda:<local_rank mod visible GPUs>`` (a
    launcher that gives each task its own GPU, e.g. ``srun --gpus-per-task=1``, leaves one
    visible: cuda:0), ``cpu`` when no GPU is visible and ``auto`` was asked.
    """
    count = torch.cuda.device_count() if cuda_count is None else cuda_count
    if requested == "cpu" or (requested == "auto" and count == 0):
        return "cpu"
    if requested in ("auto", "cuda"):
        if count == 0:
            raise ConfigError("device=cuda but no CUDA device is visible")
        return f"cuda:{launch.local_rank % count}"
    return requested


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun set up (env WORLD_SIZE > 1); gloo on CPU, nccl on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """'auto' -> cuda:<local_rank> when available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def all_true(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Logical AND of ``flag`` over all ranks."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def mean_over_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values)
        values /= info.world_size
    return values


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
