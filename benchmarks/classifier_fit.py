"""Does the CAM family's tag classifier fit its tags, and does fitting them cost localisation?

Each variant of the CAM recipe is trained on the image-level labels of the first ``--max-images``
``train_aug`` images of the VOC subset (ImageNet EfficientNet-Lite0, ``model.weights=lite``) and
judged on the first ``--val-images`` ``val`` images:

- fit: the soft-margin training loss, mean over the last epoch (log 2 ≈ 0.693 is chance; a
  classifier that knows only how often each class occurs reaches the entropy of the tags,
  printed as the "prior-only" line);
- tags: the image-level scores sigmoid(GAP(CAMs) + prior) at one scale: mAP over the classes
  present in those val images (blind to a per-class offset, so it measures ranking, not the prior)
  and micro F1 at 0.5 (which needs calibrated offsets);
- localisation: pseudo-mask mIoU (CAMs with the ground-truth tags, one scale) at the background
  threshold chosen on the same val images (best of a sweep; ties to the lower threshold).

Variants (overrides on top of the shipped ``cam_voc`` at the benchmark's budget):

    cam             today's recipe: Adam, 1 warm-up epoch (backbone frozen, lr 1e-3), then the last
                    --unfreeze block groups at lr 1e-4, model.bn=adapt, bias-free head
    frozen          model.bn=frozen (BatchNorm statistics fixed, as the official CAM code)
    prior0          cam.class_prior=zero (learnt logit offset starting at 0; never enters the CAMs)
    prior           cam.class_prior=tags (the same, starting at the log-odds of the training tags)
    frozen+prior    both
    sgd-irn         the CAM recipe of jiwoon-ahn/irn (step/train_cam.py, misc/torchutils.py): SGD,
                    lr 0.1 with the head at 10×, weight decay 1e-4, momentum 1e-4 (its optimizer passes
                    the weight decay as SGD's momentum), poly decay (power 0.9) per step, BatchNorm
                    fixed, every layer trained from the first step
    sgd             the optimizer of the shipped ``cam_voc_official`` (the SEAM-based code of PPC and
                    HFPL): the same with lr 0.01, weight decay 5e-4, momentum 5e-4
    sgd+prior       + cam.class_prior=tags

Every run is cached as ``<work>/<variant>-seed<s>/fit.json`` with its settings (a half-trained run
resumes from its checkpoint), so the benchmark resumes; another setting needs another ``--work``
(a cached run with other settings is refused); ``--cached-only`` only tabulates.

    python benchmarks/classifier_fit.py --voc ../shared/data/voc12-subset --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tagseg.config import load_config
from tagseg.data.build import build_index
from tagseg.data.views import image_to_tensor
from tagseg.errors import TrainingError
from tagseg.metrics.miou import ConfusionMatrix
from tagseg.metrics.predict_and_score import predict_and_score
from tagseg.inference.cam import normalised_cams
from tagseg.inference.loading import load_trained_model
from tagseg.methods.cam_objective import cam_pseudo_mask, tag_frequencies
from tagseg.classify.trainer import Trainer
from tagseg.utils.io import read_image, write_json

PRIOR = ["cam.class_prior=tags"]
FROZEN = ["model.bn=frozen"]
SGD_POLY = ["train.optimizer=sgd", "train.lr_schedule=poly", "train.head_lr_mult=10", "train.poly_power=0.9",
            "train.warmup_epochs=0", "model.bn=frozen"]
SGD_IRN = [*SGD_POLY, "train.lr=0.1", "train.weight_decay=1e-4", "train.momentum=1e-4"]
SGD = [*SGD_POLY, "train.lr=0.01", "train.weight_decay=5e-4", "train.momentum=5e-4"]
VARIANTS: dict[str, list[str]] = {
    "cam": [],
    "frozen": FROZEN,
    "prior0": ["cam.class_prior=zero"],
    "prior": PRIOR,
    "frozen+prior": [*FROZEN, *PRIOR],
    "sgd-irn": SGD_IRN,
    "sgd": SGD,
    "sgd+prior": [*SGD, *PRIOR],
}
BG_SWEEP = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6)


def overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"data.root={args.voc}", "data.dataset=voc", "data.train_split=train_aug", "data.val_split=val",
        f"data.image_size={args.size}", f"data.num_workers={args.workers}", f"data.max_images={args.max_images}",
        "model.encoder=tf_efficientnet_lite0", "model.weights=lite", "model.pretrained=false",
        f"train.epochs={args.epochs}", "train.warmup_epochs=1", "train.warmup_lr=1e-3", "train.lr=1e-4",
        f"train.unfreeze_blocks={args.unfreeze}", f"train.batch_size={args.batch}",
        f"train.cpu_threads={args.threads}", "device=cpu",
        f"pseudo.image_size={args.infer_size}", "pseudo.scales=[1.0]", "pseudo.flip=false",
    ]


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of one class: scores (N,), positive (N,) bool with at least one True -> the mean over the
    positives of the precision among the images ranked at or above each (ties: stable, input order)."""
    order = np.argsort(-scores, kind="stable")
    hits = positive[order].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def tag_scores(probs: np.ndarray, targets: np.ndarray) -> dict:
    """probs, targets (N, C) -> mAP over the classes with a positive, micro F1 at 0.5."""
    aps = [average_precision(probs[:, c], targets[:, c]) for c in range(targets.shape[1]) if targets[:, c].any()]
    pred = probs > 0.5
    tp = float((pred & targets).sum())
    f1 = 2 * tp / max(1.0, float(pred.sum() + targets.sum()))
    return {"map": float(np.mean(aps)), "f1": f1, "classes": len(aps)}


