"""benchmarks/gpu_check.py keeps working without a GPU: its tiny CPU run of the same code path."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, find_voc_subset


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs its full GPU check")
def test_gpu_check_runs_its_cpu_path_and_exits_0(tmp_path):
    out = tmp_path / "gpu.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src")}
    voc = find_voc_subset()
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"), "--out", str(out)]
    if voc is not None:
        cmd += ["--voc-root", str(voc)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)  # no timeout: a loaded machine is only slower
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "no CUDA device" in proc.stdout
    table = out.read_text()
    assert "not GPU numbers" in table
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert len([r for r in rows if r.startswith("training img/s")]) == 3  # fp32, bf16, bf16 + compile
    compile_row = [line for r, line in rows.items() if r.endswith("bf16 + compile")][0]
    assert "| skipped |" in compile_row and "--compile" in compile_row  # the CPU path does not compile unless asked
    assert len([r for r in rows if r.startswith("pseudo-mask img/s")]) == 2  # with and without CRF
    rel = float(re.search(r"relative difference ([0-9.e+-]+)", table).group(1))
    assert rel < 0.03  # bf16 step within 3% of fp32
    ddp = float(re.search(r"max abs weight difference ([0-9.e+-]+)", table).group(1))
    assert ddp < 1e-6  # one-process DDP (gloo here) = the plain step
    agreement = re.search(r"argmax agreement \| ([0-9.]+) %", table)
    if agreement is not None:  # pydensecrf2 installed
        assert float(agreement.group(1)) > 99.0
