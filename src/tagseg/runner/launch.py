"""Where a process stands in its launch (torchrun or SLURM) and which shard of a data set it takes.

Plain Python (no torch), so that parsing ``--shard`` and resolving ``--shard auto`` cost nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

from tagseg.errors import ConfigError

# (rank, world size, local rank) variables of each launcher, in the order they are looked for:
# torchrun first, since `srun torchrun ...` sets both and torchrun's numbering is the one in force.
LAUNCHERS = (
    ("torchrun", ("RANK", "WORLD_SIZE", "LOCAL_RANK")),
    ("slurm", ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")),
)


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