@torch.no_grad()
def score_val(model_path: Path, args: argparse.Namespace) -> dict:
    """Tag mAP / F1 and pseudo-mask mIoU per background threshold on the first --val-images val images."""
    model, cfg, _ = load_trained_model(model_path)
    cfg.data.max_images = args.val_images
    index = build_index(cfg.data, "val")
    k = index.num_classes
    cms = {thr: ConfusionMatrix(k) for thr in BG_SWEEP}
    probs, targets = [], []

    def predict(rec, gt: np.ndarray) -> dict:
        image = image_to_tensor(read_image(rec.image_path))
        square = F.interpolate(image[None], size=(cfg.pseudo.image_size,) * 2, mode="bilinear", align_corners=False)
        probs.append(torch.sigmoid(model.image_logits(model(square).cams))[0].numpy())
        targets.append(np.asarray(rec.labels)[1:] > 0.5)
        fg = normalised_cams(model, image, rec.labels, cfg.pseudo)
        return {thr: cam_pseudo_mask(fg, thr).numpy().astype(np.uint8) for thr in cms}

    predict_and_score(index.records, predict, cms, k)
    rows = {thr: cm.summary(index.class_names)["miou"] for thr, cm in cms.items()}
    best = max(rows, key=lambda t: (rows[t], -t))
    return {"val_images": len(index), "miou_by_threshold": {str(t): v for t, v in rows.items()},
            "threshold": best, "miou": rows[best], **tag_scores(np.stack(probs), np.stack(targets))}


SETTINGS = ("max_images", "val_images", "epochs", "unfreeze", "size", "infer_size", "batch")


def settings(args: argparse.Namespace) -> dict:
    """The settings a cached run must share with the invocation (the cache is keyed by variant and seed)."""
    return {k: getattr(args, k) for k in SETTINGS}


def run_one(name: str, seed: int, args: argparse.Namespace) -> dict:
    run_dir = args.work / f"{name}-seed{seed}"
    result = run_dir / "fit.json"
    if result.is_file():
        record = json.loads(result.read_text())
        if record.get("settings", settings(args)) != settings(args):
            raise SystemExit(f"{result} was run with {record['settings']}, not {settings(args)}: "
                             "give each setting its own --work")
        return record
    cfg = load_config("cam_voc", [*overrides(args), *VARIANTS[name], f"seed={seed}", f"name=fit-{name}"])
    t0 = time.time()
    try:
        model_path = Trainer(cfg, run_dir, resume=True, show_progress=False).fit()
    except TrainingError as e:  # a diverged recipe is a result too: recorded, not scored
        model_path, diverged = None, str(e).replace(str(run_dir), f"<{run_dir.name}>")
    train_s = time.time() - t0
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]
    losses = [h["cls"] for h in history]
    record = {"name": name, "seed": seed, "settings": settings(args), "overrides": VARIANTS[name], "losses": losses,
              "final_loss": losses[-1] if model_path is not None else None, "train_seconds": round(train_s, 1)}
    if model_path is None:
        record["diverged"] = diverged
    else:
        record["val"] = score_val(model_path, args)
        record["score_seconds"] = round(time.time() - t0 - train_s, 1)
    write_json(result, record)
    return record


