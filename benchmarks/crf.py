"""Dense CRF backends: agreement with pydensecrf2 and speed, on the VOC 2012 subset.

Input probabilities are a fixed, deterministic corruption of the ground truth: one-hot GT
(255 -> background) over the classes present in the image, Gaussian-blurred, mixed with
uniform noise and renormalised (seed = the image id's digits). Classes absent from the GT
get probability 0, so ``present_only`` runs the CRF on the GT classes only.

    # agreement on every image (writes one JSON line per image, resumable, then a summary)
    python benchmarks/crf.py agreement --voc-root DATA --out agreement.jsonl
    # speed table (both backends interleaved on the same images)
    python benchmarks/crf.py speed --voc-root DATA --images 20 --runs 2 --threads 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from tagseg.inference.crf import CRF_PRESETS, dense_crf
from tagseg.inference.crf.torch_backend import clear_lattice_cache

NUM_CLASSES = 21
IGNORE = 255


def noisy_probs(gt: np.ndarray, seed: int, sigma: float = 15.0, noise: float = 0.7) -> np.ndarray:
    """Corrupted ground truth: float32 (21, H, W), > 0 only for the classes present in ``gt``."""
    labels = gt.copy()
    labels[labels == IGNORE] = 0
    present = np.unique(labels)
    onehot = (labels[None] == present[:, None, None]).astype(np.float32)
    blurred = gaussian_filter(onehot, sigma=(0, sigma, sigma))
    rng = np.random.default_rng(seed)
    mixed = (1 - noise) * blurred + noise * rng.random(onehot.shape, dtype=np.float32)
    mixed /= mixed.sum(0, keepdims=True)
    probs = np.zeros((NUM_CLASSES,) + gt.shape, dtype=np.float32)
    probs[present] = mixed
    return probs


def load(root: Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(Image.open(root / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
    gt = np.asarray(Image.open(root / "SegmentationClassAug" / f"{image_id}.png"))
    return image, gt


def image_ids(root: Path) -> list[str]:
    ids: set[str] = set()
    for name in ("train_aug.txt", "val.txt"):
        path = root / "ImageSets" / "Segmentation" / name
        ids.update(path.read_text().split())
    return sorted(ids)


def confusion(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(21, 21) int64 counts, rows = GT class, cols = prediction, GT 255 excluded."""
    valid = gt != IGNORE
    idx = gt[valid].astype(np.int64) * NUM_CLASSES + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def miou(conf: np.ndarray) -> tuple[float, int]:
    """Mean IoU (%) over classes present in GT or prediction, and how many classes that is."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    used = union > 0
    return float((tp[used] / union[used]).mean() * 100), int(used.sum())


def run_agreement(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    root = Path(args.voc_root)
    params = CRF_PRESETS[args.preset]
    ids = image_ids(root)[: args.limit] if args.limit else image_ids(root)
    out = Path(args.out)
    done: set[str] = set()
    if out.exists():
        done = {json.loads(line)["id"] for line in out.read_text().splitlines() if line.strip()}
    with out.open("a") as fh:
        for n, image_id in enumerate(ids):
            if image_id in done:
                continue
            image, gt = load(root, image_id)
            probs = noisy_probs(gt, int(image_id.replace("_", "")))
            t0 = time.process_time()
            q_torch = dense_crf(image, probs, params, backend="torch")
            t1 = time.process_time()
            q_ref = dense_crf(image, probs, params, backend="pydensecrf")
            t2 = time.process_time()
            a_torch, a_ref, a_in = q_torch.argmax(0), q_ref.argmax(0), probs.argmax(0)
            rec = {
                "id": image_id,
                "pixels": int(gt.size),
                "agree": int((a_torch == a_ref).sum()),
                "max_abs_prob_diff": float(np.abs(q_torch - q_ref).max()),
                "cpu_s_torch": round(t1 - t0, 4),
                "cpu_s_pydensecrf": round(t2 - t1, 4),
                "conf_torch": confusion(gt, a_torch).tolist(),
                "conf_pydensecrf": confusion(gt, a_ref).tolist(),
                "conf_input": confusion(gt, a_in).tolist(),
            }
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            if n % 50 == 0:
                print(f"{n}/{len(ids)} {image_id} agree {rec['agree'] / rec['pixels']:.5f}", flush=True)
    summarize(out, len(ids))


def summarize(path: Path, expected: int | None = None) -> None:
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    pixels = sum(r["pixels"] for r in recs)
    agree = sum(r["agree"] for r in recs)
    per_image = np.array([r["agree"] / r["pixels"] for r in recs])
    print(f"images: {len(recs)}" + (f" of {expected}" if expected else ""))
    print(f"pixel agreement (argmax torch == pydensecrf): {agree / pixels * 100:.4f}% of {pixels} pixels")
    print(
        f"per-image agreement: min {per_image.min() * 100:.3f}%  1st percentile "
        f"{np.percentile(per_image, 1) * 100:.3f}%  median {np.median(per_image) * 100:.4f}%  "
        f"images with 100%: {(per_image == 1).sum()}"
    )
    diffs = np.array([r["max_abs_prob_diff"] for r in recs])
    print(f"max |p_torch - p_pydensecrf| per image: median {np.median(diffs):.2e}  max {diffs.max():.2e}")
    for key, name in (("conf_input", "input (no CRF)"), ("conf_pydensecrf", "pydensecrf2"), ("conf_torch", "torch")):
        conf = np.sum([np.asarray(r[key]) for r in recs], axis=0)
        value, used = miou(conf)
        print(f"mIoU vs GT, {name}: {value:.3f} (mean over {used} classes present in GT or prediction)")
    t_torch = sum(r["cpu_s_torch"] for r in recs)
    t_ref = sum(r["cpu_s_pydensecrf"] for r in recs)
    print(f"CPU seconds per image: torch {t_torch / len(recs):.3f}, pydensecrf2 {t_ref / len(recs):.3f}")


def _timed(fn, *args, **kwargs) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn(*args, **kwargs)
    return time.perf_counter() - w, time.process_time() - c


def run_speed(args: argparse.Namespace) -> None:
    root = Path(args.voc_root)
    params = CRF_PRESETS[args.preset]
    ids = sorted((root / "ImageSets" / "Segmentation" / "val.txt").read_text().split())[: args.images]
    data = []
    for image_id in ids:
        image, gt = load(root, image_id)
        data.append((image_id, image, noisy_probs(gt, int(image_id.replace("_", "")))))
    ks = [int((p.reshape(NUM_CLASSES, -1).max(1) > 0).sum()) for _, _, p in data]
    print(f"# {len(data)} val images, preset {args.preset!r}, {args.runs} run(s) each, present classes "
          f"per image: mean {statistics.mean(ks):.2f} (min {min(ks)}, max {max(ks)})")
    print(f"# {platform.processor() or platform.machine()}, os.cpu_count()={os.cpu_count()}, torch {torch.__version__}")
    # "torch": the position-only lattice of this image size is already cached (as in a
    # dataset loop where sizes repeat); "torch-cold": cache cleared before the call.
    configs = [("pydensecrf", True), ("torch", True), ("torch-cold", True),
               ("pydensecrf", False), ("torch", False)]
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        times: dict[tuple[str, bool], list[tuple[float, float]]] = {c: [] for c in configs}
        for _, image, probs in data:
            dense_crf(image, probs, params)  # untimed: primes the cache for this size
            for _ in range(args.runs):
                for name, present in configs:  # interleaved: same load conditions for both
                    backend = "pydensecrf" if name == "pydensecrf" else "torch"
                    if name == "torch-cold":
                        clear_lattice_cache()
                    times[(name, present)].append(
                        _timed(dense_crf, image, probs, params, backend=backend, present_only=present)
                    )
        for name, present in configs:
            wall = statistics.mean(t[0] for t in times[(name, present)])
            cpu = statistics.mean(t[1] for t in times[(name, present)])
            rows.append((f"cpu, {threads} thread(s)", name, "present" if present else "all 21", wall, cpu))
        def mean(name: str, present: bool, k: int) -> float:
            return statistics.mean(t[k] for t in times[(name, present)])

        for name, present in (("torch", True), ("torch-cold", True), ("torch", False)):
            print(f"# {threads} thread(s), {'present' if present else 'all 21'}: pydensecrf / {name} time "
                  f"ratio: wall {mean('pydensecrf', present, 0) / mean(name, present, 0):.2f}, "
                  f"CPU {mean('pydensecrf', present, 1) / mean(name, present, 1):.2f}", flush=True)
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        for present in (True, False):
            samples = []
            for _, image, probs in data:
                img_t = torch.from_numpy(image).to(dev)
                p_t = torch.from_numpy(probs).to(dev)
                dense_crf(img_t, p_t, params, present_only=present)  # warm-up
                for _ in range(args.runs):
                    torch.cuda.synchronize()
                    w = time.perf_counter()
                    dense_crf(img_t, p_t, params, present_only=present)
                    torch.cuda.synchronize()
                    samples.append(time.perf_counter() - w)
            rows.append((f"gpu {torch.cuda.get_device_name()}", "torch", "present" if present else "all 21",
                         statistics.mean(samples), float("nan")))
    else:
        print("# no CUDA device: GPU timings not taken")
    print()
    print("| device | backend | classes | wall s / image | CPU s / image |")
    print("|---|---|---|---:|---:|")
    for device, name, classes, wall, cpu in rows:
        print(f"| {device} | {name} | {classes} | {wall:.3f} | {cpu:.3f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("agreement", "speed"):
        p = sub.add_parser(mode)
        p.add_argument("--voc-root", required=True)
        p.add_argument("--preset", default="patch", choices=sorted(CRF_PRESETS))
    agreement = sub.choices["agreement"]
    agreement.add_argument("--out", required=True, help="JSON-lines file (appended to; resumable)")
    agreement.add_argument("--limit", type=int, default=0, help="only the first N ids (0 = all)")
    agreement.add_argument("--threads", type=int, default=1)
    agreement.add_argument("--summary-only", action="store_true")
    speed = sub.choices["speed"]
    speed.add_argument("--images", type=int, default=20)
    speed.add_argument("--runs", type=int, default=2)
    speed.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    if args.mode == "agreement":
        if args.summary_only:
            summarize(Path(args.out))
        else:
            run_agreement(args)
    else:
        run_speed(args)


if __name__ == "__main__":
    sys.exit(main())
