"""install.sh: where PyTorch's CPU index cannot be reached, it stops with its message and installs
nothing (no half-installed environment). The index is a folder that does not exist: no network."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv

import pytest

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "install.sh"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_unreachable_cpu_index_fails_clearly_and_installs_nothing(tmp_path):
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    before = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")}, "PIP_CONFIG_FILE": os.devnull,
           "PYTHON": str(python), "TAGSEG_TORCH": "cpu", "TAGSEG_TORCH_INDEX": (tmp_path / "no-index").as_uri()}
    out = subprocess.run(["sh", str(SCRIPT), "test"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "install.sh: error: could not install PyTorch's CPU build from" in out.stderr
    assert "tagseg was not installed" in out.stderr and "TAGSEG_TORCH=pypi ./install.sh test" in out.stderr
    after = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    assert after == before  # nothing installed


def test_an_unknown_mode_is_refused():
    env = {**os.environ, "TAGSEG_TORCH": "gpu", "PYTHON": sys.executable}
    out = subprocess.run(["sh", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "TAGSEG_TORCH must be auto, cpu or pypi, got 'gpu'" in out.stderr


def _dry_run(tmp_path, nvidia_smi: str | None, **extra: str) -> str:
    """The choice install.sh makes with a stand-in ``nvidia-smi`` (None: not installed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if nvidia_smi is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\n{nvidia_smi}\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    path = os.pathsep.join([str(bin_dir)] + [p for p in os.environ.get("PATH", "").split(os.pathsep)
                                              if not (os.path.isdir(p) and os.path.exists(os.path.join(p, "nvidia-smi")))])
    env = {k: v for k, v in os.environ.items() if k != "TAGSEG_TORCH"}
    env.update({"PATH": path, "TAGSEG_INSTALL_DRY_RUN": "1", "PYTHON": "py", **extra})
    out = subprocess.run(["sh", str(SCRIPT), "test"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


linux_x86 = pytest.mark.skipif(not (sys.platform.startswith("linux") and os.uname().machine == "x86_64"),
                               reason="the CPU-build choice applies to Linux x86_64")


@linux_x86
def test_no_gpu_takes_the_cpu_build_pinned_with_its_label(tmp_path):
    out = _dry_run(tmp_path, None)
    assert out.startswith("install.sh: torch build: cpu\n")
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.14.1+cpu torchvision==0.29.1+cpu" in out
    assert out.rstrip().endswith("py -m pip install -c constraints.txt -e .[test]")


@linux_x86
def test_a_driver_without_a_gpu_is_no_gpu(tmp_path):
    assert _dry_run(tmp_path, "echo 'NVIDIA-SMI has failed' >&2; exit 9").startswith("install.sh: torch build: cpu")


@linux_x86
def test_a_gpu_takes_pypis_default_build(tmp_path):
    out = _dry_run(tmp_path, "echo 'GPU 0: NVIDIA H100 (UUID: GPU-x)'")
    assert out == "install.sh: torch build: pypi\npy -m pip install -c constraints.txt -e .[test]\n"


def test_the_choice_can_be_forced(tmp_path):
    assert _dry_run(tmp_path, None, TAGSEG_TORCH="pypi").startswith("install.sh: torch build: pypi\n")
    assert _dry_run(tmp_path, "echo GPU 0", TAGSEG_TORCH="cpu").startswith("install.sh: torch build: cpu\n")