def prior_only_loss(args: argparse.Namespace) -> float:
    """The soft-margin loss of a classifier that outputs each class's (smoothed) training frequency
    for every image: the entropy of the training tags, the loss a prior alone reaches."""
    cfg = load_config("cam_voc", overrides(args))
    index = build_index(cfg.data, "train_aug")
    labels = np.stack([r.labels for r in index.records])
    p = tag_frequencies(labels).double()
    t = torch.as_tensor(labels[:, 1:] > 0.5, dtype=torch.float64)
    return float(F.binary_cross_entropy(p.expand_as(t), t))


def fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    vals = [scale * v for v in values]
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def thresholds(vals: list[dict]) -> str:
    return ", ".join(f"{x['threshold']:g}" for x in vals)


def table(records: dict[str, list[dict]]) -> str:
    lines = ["| variant | seeds | final-epoch loss | val tag mAP | val tag F1 | val mIoU (thr chosen on val) "
             "| thresholds | train s / run |", "|---|---|---|---|---|---|---|---|"]
    for name, recs in records.items():
        failed = [r for r in recs if "diverged" in r or not math.isfinite(r["final_loss"]) or r["final_loss"] > 10]
        if failed:
            lines.append(f"| {name} | {len(recs)} | diverged in {len(failed)} of {len(recs)} seeds "
                         f"(epoch losses {'; '.join(' '.join(f'{x:.3g}' for x in r['losses']) for r in recs)}) "
                         f"| - | - | - | - | {statistics.mean(r['train_seconds'] for r in recs):.0f} |")
            continue
        v = [r["val"] for r in recs]
        lines.append(
            f"| {name} | {len(recs)} | {fmt([r['final_loss'] for r in recs], 1.0, 3)} | {fmt([x['map'] for x in v])} "
            f"| {fmt([x['f1'] for x in v])} | {fmt([x['miou'] for x in v])} "
            f"| {thresholds(v)} "
            f"| {statistics.mean(r['train_seconds'] for r in recs):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voc", type=Path, default=Path("../shared/data/voc12-subset"))
    p.add_argument("--work", type=Path, default=Path("runs/classifier_fit"))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--max-images", type=int, default=200, help="first N train_aug images")
    p.add_argument("--val-images", type=int, default=100, help="first N val images scored")
    p.add_argument("--epochs", type=int, default=3, help="Adam variants: the first one with the backbone frozen")
    p.add_argument("--unfreeze", type=int, default=2, help="Adam variants: block groups trained after warm-up")
    p.add_argument("--size", type=int, default=160, help="training input size (px)")
    p.add_argument("--infer-size", type=int, default=256, help="val inference size (px, one scale)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cached-only", action="store_true", help="train nothing: tabulate the cached runs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    records: dict[str, list[dict]] = {}
    missing = []
    for name in args.variants:
        for seed in args.seeds:
            if args.cached_only and not (args.work / f"{name}-seed{seed}" / "fit.json").is_file():
                missing.append(f"{name} seed {seed}")
                continue
            rec = run_one(name, seed, args)
            records.setdefault(name, []).append(rec)
            if "val" not in rec:
                print(f"{name:<13} seed {seed}: loss {' '.join(f'{x:.3g}' for x in rec['losses'])}  "
                      f"{rec['diverged']}", flush=True)
                continue
            v = rec["val"]
            print(f"{name:<13} seed {seed}: loss {' '.join(f'{x:.3f}' for x in rec['losses'])}  mAP {100 * v['map']:.1f}"
                  f"  F1 {100 * v['f1']:.1f}  mIoU {100 * v['miou']:.1f} (thr {v['threshold']:g})"
                  f"  ({rec['train_seconds']}s train, {rec['score_seconds']}s score)", flush=True)
    if not records:
        print("no cached run under --work yet")
        return 1
    print(f"log 2 = {math.log(2):.3f}; prior-only loss on these training tags = {prior_only_loss(args):.3f}")
    print(table(records))
    if missing:
        print("not run yet: " + ", ".join(missing))
    hardware = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)"
    write_json(args.work / "summary.json", {"argv": sys.argv[1:] if argv is None else argv, "hardware": hardware,
                                            "seconds_this_invocation": round(time.time() - t0),
                                            "runs": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
