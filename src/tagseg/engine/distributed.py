"""Process-group helpers: one process, or several under ``torchrun`` (rank 0 writes), and the
rank / world size a launcher (torchrun or SLURM) gives a process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.distributed as dist

from tagseg.errors import ConfigError

# (rank, world size, local rank) variables of each launcher, in the order they are looked for:
# torchrun first, since `srun torchrun ...` sets both and torchrun's numbering is the one in force.
LAUNCHERS = (
    ("torchrun", ("RANK", "WORLD_SIZE", "LOCAL_RANK")),
    ("slurm", ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")),
)


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
    from tagseg.errors import ConfigError

    if world_size < 1 or global_batch % world_size:
        raise ConfigError(f"{key}={global_batch} is the global batch and must divide evenly over the "
                          f"{world_size} processes (choose a multiple of {world_size})")
    return global_batch // world_size


@dataclass(frozen=True)
class Launch:
    """Where this process stands in its launch: ``rank`` of ``world_size`` processes (all nodes),
    ``local_rank`` on this node (its GPU), and ``source``: torchrun, slurm or single."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "single"

    @property
    def shard(self) -> tuple[int, int]:
        """(i, n): the shard of a data set this process takes."""
        return self.rank, self.world_size


def _env_int(env: dict, name: str, source: str) -> int:
    text = env.get(name, "")
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{source} variable {name}={text!r} is not an integer") from None
    if value < 0:
        raise ConfigError(f"{source} variable {name}={value} is negative")
    return value


def launch_from_env(env: Optional[Mapping[str, str]] = None) -> Launch:
    """Rank, world size and local rank from torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) or
    SLURM (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``); one process when neither set them.

    env: the environment to read (default ``os.environ``). A launcher counts as present when its
    rank and world-size variables are both set; a missing local rank is 0. ConfigError naming
    the variable on non-integers, a world size < 1, or a rank outside [0, world size).
    """
    env = dict(os.environ if env is None else env)
    for source, (rank_var, world_var, local_var) in LAUNCHERS:
        if rank_var in env and world_var in env:
            rank, world = _env_int(env, rank_var, source), _env_int(env, world_var, source)
            local = _env_int(env, local_var, source) if local_var in env else 0
            if world < 1:
                raise ConfigError(f"{source} variable {world_var}={world}: need at least 1 process")
            if rank >= world:
                raise ConfigError(f"{source} variables {rank_var}={rank}, {world_var}={world}: "
                                  "need 0 <= rank < world size")
            return Launch(rank, world, local, source)
    return Launch()


def parse_shard(text: str) -> "tuple[int, int] | str":
    """``"i/n"`` -> (i, n) with 0 <= i < n, or ``"auto"`` (resolved later by :func:`resolve_shard`);
    ValueError with a readable message otherwise."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard expects i/n (e.g. 0/4) or auto, got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n


def resolve_shard(shard: "tuple[int, int] | str", env: Optional[Mapping[str, str]] = None
                  ) -> tuple[tuple[int, int], Launch]:
    """(shard (i, n), launch): ``auto`` takes i and n from the launcher (:func:`launch_from_env`);
    an explicit i/n is kept (the launch then only tells the local rank, for the GPU)."""
    launch = launch_from_env(env)
    return (launch.shard if shard == "auto" else shard), launch


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
