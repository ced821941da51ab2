"""Reference result on real VOC photos: the CAM family and TKP-PCL with ImageNet Lite backbones.

Trains on the image-level labels of the VOC subset's ``train_aug`` images, makes pseudo-masks for
``train_aug`` and ``val`` and scores them against the ground-truth masks (METHODS.md §6). Every
choice is made on ``val`` only, never on the scored ``train_aug`` masks:

- the CAM background threshold (swept on ``val``, applied to ``train_aug``);
- the patch family's inference size (``--infer-sizes`` scored on ``val`` for the TKP-PCL run,
  the best one used for every patch-family run);
- ``model.bn`` per family (``--bn-compare``: the other mode trained too, compared on ``val``).

Runs (each cached as ``<work>/<name>-seed<s>/reference.json``, so an interrupted benchmark resumes):

    cam             CAM baseline (GAP, soft-margin loss)                           [METHODS.md §2]
    avg / max / topk / topk+pce   the TKP-PCL ordering at the same budget          [METHODS.md §1]
    topk+pce-sum    top-K + PCE with method.pce_reduction=class_sum

Dense CRF (METHODS.md §5 presets, pydensecrf backend) refines the first seed's CAM and TKP-PCL
masks of the first ``--crf-images`` ids of each split (0 = all). Prints the table and writes
``<work>/summary.json``; benchmarks/results/reference_voc.md is written from it.

Usage (the command of the committed results is in benchmarks/results/reference_voc.md):

    python benchmarks/reference_voc.py --voc ../shared/data/voc12-subset --threads 1
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

from tagseg.config import PseudoConfig, load_config
from tagseg.data.build import build_index
from tagseg.metrics.predict_and_score import predict_and_score
from tagseg.data.views import image_to_tensor
from tagseg.metrics.miou import ConfusionMatrix
from tagseg.inference.cam import normalised_cams
from tagseg.inference.pseudo import merged_probs_for
from tagseg.methods.cam_objective import cam_pseudo_mask, cam_probabilities
from tagseg.inference.crf.dense import dense_crf
from tagseg.inference.crf.params import get_preset
from tagseg.inference.loading import load_trained_model
from tagseg.classify.trainer import Trainer
from tagseg.utils.io import read_image, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/seed_stats.py
from patch_variants import ORDERING, ORDERING_LABELS  # noqa: E402
from seed_stats import mean_std  # noqa: E402

PATCH_VARIANTS: dict[str, list[str]] = {
    **ORDERING,
    "topk+pce-sum": ["method.pooling=topk", "method.pce_weight=0.01", "method.et_weight=1",
                     "method.pce_reduction=class_sum"],
}
LABELS = {"cam": "CAM (GAP, soft-margin)", **ORDERING_LABELS, "topk+pce-sum": "top-K + PCE (class_sum) + L_ET"}
BG_THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8)
CRF_KEY = "crf"  # the accumulator of the CRF-refined masks among the per-threshold ones


def common(args: argparse.Namespace) -> list[str]:
    return [*(["train.select=best", f"train.select_images={args.select_images}"] if args.select_images else []),
            f"data.root={args.voc}", "data.dataset=voc", "data.train_split=train_aug", "data.pseudo_split=train_aug",
            f"data.num_workers={args.workers}", f"data.max_images={args.max_images}", f"train.cpu_threads={args.threads}", "model.weights=lite",
            f"model.encoder={args.encoder}", f"model.cnn_features={args.cnn_features}", f"train.batch_size={args.batch}", "device=cpu"]


def run_config(name: str, args: argparse.Namespace, bn: str, seed: int):
    if name == "cam":
        over = [*common(args), f"data.image_size={args.cam_size}", f"train.epochs={args.cam_epochs}",
                "train.warmup_epochs=1", f"train.unfreeze_blocks={args.cam_unfreeze}", f"pseudo.image_size={args.cam_size}",
                "pseudo.scales=[1.0]", "pseudo.flip=false", f"cam.output_stride={args.output_stride}"]
        base = "cam_voc"
    else:
        over = [*common(args), f"data.image_size={args.size}", f"train.epochs={args.epochs}",
                f"train.warmup_epochs={args.warmup if args.warmup is not None else args.epochs}",
                f"train.unfreeze_blocks={args.unfreeze}", f"method.et_crop_size={args.size // 3 // 16 * 16}",
                f"pseudo.image_size={args.size}", "pseudo.scales=[1.0]", "pseudo.flip=false",  # best-epoch metric
                "model.cnn_grid=dilated", *PATCH_VARIANTS[name]]
        base = "tkpcl_voc"
    return load_config(base, [*over, f"model.bn={bn}", f"seed={seed}", f"name=reference-{name}"])


def train(name: str, args: argparse.Namespace, bn: str, seed: int) -> tuple[Path, float]:
    run_dir = args.work / f"{name}-{bn}-seed{seed}"
    final = run_dir / "model.safetensors"
    stamp = run_dir / "train_seconds.txt"
    if final.is_file() and stamp.is_file():
        return final, float(stamp.read_text())
    t0 = time.time()
    Trainer(run_config(name, args, bn, seed), run_dir, resume=True, show_progress=False).fit()
    seconds = time.time() - t0
    stamp.write_text(f"{seconds:.1f}")
    return final, seconds


@torch.no_grad()
def score(model_path: Path, split: str, args: argparse.Namespace, infer: str, *,
          thresholds=BG_THRESHOLDS, bg: float | None = None, crf: bool = False, first: int = 0) -> dict:
    """mIoU of one model's pseudo-masks on ``split`` under the inference setting ``infer``
    (see ``inference_setting``). CAM: one confusion matrix per background threshold (``bg`` fixes
    it); with ``crf`` also the CRF-refined masks. ``first``: only the first N ids (0 = all)."""
    model, cfg, info = load_trained_model(model_path)
    rule = merged_probs_for(info["family"])
    cfg.data.max_images = args.max_images
    index = build_index(cfg.data, split)
    k = index.num_classes
    pcfg = inference_setting(infer, args)
    is_cam = info["family"] == "cam"
    taus = [bg] if bg is not None else list(thresholds)
    cms = {t: ConfusionMatrix(k) for t in taus} if is_cam else {"plain": ConfusionMatrix(k)}
    crf_cm = ConfusionMatrix(k)
    preset = get_preset("cam" if is_cam else "patch")
    t0 = time.time()
    records = index.records[:first] if first else index.records

    def predict(rec, gt: np.ndarray) -> dict:
        image = read_image(rec.image_path)
        x = image_to_tensor(image)
        if is_cam:
            fg = normalised_cams(model, x, rec.labels, pcfg)
            masks = {t: cam_pseudo_mask(fg, t).numpy().astype(np.uint8) for t in cms}
            probs = cam_probabilities(fg, taus[0]) if crf else None
        else:
            probs = rule(model, x, rec.labels, pcfg)
            masks = {"plain": probs.argmax(0).numpy().astype(np.uint8)}
        if crf:
            masks[CRF_KEY] = dense_crf(image, probs.numpy(), preset, backend="pydensecrf").argmax(0).astype(np.uint8)
        return masks

    predict_and_score(records, predict, {**cms, CRF_KEY: crf_cm}, k)
    out = {"split": split, "images": len(records), "infer": infer, "seconds": round(time.time() - t0, 1)}
    out["miou"] = {str(t): cm.summary(index.class_names)["miou"] for t, cm in cms.items()}
    if crf:
        out["crf"] = {"images": len(records), "miou": crf_cm.summary(index.class_names)["miou"],
                      # the plain masks the CRF refined: the same images, the threshold it used
                      "plain_same_images": cms[taus[0] if is_cam else "plain"].summary(index.class_names)["miou"]}
    return out


def inference_setting(infer: str, args: argparse.Namespace) -> PseudoConfig:
    """``"448"``: single scale at 448 px, no flip; ``"448ms"``: the scales of ``--ms-scales`` at
    448 px, with horizontal flip."""
    if infer.endswith("ms"):
        return PseudoConfig(image_size=int(infer[:-2]), scales=list(args.ms_scales), flip=True)
    return PseudoConfig(image_size=int(infer), scales=[1.0], flip=False)


def cached(path: Path, fn):
    if path.is_file():
        return json.loads(path.read_text())
    value = fn()
    write_json(path, value)
    return value


def run_family_member(name: str, args: argparse.Namespace, bn: str, seed: int, infer: str,
                      crf: bool) -> dict:
    """Train and score one run on val and train_aug (CAM: threshold chosen on val); with ``crf``
    also the CRF-refined masks of the first ``--crf-images`` ids of each split (cached apart)."""
    run_dir = args.work / f"{name}-{bn}-seed{seed}"

    def go() -> dict:
        model, seconds = train(name, args, bn, seed)
        val = val_only(name, args, bn, seed, infer)[1]["val"]  # cached by the val choice when it ran
        rec = {"name": name, "bn": bn, "seed": seed, "train_seconds": round(seconds, 1), "val": val}
        if name == "cam":
            best = max(val["miou"], key=lambda t: val["miou"][t])
            rec["bg_threshold"] = float(best)
            rec["val_chosen"] = val["miou"][best]
            rec["train_aug"] = score(model, "train_aug", args, infer, bg=float(best))
        else:
            rec["val_chosen"] = val["miou"]["plain"]
            rec["train_aug"] = score(model, "train_aug", args, infer)
        return rec

    rec = cached(run_dir / f"reference-{infer}.json", go)
    if crf:
        def refine() -> dict:
            model = run_dir / "model.safetensors"
            bg = rec.get("bg_threshold")
            return {split: score(model, split, args, infer, bg=bg, crf=True, first=args.crf_images)["crf"]
                    for split in ("train_aug", "val")}

        rec["crf"] = cached(run_dir / f"crf-{infer}-first{args.crf_images}.json", refine)
    return rec


def val_only(name: str, args: argparse.Namespace, bn: str, seed: int, infer: str) -> tuple[float, dict]:
    """val mIoU of a run (CAM: at its best val threshold), trained if needed."""
    run_dir = args.work / f"{name}-{bn}-seed{seed}"

    def go() -> dict:
        model, seconds = train(name, args, bn, seed)
        return {"train_seconds": round(seconds, 1), "val": score(model, "val", args, infer)}

    rec = cached(run_dir / f"val-{infer}.json", go)
    return max(rec["val"]["miou"].values()), rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voc", type=Path, default=Path("../shared/data/voc12-subset"))
    p.add_argument("--work", type=Path, default=Path("runs/reference_voc"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--encoder", default="tf_efficientnet_lite0")
    p.add_argument("--size", type=int, default=160, help="patch family: training input (px)")
    p.add_argument("--epochs", type=int, default=1, help="patch family: epochs (all warm-up: encoder frozen)")
    p.add_argument("--warmup", type=int, default=None,
                   help="patch family: warm-up epochs (encoder frozen; default: all of --epochs)")
    p.add_argument("--unfreeze", type=int, default=3, help="patch family: block groups trained after warm-up")
    p.add_argument("--cnn-features", default="head", choices=["last_block", "head"], help="model.cnn_features")
    p.add_argument("--output-stride", type=int, default=16, choices=[8, 16], help="CAM: cam.output_stride")
    p.add_argument("--select-images", type=int, default=0,
                   help="train.select=best on this many val images every epoch (0 = keep the last epoch)")
    p.add_argument("--train-only", nargs="*", metavar="NAME:SEED",
                   help="only train these runs (e.g. cam:0 topk+pce:1) and exit; run several in parallel")
    p.add_argument("--patch-infer", nargs="+", default=["160", "224", "320"],
                   help="patch family: inference settings compared on val (TKP-PCL run, first seed): "
                        "SIZE (single scale) or SIZEms (--ms-scales + flip)")
    p.add_argument("--cam-infer", nargs="+", default=["224"],
                   help="CAM: inference settings compared on val (first seed), as --patch-infer")
    p.add_argument("--ms-scales", type=float, nargs="+", default=[0.75, 1.0, 1.25],
                   help="scales of a SIZEms inference setting (relative to SIZE)")
    p.add_argument("--cam-size", type=int, default=224, help="CAM: training and inference size (px)")
    p.add_argument("--cam-epochs", type=int, default=2, help="CAM: epochs (1 warm-up, then fine-tuning)")
    p.add_argument("--cam-unfreeze", type=int, default=3, help="CAM: block groups trained after warm-up")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-images", type=int, default=0, help="0 = every image of each split")
    p.add_argument("--crf-images", type=int, default=300,
                   help="CRF on the first N ids of each split (0 = all), for the first seed's CAM and TKP-PCL runs")
    p.add_argument("--no-crf", action="store_true", help="skip the CRF columns")
    p.add_argument("--cached-only", action="store_true",
                   help="summarise the runs already scored (train and score nothing new after the val choices)")
    p.add_argument("--ordering-seeds", type=int, nargs="+", default=None,
                   help="seeds of the avg / max / top-K / class_sum runs (default: --seeds)")
    p.add_argument("--bn-compare", action="store_true", help="also train model.bn=frozen and compare on val")
    p.add_argument("--variants", nargs="+", default=["cam", *PATCH_VARIANTS],
                   choices=["cam", *PATCH_VARIANTS])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.train_only:
        for item in args.train_only:
            name, seed = item.split(":")
            bn = "adapt"
            _, seconds = train(name, args, bn, int(seed))
            print(f"trained {name} seed {seed} ({bn}) in {seconds:.0f}s", flush=True)
        return 0
    t0 = time.time()
    s0 = args.seeds[0]
    notes: dict = {}
    # 1. model.bn per family, chosen on val (first seed)
    families = {"cam" if name == "cam" else "patch" for name in args.variants}
    bn_choice = {"cam": "adapt", "patch": "adapt"}
    if args.bn_compare:
        for fam, name, infer in (("cam", "cam", str(args.cam_size)), ("patch", "topk+pce", str(args.size))):
            if fam not in families:
                continue
            scores = {bn: val_only(name, args, bn, s0, infer)[0] for bn in ("adapt", "frozen")}
            bn_choice[fam] = max(scores, key=scores.get)
            notes[f"bn_{fam}"] = scores
            print(f"model.bn for {fam}: val mIoU {scores} -> {bn_choice[fam]}", flush=True)
    # 2. inference setting (size, multi-scale + flip) per family, chosen on val (first seed)
    infer_choice = {}
    for fam, name, options in (("cam", "cam", args.cam_infer), ("patch", "topk+pce", args.patch_infer)):
        if fam not in families:
            continue
        scores = {o: val_only(name, args, bn_choice[fam], s0, o)[0] for o in options}
        infer_choice[fam] = max(scores, key=scores.get)
        notes[f"infer_{fam}_val"] = scores
        print(f"inference setting for {fam} on val: {scores} -> {infer_choice[fam]}", flush=True)
    # 3. the runs
    records: dict[str, list[dict]] = {}
    for name in args.variants:
        fam = "cam" if name == "cam" else "patch"
        seeds = args.seeds if name in ("cam", "topk+pce") else (args.ordering_seeds or args.seeds)
        for seed in seeds:
            crf = name in ("cam", "topk+pce") and seed == s0 and not args.no_crf
            run_dir = args.work / f"{name}-{bn_choice[fam]}-seed{seed}"
            if args.cached_only and not (run_dir / f"reference-{infer_choice[fam]}.json").is_file():
                print(f"{name:<13} seed {seed}: not scored yet, left out (--cached-only)", flush=True)
                continue
            if args.cached_only and not (run_dir / f"crf-{infer_choice[fam]}-first{args.crf_images}.json").is_file():
                crf = False
            rec = run_family_member(name, args, bn_choice[fam], seed, infer_choice[fam], crf)
            records.setdefault(name, []).append(rec)
            tr = rec["train_aug"]["miou"]
            print(f"{name:<13} seed {seed}: train_aug={100 * list(tr.values())[0]:.1f} "
                  f"val={100 * rec['val_chosen']:.1f} ({rec['train_seconds']}s train)", flush=True)
    elapsed = time.time() - t0
    lines = ["| method | seeds | train_aug | val | train_aug + CRF (first N) | same N, no CRF | val + CRF (first N) |",
             "|---|---|---|---|---|---|---|"]
    for name, recs in records.items():
        tr = [list(r["train_aug"]["miou"].values())[0] for r in recs]
        crf = [r.get("crf", {}).get("train_aug", {}).get("miou") for r in recs]
        crf_plain = [r.get("crf", {}).get("train_aug", {}).get("plain_same_images") for r in recs]
        vcrf = [r.get("crf", {}).get("val", {}).get("miou") for r in recs]
        lines.append(f"| {LABELS[name]} | {len(recs)} | {mean_std(tr)} | {mean_std([r['val_chosen'] for r in recs])} | "
                     f"{mean_std(crf)} | {mean_std(crf_plain)} | {mean_std(vcrf)} |")
    table = "\n".join(lines)
    print(table)
    cmd = "python benchmarks/reference_voc.py " + " ".join(sys.argv[1:] if argv is None else argv)
    default = args.variants == ["cam", *PATCH_VARIANTS]
    summary = args.work / ("summary.json" if default else f"summary-{'+'.join(args.variants)}.json")
    write_json(summary, {
        "command": cmd, "seconds_this_invocation": round(elapsed), "bn": bn_choice, "inference": infer_choice,
        "notes": notes, "records": records, "table": table,
        "hardware": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"})
    print(f"total {elapsed:.0f}s; summary in {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
