"""Start-up time of the command line: ``tagseg --help``, ``--version`` and every verb's ``--help``.

Each command runs N times in a fresh interpreter (``python -m tagseg ...``, as the installed
``tagseg`` script does); the table gives the median and the slowest wall-clock time, and whether
torch was imported (it must not be: the verbs import it only when they run). The machine's
load average is printed with the table, since other work on the machine slows every start.

    python benchmarks/startup.py            # 7 runs per command
    python benchmarks/startup.py --runs 15
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [["--help"], ["--version"], ["demo", "--help"], ["train", "--help"], ["pseudo", "--help"],
            ["eval", "--help"], ["configs", "--help"], ["report", "--help"], ["segment", "train", "--help"],
            ["segment", "eval", "--help"], ["predict", "--help"], ["prepare", "voc", "--help"],
            ["prepare", "coco", "--help"]]
# Runs the command line as `python -m tagseg` does and reports whether torch got imported.
PROBE = ("import sys, runpy, io, contextlib\n"
         "sys.argv = ['tagseg', *sys.argv[1:]]\n"
         "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
         "    runpy.run_module('tagseg', run_name='__main__')\n"
         "print('torch' in sys.modules)\n")


def time_command(argv: list[str], runs: int, env: dict) -> tuple[float, float, bool]:
    """Median and slowest seconds over ``runs`` fresh interpreters; whether torch was imported."""
    times, torch_loaded = [], False
    for _ in range(runs):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - start)
        if out.returncode != 0:
            sys.exit(f"{' '.join(argv)} failed: {out.stderr[-2000:]}")
        torch_loaded |= out.stdout.strip().endswith("True")
    return statistics.median(times), max(times), torch_loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per command (default 7)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    load = os.getloadavg()[0]
    rows = [(argv, *time_command(argv, args.runs, env)) for argv in COMMANDS]
    print(f"tagseg start-up, median of {args.runs} runs; {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, load average {load:.1f} before and {os.getloadavg()[0]:.1f} after\n")
    print("| command | median s | slowest s | imports torch |")
    print("| --- | ---: | ---: | --- |")
    for argv, median, slowest, torch_loaded in rows:
        print(f"| `tagseg {' '.join(argv)}` | {median:.2f} | {slowest:.2f} | {'yes' if torch_loaded else 'no'} |")


if __name__ == "__main__":
    main()
