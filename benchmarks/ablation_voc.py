"""TKP-PCL ablation on real VOC images with an ImageNet-pretrained EfficientNet-Lite backbone.

Trains each variant on the VOC subset's ``train_aug`` images (image-level labels only), makes
pseudo-masks for the ``train_aug`` and ``val`` images (with and without flip averaging) and
scores them against the ground-truth masks. Variants (METHODS.md §1):

    avg             average pooling (+ L_ET)
    max             global max pooling + L_ET (ViT-PCM)
    topk            top-K pooling (+ L_ET)
    topk+pce        top-K + PCE + L_ET (TKP-PCL)
    topk+pce-et     top-K + PCE, no L_ET

each for several seeds, plus a sweep of k and of the PCE threshold at one seed. Every run's
metrics are cached as JSON under --work, so an interrupted benchmark resumes.

Usage (the command the committed results came from is in benchmarks/results/ablation_voc.md):

    python benchmarks/ablation_voc.py --voc ../shared/data/voc12-subset
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tagseg.config import load_config
from tagseg.data.build import build_index
from tagseg.metrics.predict_and_score import predict_and_score
from tagseg.data.views import image_to_tensor
from tagseg.metrics.scorer import Scorer
from tagseg.methods.label_merge import label_merge
from tagseg.inference.loading import load_patch_classifier
from tagseg.classify.trainer import Trainer
from tagseg.utils.io import read_image, save_mask_png, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/seed_stats.py
from patch_variants import ORDERING  # noqa: E402
from seed_stats import mean_std  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    **ORDERING,
    "topk+pce-et": ["method.pooling=topk", "method.pce_weight=0.01", "method.et_weight=0"],
}
LABELS = {
    "avg": "avg pooling (+ L_ET)",
    "max": "max pooling + L_ET (ViT-PCM)",
    "topk": "top-K (+ L_ET)",
    "topk+pce": "top-K + PCE + L_ET (TKP-PCL)",
    "topk+pce-et": "top-K + PCE, no L_ET",
}
K_SWEEP = (1, 3, 6, 12)
THRESHOLD_SWEEP = (0.7, 0.85, 0.95)


def base_overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"data.root={args.voc}", "data.dataset=voc", "data.train_split=train_aug",
        f"data.image_size={args.size}", f"data.num_workers={args.workers}",
        f"data.max_images={args.max_images}",
        "model.encoder=tf_efficientnet_lite0", "model.weights=lite", "model.pretrained=false",
        "model.cnn_grid=dilated",
        f"method.et_crop_size={args.size // 3 // 16 * 16}",
        f"train.epochs={args.epochs}", f"train.warmup_epochs={args.epochs}", "train.warmup_lr=1e-3",
        f"train.batch_size={args.batch}", f"pseudo.image_size={args.infer_size}",
        f"train.cpu_threads={args.threads}",
    ]


@torch.no_grad()
def score_run(model_path: Path, args: argparse.Namespace, save_dir: Path | None = None) -> dict:
    """Pseudo-mask mIoU on train_aug and val, without and with horizontal-flip averaging.

    save_dir: also write the train_aug pseudo-masks (no flip) there as <id>.png."""
    model, cfg, _ = load_patch_classifier(model_path)
    out = {}
    for split in ("train_aug", "val"):
        cfg.data.max_images = args.max_images
        index = build_index(cfg.data, split)
        scorers = {name: Scorer(index.num_classes, index.class_names, contour=False, per_image=False)
                   for name in ("plain", "flip")}

        def predict(rec, gt: np.ndarray, split: str = split, index=index) -> dict[str, np.ndarray]:
            image = read_image(rec.image_path)
            x = F.interpolate(image_to_tensor(image)[None], size=(args.infer_size, args.infer_size),
                              mode="bilinear", align_corners=False, antialias=True)
            z = model(torch.cat([x, x.flip(-1)])).probs.permute(0, 3, 1, 2)  # (2, K, h, w)
            views = {"plain": z[:1], "flip": (z[:1] + z[1:].flip(-1)) / 2}
            labels = torch.from_numpy(rec.labels)[None]
            masks = {}
            for name, zz in views.items():
                merged = label_merge(zz, labels)
                up = F.interpolate(merged, size=gt.shape, mode="bilinear", align_corners=False)
                masks[name] = up[0].argmax(0).numpy().astype(np.uint8)
            if save_dir is not None and split == "train_aug":
                save_mask_png(save_dir / f"{rec.id}.png", masks["plain"], index.palette)
            return masks

        predict_and_score(index.records, predict, scorers, index.num_classes)
        for name, scorer in scorers.items():
            s = scorer.summary()
            out[f"{split}/{name}"] = {"miou": s["miou"], "iou": s["iou"], "classes": s["miou_classes"]}
    return out


def run_one(name: str, overrides: list[str], seed: int, args: argparse.Namespace) -> dict:
    """Train (unless cached) and score one configuration; returns its metrics record."""
    run_dir = args.work / f"{name}-seed{seed}"
    result_path = run_dir / "ablation.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    cfg = load_config("tkpcl_voc", [*base_overrides(args), *overrides, f"seed={seed}", f"name={name}"])
    t0 = time.time()
    model_path = Trainer(cfg, run_dir, resume=True, show_progress=False).fit()
    t_train = time.time() - t0
    save = run_dir / "pseudo_train_aug" if (name == "topk+pce" and seed == args.seeds[0]) else None
    metrics = score_run(model_path, args, save)
    record = {"name": name, "seed": seed, "overrides": overrides, "train_seconds": round(t_train, 1),
              "score_seconds": round(time.time() - t0 - t_train, 1), "metrics": metrics}
    write_json(result_path, record)
    return record

COLUMNS = ("train_aug/plain", "train_aug/flip", "val/plain", "val/flip")


def table(rows: list[tuple[str, list[dict]]]) -> str:
    head = "| variant | runs | train_aug | train_aug + flip | val | val + flip |\n|---|---|---|---|---|---|"
    lines = [head]
    for label, recs in rows:
        cells = [mean_std([r["metrics"][c]["miou"] for r in recs]) for c in COLUMNS]
        lines.append(f"| {label} | {len(recs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voc", type=Path, default=Path("../shared/data/voc12-subset"))
    p.add_argument("--work", type=Path, default=Path("runs/ablation_voc"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ablation_voc.md"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--size", type=int, default=192, help="training input size (px)")
    p.add_argument("--infer-size", type=int, default=320, help="pseudo-mask inference size (px)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-images", type=int, default=0, help="0 = every image of each split")
    p.add_argument("--no-sweeps", action="store_true")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="run only these variants (runs are cached, so several processes can share the work "
                        "on disjoint variants; a final call with all variants assembles the tables)")
    p.add_argument("--sweeps-only", action="store_true", help="run only the k / threshold sweeps")
    p.add_argument("--sweeps", choices=("both", "k", "threshold"), default="both",
                   help="which sweep(s) to run (to split them over processes)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    records: dict[str, list[dict]] = {}
    for name, overrides in VARIANTS.items():
        if args.sweeps_only or name not in args.variants:
            continue
        for seed in args.seeds:
            rec = run_one(name, overrides, seed, args)
            records.setdefault(name, []).append(rec)
            print(f"{name:<12} seed {seed}: " + "  ".join(
                f"{c}={100 * rec['metrics'][c]['miou']:.1f}" for c in COLUMNS) + f"  ({rec['train_seconds']}s train)",
                flush=True)
    sweep_rows_k, sweep_rows_t = [], []
    if not args.no_sweeps:
        s0 = args.seeds[0]
        base = run_one("topk+pce", VARIANTS["topk+pce"], s0, args)  # k = 6, τ_h = 0.85
        for k in K_SWEEP if args.sweeps in ("both", "k") else ():
            rec = base if k == 6 else run_one(f"sweep-k{k}", VARIANTS["topk+pce"] + [f"method.topk={k}"], s0, args)
            sweep_rows_k.append((f"k = {k}", [rec]))
        for thr in THRESHOLD_SWEEP if args.sweeps in ("both", "threshold") else ():
            rec = base if thr == 0.85 else run_one(
                f"sweep-t{thr}", VARIANTS["topk+pce"] + [f"method.pce_threshold={thr}"], s0, args)
            sweep_rows_t.append((f"τ_h = {thr}", [rec]))
    elapsed = time.time() - t0
    main_table = table([(LABELS[n], records[n]) for n in VARIANTS if n in records])
    print(main_table)
    all_recs = [r for rs in records.values() for r in rs] + [r for _, rs in sweep_rows_k + sweep_rows_t for r in rs]
    train_s = sum(r["train_seconds"] + r["score_seconds"] for r in {id(r): r for r in all_recs}.values())
    cmd = "python benchmarks/ablation_voc.py " + " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    report = {
        "command": cmd, "seconds_this_invocation": round(elapsed), "seconds_all_runs": round(train_s),
        "hardware": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                    f"{torch.get_num_threads()} threads",
        "main": {n: [r["metrics"] for r in rs] for n, rs in records.items()},
    }
    args.work.mkdir(parents=True, exist_ok=True)
    write_json(args.work / "summary.json", report)
    for rows in (sweep_rows_k, sweep_rows_t):
        if rows:
            print(table(rows))
    print(f"total {elapsed:.0f}s this invocation; {train_s:.0f}s summed over all runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
