"""Command-line entry points of the segmentation stage: ``segment train|eval`` and ``predict``.

``add_segment_commands(subparsers)`` adds both commands to an ``argparse`` sub-parser set;
``SEGMENT_COMMANDS`` maps the command names to their handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from tagseg.errors import TagsegError
from tagseg.utils.runlock import run_lock


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. train.epochs=2 segment.masks_dir=runs/x/pseudo/train_aug/masks")


def _parse_scales(text: str) -> list[float]:
    try:
        scales = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scales expects comma-separated numbers (e.g. 0.75,1,1.25), got {text!r}") from None
    if not scales or any(s <= 0 for s in scales):
        raise argparse.ArgumentTypeError(f"--scales {text}: need positive scales")
    return scales


def add_segment_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``segment`` (with ``train`` and ``eval``) and ``predict`` to ``subparsers``."""
    seg = subparsers.add_parser("segment", help="train or evaluate the DeepLab segmentation network on pseudo-masks")
    seg_sub = seg.add_subparsers(dest="segment_command", required=True)

    p = seg_sub.add_parser("train", help="train a DeepLab network on the pseudo-masks of a config")
    p.add_argument("--config", required=True, help="a shipped config name (e.g. segment_voc) or a YAML path")
    p.add_argument("--out", help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--stop-after-epoch", type=int, default=None, help="stop after this many finished epochs")
    _add_overrides(p)
    p.set_defaults(segment_handler=cmd_segment_train)

    p = seg_sub.add_parser("eval", help="score a trained network on a split with ground truth (mIoU, contour F, J&F)")
    p.add_argument("--run", required=True, help="run folder of `tagseg segment train`")
    p.add_argument("--split", help="split to score (default: data.val_split of the run)")
    p.add_argument("--shard", type=_parse_shard, default=(0, 1),
                   help="score shard i of n (i/n), or auto: from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or SLURM "
                        "(SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), one GPU per process; writes "
                        "eval.shard-<i>-of-<n>.json, added up by `tagseg eval --merge`")
    p.add_argument("--out", help="JSON file for the metrics (default: <run>/eval.json, "
                                 "<run>/eval.shard-<i>-of-<n>.json for a shard)")
    p.add_argument("--save-masks", action="store_true", help="also write the predictions to <run>/predictions/<split>/")
    _add_overrides(p)
    p.set_defaults(segment_handler=cmd_segment_eval)

    p = subparsers.add_parser("predict", help="write masks and colour overlays for images with a segmentation model")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files and/or folders of images")
    p.add_argument("--model", required=True, help="model.safetensors of `tagseg segment train` (or its run folder)")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument("--scales", type=_parse_scales, default=None,
                   help="comma-separated inference scales (default: those stored in the model)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the mirrored image (default: as stored in the model)")
    p.add_argument("--crf", choices=("none", "torch", "pydensecrf"), default=None,
                   help="dense-CRF refinement (default: as stored in the model)")
    p.add_argument("--classes", default=None,
                   help="check the model's classes against 'voc', a classes file or a folder with classes.txt")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def _run_config(run: Path, overrides: Sequence[str]):
    from tagseg.segmentation.config import load_segment_config

    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise TagsegError(f"{run} is not a tagseg segmentation run folder (no config.yaml)")
    return load_segment_config(str(cfg_path), overrides)


def cmd_segment(args: argparse.Namespace) -> int:
    """Dispatch ``segment <train|eval>``."""
    return args.segment_handler(args)


def cmd_segment_train(args: argparse.Namespace) -> int:
    from tagseg.segmentation.config import load_segment_config
    from tagseg.segmentation.trainer import SegmentationTrainer
    from tagseg.engine.checkpoint import ensure_fresh_run_dir

    cfg = load_segment_config(args.config, args.overrides)
    out = Path(args.out or f"runs/{cfg.name}")
    with run_lock(out):
        ensure_fresh_run_dir(out, args.resume)
        result = SegmentationTrainer(cfg, out, resume=args.resume).fit(stop_after_epoch=args.stop_after_epoch)
    print(f"saved {result}")
    return 0


def _parse_shard(text: str) -> "tuple[int, int] | str":
    from tagseg.engine.distributed import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_segment_eval(args: argparse.Namespace) -> int:
    from tagseg.data.build import build_index
    from tagseg.evaluation.miou import format_table
    from tagseg.segmentation.evaluate import check_class_names, evaluate_segmenter
    from tagseg.segmentation.inference import load_segmenter
    from tagseg.engine.distributed import DistInfo, launch_device, resolve_device, resolve_shard
    from tagseg.evaluation.shards import shard_file_name
    from tagseg.utils.io import write_json

    run = Path(args.run)
    cfg = _run_config(run, args.overrides)
    shard, launch = resolve_shard(args.shard)
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
    summary = evaluate_segmenter(model, index, cfg.inference, device, save_dir=save_dir, palette=info["palette"],
                                 shard=shard)
    summary["split"] = split
    part = f"shard {shard[0]}/{shard[1]}: " if shard[1] > 1 else ""
    print(format_table(summary, title=f"{model_path} on {index.name} ({part}{summary['images']} images; scales "
                                      f"{list(cfg.inference.scales)}, flip={cfg.inference.flip}, crf={cfg.inference.crf})"))
    out = Path(args.out) if args.out else run / shard_file_name(shard)
    write_json(out, summary)
    print(f"metrics -> {out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Exit status 0 when every input was processed, 1 when some failed (the rest are written)."""
    from tagseg.segmentation.predict import run_predict

    out = Path(args.out)
    report = run_predict(args.images, args.model, out, scales=args.scales, flip=args.flip, crf=args.crf,
                         classes=args.classes, device=args.device)
    print(f"{len(report.written)} images -> {out / 'masks'} (masks) and {out / 'overlays'} (overlays) "
          f"in {report.seconds:.1f}s")
    if report.failures:
        print(f"{len(report.failures)} inputs failed:", file=sys.stderr)
        for item, error in report.failures:
            print(f"  {item}: {error}", file=sys.stderr)
        return 1
    return 0


SEGMENT_COMMANDS = {"segment": cmd_segment, "predict": cmd_predict}


def build_parser() -> argparse.ArgumentParser:
    """A parser with only the segmentation commands (the ``tagseg`` parser adds the same ones)."""
    parser = argparse.ArgumentParser(prog="tagseg", description="DeepLab segmentation stage of tagseg.")
    add_segment_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one segmentation command with tagseg's error handling (exit status 2 on bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return SEGMENT_COMMANDS[args.command](args)
    except TagsegError as exc:
        print(f"tagseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tagseg {args.command}: interrupted; finished outputs are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
