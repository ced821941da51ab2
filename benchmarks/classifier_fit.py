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
- localisation: pseudo-mask mIoU (CAMs with the ground-truth tags, one scale) on the first
  ``--val-images`` val images at the background threshold (best of a sweep; ties to the lower
  threshold) chosen on the next ``--choose-images`` val images (``--protocol disjoint``, the
  default: ids at positions 100-199 of the sorted list choose, 0-99 are scored), never on the ground
  truth of the images scored. ``--protocol same`` chooses on the scored images (optimistic; the
  first version of this benchmark); the table shows that number beside the disjoint one.

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

Every run is cached as ``<work>/<variant>-seed<s>/fit.json`` with its training settings (a
half-trained run resumes from its checkpoint), so the benchmark resumes; another training setting
needs another ``--work`` (a cached run with other settings is refused). Scoring is cached beside it,
one ``sweep-val<first>-<last>-<px>px.json`` per set of val positions and inference size, so another
protocol re-scores a trained run without retraining; ``--cached-only`` trains nothing.

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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/seed_stats.py
from seed_stats import mean_std  # noqa: E402

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


PROTOCOLS = ("disjoint", "same")


def val_split(available: int, val_images: int, choose_images: int, protocol: str) -> tuple[range, range]:
    """Positions in the sorted ``val`` list -> (images the background threshold is chosen on, images
    scored). The scored ones are always the first ``val_images``; ``disjoint`` chooses on the next
    ``choose_images`` (ids 100-199 for the defaults), ``same`` on the scored images themselves."""
    scored = range(val_images)
    choose = scored if protocol == "same" else range(val_images, val_images + choose_images)
    if protocol not in PROTOCOLS:
        raise SystemExit(f"unknown protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    if max(choose.stop, scored.stop) > available:
        raise SystemExit(f"the val split has {available} images, the protocol needs {max(choose.stop, scored.stop)}")
    return choose, scored


def choose_threshold(miou_by_threshold: dict) -> float:
    """The best background threshold of a sweep {thr: mIoU}; ties go to the lower threshold."""
    return max(miou_by_threshold, key=lambda t: (miou_by_threshold[t], -t))


@torch.no_grad()
def sweep(model, cfg, records: list, num_classes: int, class_names: list[str], tags: bool) -> dict:
    """Pseudo-mask mIoU per background threshold on ``records`` (and, with ``tags``, tag mAP / F1)."""
    cms = {thr: ConfusionMatrix(num_classes) for thr in BG_SWEEP}
    probs, targets = [], []

    def predict(rec, gt: np.ndarray) -> dict:
        image = image_to_tensor(read_image(rec.image_path))
        if tags:
            square = F.interpolate(image[None], size=(cfg.pseudo.image_size,) * 2, mode="bilinear",
                                   align_corners=False)
            probs.append(torch.sigmoid(model.image_logits(model(square).cams))[0].numpy())
            targets.append(np.asarray(rec.labels)[1:] > 0.5)
        fg = normalised_cams(model, image, rec.labels, cfg.pseudo)
        return {thr: cam_pseudo_mask(fg, thr).numpy().astype(np.uint8) for thr in cms}

    t0 = time.time()
    predict_and_score(records, predict, cms, num_classes)
    out = {"images": len(records), "first_id": records[0].id, "last_id": records[-1].id,
           "miou_by_threshold": {str(t): cm.summary(class_names)["miou"] for t, cm in cms.items()}}
    if tags:
        out.update(tag_scores(np.stack(probs), np.stack(targets)))
    out["seconds"] = round(time.time() - t0, 1)
    return out


def cached_sweep(run_dir: Path, part: range, args: argparse.Namespace, compute) -> dict:
    """One sweep of val positions ``part``, cached in the run folder by its images and inference size.
    The sweep of the first ``--val-images`` that the run recorded when it was trained (same images,
    model and inference) seeds the cache unless ``--rescore``."""
    path = run_dir / f"sweep-val{part.start}-{part.stop - 1}-{args.infer_size}px.json"
    if path.is_file() and not args.rescore:
        return json.loads(path.read_text())
    fit = json.loads((run_dir / "fit.json").read_text())
    old = fit.get("val")
    if (not args.rescore and old and part.start == 0 and old.get("val_images") == part.stop
            and fit["settings"].get("infer_size") == args.infer_size):
        result = {"images": part.stop, "miou_by_threshold": old["miou_by_threshold"],
                  **{k: old[k] for k in ("map", "f1", "classes")}, "from": "fit.json"}
    else:
        result = compute(part)
    write_json(path, result)
    return result


def score_val(run_dir: Path, args: argparse.Namespace) -> dict:
    """Choose the background threshold on one part of ``val`` and score it on another (see
    :func:`val_split`): tag mAP / F1 and pseudo-mask mIoU on the scored images."""
    model, cfg, _ = load_trained_model(run_dir / "model.safetensors")
    cfg.data.max_images = 0
    index = build_index(cfg.data, "val")
    choose, scored = val_split(len(index), args.val_images, args.choose_images, args.protocol)

    def compute(part: range) -> dict:
        return sweep(model, cfg, [index.records[i] for i in part], index.num_classes, index.class_names,
                     tags=part == scored)

    on_scored = cached_sweep(run_dir, scored, args, compute)
    on_choose = on_scored if choose == scored else cached_sweep(run_dir, choose, args, compute)
    chooser = {float(t): v for t, v in on_choose["miou_by_threshold"].items()}
    rows = {float(t): v for t, v in on_scored["miou_by_threshold"].items()}
    thr = choose_threshold(chooser)
    return {"protocol": args.protocol, "choose": [choose.start, choose.stop - 1],
            "scored": [scored.start, scored.stop - 1], "threshold": thr, "miou": rows[thr],
            "miou_thr_chosen_on_scored": rows[choose_threshold(rows)],
            "threshold_chosen_on_scored": choose_threshold(rows),
            "miou_by_threshold": on_scored["miou_by_threshold"], "choose_miou_by_threshold": chooser,
            **{k: on_scored[k] for k in ("map", "f1", "classes")}}


TRAIN_SETTINGS = ("max_images", "epochs", "unfreeze", "size", "batch")


def settings(args: argparse.Namespace) -> dict:
    """The training settings a cached run must share with the invocation (the cache is keyed by
    variant and seed; the scoring settings key the sweeps cached beside it)."""
    return {k: getattr(args, k) for k in TRAIN_SETTINGS}


def run_one(name: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one variant and seed (or read its cached record): losses and wall time, no scores."""
    run_dir = args.work / f"{name}-seed{seed}"
    result = run_dir / "fit.json"
    if result.is_file():
        record = json.loads(result.read_text())
        cached = {k: record["settings"].get(k) for k in TRAIN_SETTINGS} if "settings" in record else settings(args)
        if cached != settings(args):
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


def thresholds(vals: list[dict]) -> str:
    return ", ".join(f"{x['threshold']:g}" for x in vals)


def table(records: dict[str, list[dict]]) -> str:
    lines = ["| variant | seeds | final-epoch loss | val tag mAP | val tag F1 | val mIoU | thresholds "
             "| mIoU, thr chosen on the scored images | train s / run |", "|---|---|---|---|---|---|---|---|---|"]
    for name, recs in records.items():
        failed = [r for r in recs if "diverged" in r or not math.isfinite(r["final_loss"]) or r["final_loss"] > 10]
        if failed:
            lines.append(f"| {name} | {len(recs)} | diverged in {len(failed)} of {len(recs)} seeds "
                         f"(epoch losses {'; '.join(' '.join(f'{x:.3g}' for x in r['losses']) for r in recs)}) "
                         f"| - | - | - | - | - | {statistics.mean(r['train_seconds'] for r in recs):.0f} |")
            continue
        v = [r["val"] for r in recs]
        lines.append(
            f"| {name} | {len(recs)} | {mean_std([r['final_loss'] for r in recs], 1.0, 3)} | {mean_std([x['map'] for x in v])} "
            f"| {mean_std([x['f1'] for x in v])} | {mean_std([x['miou'] for x in v])} "
            f"| {thresholds(v)} | {mean_std([x['miou_thr_chosen_on_scored'] for x in v])} "
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
    p.add_argument("--choose-images", type=int, default=100,
                   help="disjoint protocol: the next N val images choose the background threshold")
    p.add_argument("--protocol", choices=PROTOCOLS, default="disjoint",
                   help="disjoint: threshold chosen on --choose-images val images the scores never see; "
                        "same: chosen on the scored images themselves (the first protocol, optimistic)")
    p.add_argument("--rescore", action="store_true",
                   help="recompute every sweep instead of reading the cached ones")
    p.add_argument("--epochs", type=int, default=3, help="Adam variants: the first one with the backbone frozen")
    p.add_argument("--unfreeze", type=int, default=2, help="Adam variants: block groups trained after warm-up")
    p.add_argument("--size", type=int, default=160, help="training input size (px)")
    p.add_argument("--infer-size", type=int, default=256, help="val inference size (px, one scale)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cached-only", action="store_true",
                   help="train nothing: score (if not cached yet) and tabulate the cached runs")
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
            if "diverged" not in rec:
                t1 = time.time()
                rec = {**rec, "val": score_val(args.work / f"{name}-seed{seed}", args),
                       "score_seconds": round(time.time() - t1, 1)}
            records.setdefault(name, []).append(rec)
            if "val" not in rec:
                print(f"{name:<13} seed {seed}: loss {' '.join(f'{x:.3g}' for x in rec['losses'])}  "
                      f"{rec['diverged']}", flush=True)
                continue
            v = rec["val"]
            print(f"{name:<13} seed {seed}: loss {' '.join(f'{x:.3f}' for x in rec['losses'])}  mAP {100 * v['map']:.1f}"
                  f"  F1 {100 * v['f1']:.1f}  mIoU {100 * v['miou']:.1f} (thr {v['threshold']:g}; chosen on the"
                  f" scored images: {100 * v['miou_thr_chosen_on_scored']:.1f} at {v['threshold_chosen_on_scored']:g})"
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
