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
