"""Run ``tagseg`` command-line steps for the pipeline benchmarks, skipping finished ones and
recording each step's wall time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]


class Steps:
    """``steps(name, done, *args)`` runs ``python -m tagseg *args`` unless ``done`` exists (a step
    whose output is a per-image folder passes ``done=None``: the runner itself skips the finished
    images, so an interrupted step continues). Exits naming the command when a step fails.

    ``quiet``: capture the step's output (shown only when it fails); otherwise it streams.
    """

    def __init__(self, quiet: bool = True) -> None:
        self.times: dict[str, float] = {}
        self.quiet = quiet

    def __call__(self, name: str, done: Optional[Path], *args: str) -> None:
        if done is not None and done.exists():
            self.times.setdefault(name, 0.0)
            return
        t0 = time.time()
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        proc = subprocess.run([sys.executable, "-m", "tagseg", *args], env=env, capture_output=self.quiet, text=True)
        if proc.returncode != 0:
            detail = f"\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}" if self.quiet else ""
            sys.exit(f"step {name} failed: tagseg {' '.join(args)}{detail}")
        self.times[name] = time.time() - t0
        print(f"{name}: {self.times[name]:.0f} s", flush=True)

    def table(self) -> list[str]:
        """Markdown rows of the wall times (0 s: reused, its time unknown to this call)."""
        return ["| step | wall s |", "|---|---:|", *(f"| {k} | {v:.0f} |" for k, v in self.times.items()),
                "", f"Total: {sum(self.times.values()) / 60:.1f} min (0 s = reused from an earlier call)."]
