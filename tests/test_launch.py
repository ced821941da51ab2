"""Rank, world size and local rank from the launcher's environment (torchrun or SLURM)."""

from __future__ import annotations

import os

import pytest

from tagseg.engine.distributed import launch_device
from tagseg.runner.launch import Launch, launch_from_env, parse_shard, resolve_shard
from tagseg.errors import ConfigError


def test_launch_from_torchrun_slurm_or_nothing():
    assert launch_from_env({}) == Launch(0, 1, 0, "single")
    assert launch_from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == Launch(5, 8, 1, "torchrun")
    slurm = launch_from_env({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "3"})
    assert slurm == Launch(3, 4, 3, "slurm") and slurm.shard == (3, 4)
    # srun launching torchrun: torchrun's numbering is the one in force
    both = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0",
            "RANK": "6", "WORLD_SIZE": "16", "LOCAL_RANK": "2"}
    assert launch_from_env(both) == Launch(6, 16, 2, "torchrun")
    assert launch_from_env({"RANK": "0", "WORLD_SIZE": "2"}).local_rank == 0  # no LOCAL_RANK: 0
    assert launch_from_env({"SLURM_PROCID": "0"}) == Launch()  # a rank alone is no launch


@pytest.mark.parametrize("env, message", [
    ({"RANK": "x", "WORLD_SIZE": "2"}, r"torchrun variable RANK='x' is not an integer"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, r"RANK=2, WORLD_SIZE=2: need 0 <= rank < world size"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "0"}, r"slurm variable SLURM_NTASKS=0: need at least 1"),
    ({"SLURM_PROCID": "-1", "SLURM_NTASKS": "2"}, r"SLURM_PROCID=-1 is negative"),
])
def test_launch_errors_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        launch_from_env(env)


def test_launch_reads_the_process_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert launch_from_env() == Launch(1, 2, 1, "slurm")


def test_one_gpu_per_process():
    node_rank_3 = Launch(rank=11, world_size=16, local_rank=3, source="torchrun")
    assert launch_device(node_rank_3, "auto", cuda_count=8) == "cuda:3"
    assert launch_device(node_rank_3, "cuda", cuda_count=1) == "cuda:0"  # srun --gpus-per-task=1: one visible
    assert launch_device(node_rank_3, "auto", cuda_count=0) == "cpu"
    assert launch_device(node_rank_3, "cpu", cuda_count=8) == "cpu"
    assert launch_device(node_rank_3, "cuda:5", cuda_count=8) == "cuda:5"  # an explicit index is kept
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        launch_device(node_rank_3, "cuda", cuda_count=0)


def test_a_secondary_rank_locks_its_own_shard_but_not_the_shared_folder(tmp_path, monkeypatch):
    from tagseg.utils.runlock import run_lock

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with run_lock(tmp_path / "a", shard=(1, 2)) as path:  # --shard auto under torchrun: rank 1's shard
        assert path.name == ".lock.shard-1-of-2" and path.read_text().strip() == str(os.getpid())
    with run_lock(tmp_path / "b") as path:  # the run folder of a DDP job: rank 0 holds it
        assert not path.exists()


def test_shard_arguments():
    assert parse_shard("1/4") == (1, 4) and parse_shard("auto") == "auto" and parse_shard("AUTO") == "auto"
    for bad, message in (("4/4", "need 0 <= i < n"), ("x", "expects i/n"), ("1/2/3", "expects i/n")):
        with pytest.raises(ValueError, match=message):
            parse_shard(bad)
    env = {"SLURM_PROCID": "2", "SLURM_NTASKS": "3", "SLURM_LOCALID": "0"}
    assert resolve_shard("auto", env) == ((2, 3), Launch(2, 3, 0, "slurm"))
    assert resolve_shard((0, 5), env)[0] == (0, 5)  # explicit shards stay
    assert resolve_shard("auto", {})[0] == (0, 1)  # no launcher: the whole set


def test_parsing_and_resolving_a_shard_imports_no_torch():
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    probe = ("import sys; from tagseg.runner.launch import parse_shard, resolve_shard; "
             "assert resolve_shard(parse_shard('1/4'), {})[0] == (1, 4); "
             "assert resolve_shard(parse_shard('auto'), {'RANK': '1', 'WORLD_SIZE': '2'})[0] == (1, 2); "
             "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
