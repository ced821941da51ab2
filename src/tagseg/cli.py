"""The ``tagseg`` command line: demo, train, pseudo, eval, configs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from tagseg.errors import TagsegError


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

    p = sub.add_parser("train", help="train a patch classifier from a config")
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
    _add_overrides(p)

    p = sub.add_parser("eval", help="score predicted masks against ground truth")
    p.add_argument("pred", help="folder of <id>.png masks")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="take the dataset from this run's config.yaml")
    src.add_argument("--config", help="take the dataset from this config (name or YAML)")
    p.add_argument("--split", help="split to score (default: data.pseudo_split)")
    p.add_argument("--out", help="JSON file for the metrics (default: <pred>/../eval.json)")
    _add_overrides(p)

    sub.add_parser("configs", help="list the shipped experiment configs")
    return parser


def _resolve_run_config(run: Path, overrides: Sequence[str]):
    from tagseg.config import load_config

    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise TagsegError(f"{run} is not a tagseg run folder (no config.yaml)")
    return load_config(str(cfg_path), overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from tagseg.config import load_config
    from tagseg.training.checkpoint import list_checkpoints
    from tagseg.training.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or f"runs/{cfg.name}")
    if not args.resume and list_checkpoints(out):
        raise TagsegError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")
    result = Trainer(cfg, out, resume=args.resume).fit(stop_after_epoch=args.stop_after_epoch)
    print(f"saved {result}")
    return 0


def cmd_pseudo(args: argparse.Namespace) -> int:
    import torch

    from tagseg.data.build import build_index
    from tagseg.pseudo.generate import generate_pseudo_masks
    from tagseg.pseudo.inference import load_trained_model
    from tagseg.training.distributed import DistInfo, resolve_device

    run = Path(args.run)
    cfg = _resolve_run_config(run, args.overrides)
    device = resolve_device(cfg.device, DistInfo())
    model, _, info = load_trained_model(run / "model.safetensors", device)
    split = args.split or cfg.data.pseudo_split
    out = Path(args.out or run / "pseudo" / split)
    index = build_index(cfg.data, split)
    with torch.no_grad():
        stats = generate_pseudo_masks(model, index, out, cfg.pseudo, device, shard=args.shard,
                                      overwrite=args.overwrite, family=info["family"])
    print(f"pseudo-masks: {stats.written} written, {stats.skipped} already done, "
          f"{stats.seconds:.1f}s -> {out / 'masks'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tagseg.config import load_config
    from tagseg.data.build import build_index
    from tagseg.evaluation.evaluate import evaluate_folder
    from tagseg.evaluation.miou import format_table
    from tagseg.utils.io import write_json

    cfg = _resolve_run_config(Path(args.run), args.overrides) if args.run else load_config(args.config, args.overrides)
    split = args.split or cfg.data.pseudo_split
    index = build_index(cfg.data, split)
    summary = evaluate_folder(args.pred, index)
    print(format_table(summary, title=f"{args.pred} vs {index.name} ({len(index)} images)"))
    out = Path(args.out) if args.out else Path(args.pred).resolve().parent / "eval.json"
    write_json(out, summary)
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


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "pseudo": cmd_pseudo, "eval": cmd_eval, "configs": cmd_configs}


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
