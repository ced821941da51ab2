"""Re-measure the numbers the README states about ``tagseg demo`` and record them with the machine.

Runs the README's command (``python -m tagseg demo``) in a fresh folder exactly as a user would,
times it from start to the final table, reads the scores it wrote (``eval.json``) and printed
(the chance rows), checks the modes of the files it wrote against the umask, and writes
``benchmarks/results/readme_demo.json``. ``tests/test_readme.py`` then checks that README.md
states these numbers, the time, and the machine and load they were measured on.

    python benchmarks/readme_numbers.py              # measure and write the results file
    python benchmarks/readme_numbers.py --print      # only print the README paragraph from the file

The demo trains with the machine's default threads (as a user's first run does); the machine's
load average is recorded before and after, since other work on the machine slows it down.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "readme_demo.json"
CHANCE = re.compile(r"^chance: (?P<name>.+?)\s+(?P<miou>\d+\.\d)\s+(?P<acc>\d+\.\d)\s*$")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure() -> dict:
    """Run the demo once in a temporary folder; the numbers, the time and the conditions."""
    import torch

    with tempfile.TemporaryDirectory(prefix="tagseg-demo-") as tmp:
        out = Path(tmp) / "runs" / "demo"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               "TMPDIR": tmp}  # its worker processes' sockets live here, safe from clean-ups of the shared /tmp
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "tagseg", "demo", "--out", str(out)], capture_output=True,
                             text=True, env=env, cwd=tmp)
        seconds = time.perf_counter() - start
        load_after = os.getloadavg()[0]
        if run.returncode != 0:
            sys.exit(f"tagseg demo failed ({run.returncode}):\n{run.stderr[-3000:]}")
        summary = json.loads((out / "pseudo" / "train" / "eval.json").read_text())
        chance = {m["name"]: float(m["miou"]) for m in map(CHANCE.match, run.stdout.splitlines()) if m}
        mask = os.umask(0o022)
        os.umask(mask)
        files = [p for p in out.rglob("*") if p.is_file() and p.name != ".lock"]
        modes = sorted({oct(stat.S_IMODE(p.stat().st_mode)) for p in files})
    return {
        "command": "tagseg demo",
        "seconds": round(seconds),
        "images": int(summary["images"]),
        "miou": round(100 * summary["miou"], 1),
        "pixel_accuracy": round(100 * summary["pixel_accuracy"], 1),
        "contour_f": round(100 * summary["contour_f"], 1),
        "j_and_f": round(100 * summary["j_and_f"], 1),
        "chance_miou": {k: round(v, 1) for k, v in chance.items()},
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": torch.cuda.is_available(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "load_average_1min": {"before": round(load_before, 1), "after": round(load_after, 1)},
        "output_files": len(files), "output_file_modes": modes, "umask": oct(mask),
        "measured": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def readme_paragraph(r: dict) -> str:
    """The README's demo paragraph, from a results record (tests/test_readme.py compares them)."""
    chance = r["chance_miou"]
    m = r["machine"]
    return (f"Measured with `python benchmarks/readme_numbers.py` ({r['measured']}; {m['cores']} CPU cores, "
            f"{m['cpu']}, {'a GPU' if m['gpu'] else 'no GPU'}, load average {r['load_average_1min']['before']} "
            f"before and {r['load_average_1min']['after']} after, from other work on the machine): "
            f"{r['seconds']} s from start to table; pseudo-mask mIoU {r['miou']} on the {r['images']} training "
            f"images (pixel accuracy {r['pixel_accuracy']}, contour F {r['contour_f']} with the DAVIS "
            f"`seg2bmap` boundary, J&F {r['j_and_f']}), against {chance['all background']} for \"all background\", "
            f"{chance['random present class']} for a random present class per pixel and "
            f"{chance['one present class']} for one present class everywhere. The {r['output_files']} files it "
            f"wrote had mode{'s' if len(r['output_file_modes']) > 1 else ''} "
            f"{', '.join(f'{int(m, 8):04o}' for m in r['output_file_modes'])} under umask {int(r['umask'], 8):03o}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--print", action="store_true", help="print the README paragraph from the results file")
    args = parser.parse_args()
    if not args.print:
        record = measure()
        RESULTS.write_text(json.dumps(record, indent=2) + "\n")
        print(f"-> {RESULTS}")
    print(readme_paragraph(json.loads(RESULTS.read_text())))


if __name__ == "__main__":
    main()
