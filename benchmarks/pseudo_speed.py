"""Pseudo-mask speed (img/s) of ``tagseg pseudo`` with 1 or 2 threads × 1 or 2 worker processes.

One run of this script measures every row on the same images: it trains a tiny model once
(``tagseg train``: EfficientNet-Lite0 architecture, random initialisation, 1 epoch on 8 images
at 128 px, a few seconds: the weights do not change the speed), then runs ``tagseg pseudo``
once per setting, in interleaved rounds, each in a fresh process exactly as a user would (model
loading and, for 2 workers, process start-up included in the command's own timing). The rate is
``pseudo``'s own "img/s" (images / seconds from the first to the last mask); a round's warm-up run
(not reported) fills the file cache first. The best of the rounds counts for each row.

    python benchmarks/pseudo_speed.py --voc ../shared/data/voc12-subset --images 48 --rounds 2

The default row is what ``tagseg pseudo`` does on a CPU without ``--threads``/``--workers``
(:func:`tagseg.utils.runtime.inference_processes`: single-threaded processes, one per core when
there are at least 128 images per process, else one). The table says whether it is within 15 %
of the best row.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [(1, 1), (2, 1), (1, 2), (2, 2)]  # (threads per process, worker processes)
RATE = re.compile(r"([0-9.]+) img/s")


def tagseg(*args: str, env: dict) -> str:
    """Run ``python -m tagseg ARGS`` (this checkout's sources first); stdout, or exit on failure."""
    proc = subprocess.run([sys.executable, "-m", "tagseg", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"tagseg {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def default_setting(images: int) -> tuple[int, int]:
    """(threads, workers) of ``tagseg pseudo`` on this machine's CPU without --threads / --workers."""
    sys.path.insert(0, str(REPO / "src"))
    from tagseg.utils.runtime import inference_processes

    return inference_processes("cpu", images)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voc", default=str(REPO.parent / "shared" / "data" / "voc12-subset"),
                    help="VOC 2012 subset (default: ../shared/data/voc12-subset next to the repository)")
    ap.add_argument("--images", type=int, default=48, help="images per measurement (default 48)")
    ap.add_argument("--image-size", type=int, default=320, help="pseudo.image_size (default 320)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best counts (default 2)")
    ap.add_argument("--work", help="working folder (default: a temporary folder)")
    ap.add_argument("--out", help="also write the markdown table to this file")
    args = ap.parse_args()
    voc = Path(args.voc)
    if not (voc / "JPEGImages").is_dir():
        sys.exit(f"VOC subset not found at {voc} (pass --voc)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("OMP_NUM_THREADS", None)  # the command's --threads decides
    work = Path(args.work or tempfile.mkdtemp(prefix="pseudo_speed_"))
    run = work / "run"
    common = [f"data.root={voc}", "data.train_split=train_aug", "data.pseudo_split=train_aug", "data.num_workers=0",
              "model.encoder=tf_efficientnet_lite0", "model.pretrained=false"]
    t0 = time.time()
    reused = (run / "model.safetensors").is_file()
    if not reused:
        tagseg("train", "--config", "tkpcl_voc", "--out", str(run), "--threads", "2", *common, "data.max_images=8",
               "data.image_size=128", "method.et_crop_size=48", "train.epochs=1", "train.warmup_epochs=0",
               "train.batch_size=4", env=env)
    train_s = time.time() - t0
    pseudo = [f"data.max_images={args.images}", f"pseudo.image_size={args.image_size}", "pseudo.scales=[1.0]",
              "pseudo.flip=false"]
    rates: dict[tuple[int, int], list[float]] = {s: [] for s in SETTINGS}
    for r in range(args.rounds):
        tagseg("pseudo", "--run", str(run), "--out", str(work / "warm"), "--overwrite", "--threads", "1", *pseudo,
               env=env)  # warm-up: file cache, lazy imports
        for threads, workers in SETTINGS:
            out = tagseg("pseudo", "--run", str(run), "--out", str(work / f"t{threads}w{workers}"), "--overwrite",
                         "--threads", str(threads), "--workers", str(workers), *pseudo, env=env)
            m = RATE.search(out)
            if not m:
                sys.exit(f"no img/s in the output of pseudo: {out}")
            rates[(threads, workers)].append(float(m.group(1)))
            print(f"round {r + 1}: threads {threads} × workers {workers}: {m.group(1)} img/s", file=sys.stderr)
    best = {s: max(v) for s, v in rates.items()}
    top = max(best.values())
    cores = os.cpu_count() or 1
    default = default_setting(args.images)
    lines = [f"| threads | workers | img/s (best of {args.rounds}) | all rounds | vs best |",
             "|---:|---:|---:|---|---:|"]
    for s in SETTINGS:
        mark = " **default**" if s == default else ""
        lines.append(f"| {s[0]} | {s[1]}{mark} | {best[s]:.2f} | {', '.join(f'{v:.2f}' for v in rates[s])} | "
                     f"{100 * best[s] / top:.0f}% |")
    ratio = best[default] / top if default in best else float("nan")
    verdict = (f"The default (threads {default[0]}, workers {default[1]}) runs at {100 * ratio:.0f}% of the best row: "
               + ("within 15%." if ratio >= 0.85 else "NOT within 15% of the best row."))
    setup = (f"{args.images} VOC images (train_aug, first {args.images}), pseudo.image_size={args.image_size}, "
             f"scales [1.0], no flip, no CRF; model: EfficientNet-Lite0 architecture with random initialisation, "
             f"trained 1 epoch on 8 images at 128 px ({'reused from --work' if reused else f'{train_s:.0f} s'}); "
             f"{cores} CPU cores, "
             f"{platform.processor() or platform.machine()}, "
             f"Python {platform.python_version()}.")
    text = "\n".join([*lines, "", verdict, "", setup]) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if ratio >= 0.85 else 1


if __name__ == "__main__":
    sys.exit(main())
