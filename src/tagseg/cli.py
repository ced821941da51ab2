"""The ``tagseg`` command line: demo, train, pseudo, eval, configs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from tagseg.errors import TagsegError
from tagseg.report.cli import add_report_command, cmd_report
from tagseg.segmentation.cli import SEGMENT_COMMANDS, add_segment_commands


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. train.epochs=2 data.root=/data/VOC2012")


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard expects i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= i < n")
    return i, n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagseg", description="Pseudo-masks from image-level tags (WSSS).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="generate the synthetic demo data, train TKP-PCL, make and score pseudo-masks")
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    _add_overrides(p)

    p = sub.add_parser("train", help="train a WSSS model (patch-classifier or CAM family) from a config")
    p.add_argument("--config", required=True, help="a shipped config name (see `tagseg configs`) or a YAML path")
    p.add_argument("--out", help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--stop-after-epoch", type=int, default=None, help="stop after this many finished epochs")
    _add_overrides(p)

    p = sub.add_parser("pseudo", help="write pseudo-masks with a trained model")
    p.add_argument("--run", required=True, help="run folder of `tagseg train` (holds model.safetensors)")
    p.add_argument("--split", help="split to process (default: data.pseudo_split of the run)")
    p.add_argument("--out", help="output folder (default: <run>/pseudo/<split>)")
    p.add_argument("--shard", type=_parse_shard, default=(0, 1), help="process shard i of n (i/n)")
    p.add_argument("--overwrite", action="store_true", help="recompute masks that already exist")
    p.add_argument("--crf", choices=["none", "torch", "pydensecrf"],
                   help="also write dense-CRF refined masks to <out>/crf/masks (default: pseudo.crf)")
    p.add_argument("--workers", type=int, default=1, help="CPU processes (default 1)")
    _add_overrides(p)

    p = sub.add_parser("eval", help="score predicted masks against ground truth (mIoU, contour F, J&F)")
    p.add_argument("pred", nargs="*", help="folder(s) of <id>.png masks; several folders (e.g. one per "
                                           "seed) are scored separately and averaged (mean ± std)")
    p.add_argument("--sweep-bg", metavar="T1,T2,...",
                   help="CAM family: score these background thresholds from the run's model (needs --run); "
                        "the best is reported as chosen on the ground truth")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="take the dataset from this run's config.yaml")
    src.add_argument("--config", help="take the dataset from this config (name or YAML)")
    p.add_argument("--split", help="split to score (default: data.pseudo_split)")
    p.add_argument("--out", help="JSON file for the metrics (default: <pred>/../eval.json; several "
                                 "folders: ./eval_runs.json)")
    _add_overrides(p)

    sub.add_parser("configs", help="list the shipped experiment configs")
    add_report_command(sub)
    add_segment_commands(sub)
    return parser


def _resolve_run_config(run: Path, overrides: Sequence[str]):
    from tagseg.config import load_config

    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise TagsegError(f"{run} is not a tagseg run folder (no config.yaml)")
    return load_config(str(cfg_path), overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from tagseg.config import load_config
    from tagseg.training.checkpoint import ensure_fresh_run_dir
    from tagseg.training.trainer import Trainer

    if Path(args.config).stem.startswith("segment"):
        raise TagsegError(f"{args.config} is a segmentation-stage config: use `tagseg segment train --config {args.config}`")
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or f"runs/{cfg.name}")
    ensure_fresh_run_dir(out, args.resume)
    result = Trainer(cfg, out, resume=args.resume).fit(stop_after_epoch=args.stop_after_epoch)
    print(f"saved {result}")
    return 0


def cmd_pseudo(args: argparse.Namespace) -> int:
    import torch

    from tagseg.data.build import build_index
    from tagseg.pseudo.generate import generate_pseudo_masks
    from tagseg.inference.loading import load_trained_model
    from tagseg.training.distributed import DistInfo, resolve_device

    run = Path(args.run)
    overrides = [*args.overrides, *([f"pseudo.crf={args.crf}"] if args.crf else [])]
    cfg = _resolve_run_config(run, overrides)
    if args.workers < 1:
        raise TagsegError(f"--workers must be >= 1, got {args.workers}")
    device = resolve_device(cfg.device, DistInfo())
    model, _, info = load_trained_model(run / "model.safetensors", device)
    split = args.split or cfg.data.pseudo_split
    out = Path(args.out or run / "pseudo" / split)
    index = build_index(cfg.data, split)
    with torch.no_grad():
        stats = generate_pseudo_masks(model, index, out, cfg.pseudo, device, shard=args.shard,
                                      overwrite=args.overwrite, family=info["family"], workers=args.workers,
                                      model_path=run / "model.safetensors")
    rate = f", {stats.written / stats.seconds:.2f} img/s" if stats.written and stats.seconds > 0 else ""
    print(f"pseudo-masks: {stats.written} written, {stats.skipped} already done, "
          f"{stats.seconds:.1f}s{rate} -> {out / 'masks'}" + (f" and {out / 'crf' / 'masks'}" if cfg.pseudo.crf != "none" else ""))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tagseg.config import load_config
    from tagseg.data.build import build_index
    from tagseg.evaluation.evaluate import evaluate_folder, summarize_runs
    from tagseg.evaluation.miou import format_table
    from tagseg.utils.io import write_json

    cfg = _resolve_run_config(Path(args.run), args.overrides) if args.run else load_config(args.config, args.overrides)
    split = args.split or cfg.data.pseudo_split
    if args.sweep_bg:
        from tagseg.evaluation.bg_sweep import sweep_bg_cli

        if not args.run:
            raise TagsegError("--sweep-bg needs --run (the CAMs come from the run's model)")
        try:
            thresholds = [float(x) for x in args.sweep_bg.split(",") if x.strip()]
        except ValueError:
            raise TagsegError(f"--sweep-bg expects comma-separated numbers, got {args.sweep_bg!r}") from None
        sweep_bg_cli(Path(args.run), split, thresholds, args.overrides)
        return 0
    if not args.pred:
        raise TagsegError("give at least one folder of predicted masks (or --sweep-bg with --run)")
    index = build_index(cfg.data, split)
    summaries = []
    for pred in args.pred:
        summary = evaluate_folder(pred, index)
        summaries.append(summary)
        print(format_table(summary, title=f"{pred} vs {index.name} ({len(index)} images)") + "\n")
    if len(summaries) == 1:
        out = Path(args.out) if args.out else Path(args.pred[0]).resolve().parent / "eval.json"
        write_json(out, summaries[0])
    else:
        runs = summarize_runs(summaries, args.pred)
        print(f"{'over ' + str(len(summaries)) + ' runs':<16}" + "   ".join(
            f"{name} {100 * m['mean']:.1f} ± {100 * m['std']:.1f}" for name, m in runs["metrics"].items()))
        out = Path(args.out) if args.out else Path("eval_runs.json")
        write_json(out, runs)
    print(f"metrics -> {out}")
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    from tagseg.config import shipped_configs

    print("\n".join(shipped_configs()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tagseg.demo import run_demo

    run_demo(Path(args.out), args.overrides)
    return 0


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "pseudo": cmd_pseudo, "eval": cmd_eval, "configs": cmd_configs,
            "report": cmd_report, **SEGMENT_COMMANDS}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except TagsegError as exc:
        print(f"tagseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tagseg {args.command}: interrupted; finished outputs are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
