"""The verbs of the segmentation stage: ``segment train``, ``segment eval`` and ``predict``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from tagseg.cli_args import (
    add_check_data, add_overrides, add_training_args, common, parse_scales, parse_shard,
)
from tagseg.errors import TagsegError


def register(subparsers: argparse._SubParsersAction) -> None:
    from tagseg.config import CRF_CHOICES  # plain dataclasses, no torch

    seg = subparsers.add_parser("segment", help="train or evaluate the DeepLab segmentation network on pseudo-masks")
    seg_sub = seg.add_subparsers(dest="segment_command", required=True)
    p = seg_sub.add_parser("train", parents=[common()], help="train a DeepLab network on the pseudo-masks of a config")
    add_training_args(p, "a shipped config name (e.g. segment_voc) or a YAML path")
    add_check_data(p, "training masks (segment.masks_dir)")
    add_overrides(p, "train.epochs=2 segment.masks_dir=runs/x/pseudo/train_aug/masks")
    p.set_defaults(handler=cmd_segment_train)

    p = seg_sub.add_parser("eval", parents=[common()],
                           help="score a trained network on a split with ground truth (mIoU, contour F, J&F)")
    p.add_argument("--run", required=True, help="run folder of `tagseg segment train`")
    p.add_argument("--split", help="split to score (default: data.val_split of the run)")
    p.add_argument("--shard", type=parse_shard, default=(0, 1),
                   help="score shard i of n (i/n), or auto: from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or SLURM "
                        "(SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), one GPU per process; writes "
                        "eval.shard-<i>-of-<n>.json, added up by `tagseg eval --merge`")
    p.add_argument("--out", help="JSON file for the metrics (default: <run>/eval.json, "
                                 "<run>/eval.shard-<i>-of-<n>.json for a shard)")
    p.add_argument("--save-masks", action="store_true", help="also write the predictions to <run>/predictions/<split>/")
    add_overrides(p, "inference.flip=true data.max_images=50")
    p.set_defaults(handler=cmd_segment_eval)

    p = subparsers.add_parser("predict", parents=[common()],
                              help="write masks and colour overlays for images with a segmentation model")
    p.add_argument("images", nargs="+", metavar="IMAGES",
                   help="image files and/or folders of images, then any key=value overrides of the model's "
                        "inference settings (inference.scales=[1.0,0.75] ...)")
    p.add_argument("--model", required=True, help="model.safetensors of `tagseg segment train` (or its run folder)")
    p.add_argument("--out", help="output folder (default: <folder of the model>/predict/<name of the first input>)")
    p.add_argument("--scales", type=parse_scales, default=None,
                   help="comma-separated inference scales (default: those stored in the model)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the mirrored image (default: as stored in the model)")
    p.add_argument("--crf", choices=CRF_CHOICES, default=None,
                   help="dense-CRF refinement (default: as stored in the model)")
    p.add_argument("--classes", default=None,
                   help="check the model's classes against 'voc', a classes file or a folder with classes.txt")
    # override-looking words join the overrides; any other word, even behind a later option, is an image
    p.set_defaults(handler=cmd_predict, paths_with_overrides="images", late_words_are_paths=True)


def _run_config(run: Path, overrides: Sequence[str]):
    from tagseg.config import check_verb_overrides
    from tagseg.segment.config import load_segment_config

    check_verb_overrides("segment eval", overrides)
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise TagsegError(f"{run} is not a tagseg segmentation run folder (no config.yaml)")
    from tagseg.utils.run_kind import SEGMENT, require_run_kind

    require_run_kind(run, SEGMENT, "use")
    return load_segment_config(str(cfg_path), overrides)


def _check_training_masks(cfg, requested) -> None:
    """``segment train --check-data``: decode every training image and the mask it trains on
    (pseudo-masks or ground truth, as the trainer chooses them) before the first epoch."""
    import dataclasses
    import os

    from tagseg.data.build import build_index
    from tagseg.data.check import check_split, should_check
    from tagseg.segment.data import choose_mask_folder, resolve_mask_paths

    index = build_index(cfg.data, cfg.data.train_split)
    if not should_check(requested, len(index)):
        return
    folder, _ = choose_mask_folder(cfg.segment.masks_dir, cfg.segment.mask_kind)
    masks = resolve_mask_paths(index, folder)
    pairs = dataclasses.replace(index, records=[dataclasses.replace(r, mask_path=m)
                                                for r, m in zip(index.records, masks)])
    progress = os.environ.get("RANK", "0") == "0" and sys.stderr.isatty()
    files = check_split(pairs, progress=progress)
    print(f"checked {files} files of {index.name or cfg.data.train_split} and its training masks: all decode")


def cmd_segment_train(args: argparse.Namespace) -> int:
    from tagseg.utils.runtime import apply_threads, device_overrides, world_size
    from tagseg.utils.safe_paths import run_folder
    from tagseg.segment.config import load_segment_config
    from tagseg.segment.trainer import SegmentationTrainer
    from tagseg.engine.checkpoint import ensure_fresh_run_dir
    from tagseg.utils.run_kind import SEGMENT, require_run_kind
    from tagseg.utils.runlock import run_lock

    cfg = load_segment_config(args.config, [*device_overrides(args.device), *args.overrides])
    out = Path(args.out) if args.out else run_folder(cfg.name)
    with run_lock(out):
        require_run_kind(out, SEGMENT, "resume" if args.resume else "train into")
        ensure_fresh_run_dir(out, args.resume)
        apply_threads(args.threads, world_size(), cfg.data.num_workers)
        _check_training_masks(cfg, args.check_data)
        result = SegmentationTrainer(cfg, out, resume=args.resume).fit(stop_after_epoch=args.stop_after_epoch)
    print(f"saved {result}")
    return 0


def cmd_segment_eval(args: argparse.Namespace) -> int:
    from tagseg.utils.runtime import apply_threads, device_overrides
    from tagseg.data.build import build_index
    from tagseg.metrics.miou import format_table
    from tagseg.segment.evaluate import check_class_names, evaluate_segmenter
    from tagseg.segment.inference import load_segmenter
    from tagseg.engine.distributed import DistInfo, launch_device, resolve_device
    from tagseg.runner import ManifestInfo
    from tagseg.runner.launch import resolve_shard
    from tagseg.metrics.shards import shard_file_name
    from tagseg.utils.io import write_json

    run = Path(args.run)
    cfg = _run_config(run, [*device_overrides(args.device), *args.overrides])
    shard, launch = resolve_shard(args.shard)
    apply_threads(args.threads)
    model_path = run / "model.safetensors"
    if not model_path.is_file():
        raise TagsegError(f"no model.safetensors in {run}: training has not finished "
                          "(continue it with `tagseg segment train --resume`)")
    device = resolve_device(launch_device(launch, cfg.device) if launch.source != "single" else cfg.device,
                            DistInfo())
    model, _, info = load_segmenter(model_path, device)
    split = args.split or cfg.data.val_split
    index = build_index(cfg.data, split).require_nonempty()
    check_class_names(info["class_names"], index.class_names, f"model {model_path}", f"dataset {index.name}")
    save_dir = run / "predictions" / split if args.save_masks else None
    manifest = ManifestInfo(stage="segment eval", settings=cfg.inference, config=cfg, run=run, split=split,
                            input=cfg.data.root)
    summary = evaluate_segmenter(model, index, cfg.inference, device, save_dir=save_dir, palette=info["palette"],
                                 shard=shard, manifest=manifest)
    summary["split"] = split
    part = f"shard {shard[0]}/{shard[1]}: " if shard[1] > 1 else ""
    print(format_table(summary, title=f"{model_path} on {index.name} ({part}{summary['images']} images; scales "
                                      f"{list(cfg.inference.scales)}, flip={cfg.inference.flip}, crf={cfg.inference.crf})"))
    out = Path(args.out) if args.out else run / shard_file_name(shard)
    write_json(out, summary)
    print(f"metrics -> {out}")
    return 0


def default_predict_out(model: str | Path, images: Sequence[str]) -> Path:
    """``<folder of the model>/predict/<name of the first input>``: beside the model, never the
    current folder (which may be a source tree)."""
    from tagseg.segment.predict import resolve_model_path

    first = Path(images[0]).resolve() if images else Path("images")
    name = (first.stem if first.is_file() else first.name) or "images"
    return resolve_model_path(model).parent / "predict" / name


def cmd_predict(args: argparse.Namespace) -> int:
    """Exit status 0 when every input was processed, 1 when some failed (the rest are written)."""
    from tagseg.utils.runtime import apply_threads
    from tagseg.segment.predict import run_predict

    apply_threads(args.threads)
    out = Path(args.out) if args.out else default_predict_out(args.model, args.images)
    report = run_predict(args.images, args.model, out, scales=args.scales, flip=args.flip, crf=args.crf,
                         classes=args.classes, device=args.device or "auto", overrides=args.overrides)
    print(f"{len(report.written)} images -> {out / 'masks'} (masks) and {out / 'overlays'} (overlays) "
          f"in {report.seconds:.1f}s")
    if report.failures:
        print(f"{len(report.failures)} inputs failed:", file=sys.stderr)
        for item, error in report.failures:
            print(f"  {item}: {error}", file=sys.stderr)
        return 1
    return 0
