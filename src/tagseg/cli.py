"""The ``tagseg`` command line: one parser, one subcommand per verb.

Verbs: demo, train, pseudo, refine, eval, configs, report, segment train|eval, predict, prepare voc|coco.
Every verb takes
``key=value`` overrides (the configuration keys of its stage), ``--threads N`` (CPU threads per
process; default: the machine's cores divided by the processes the verb runs) and ``--device``
(report: ``--threads`` only, it runs no network). Overrides may stand anywhere among a verb's
options (:func:`parse_args`). The handlers of the refine, segmentation, report and prepare verbs live
beside their stage (``refine/cli.py``, ``segment/cli.py``, ``report/cli.py``,
``data/prepare/cli.py``) and are
imported only when their verb runs (:func:`_lazy`), so ``--help`` loads neither torch nor numpy;
the parser, which declares every verb, is here (:func:`build_parser`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import math
import os
import re
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from tagseg import __version__
from tagseg.config import CRF_CHOICES
from tagseg.data.prepare.cli import add_prepare_command
from tagseg.errors import TagsegError
from tagseg.refine.cli import add_refine_command
from tagseg.utils.runlock import run_lock
from tagseg.utils.runtime import apply_threads, device_overrides, inference_processes, world_size
from tagseg.utils.safe_paths import check_path_text, refuse_links_out
from tagseg.utils.signals import EXIT_SIGINT, EXIT_SIGTERM, Terminated, sigterm_as_interrupt

OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")


# ------------------------------------------------------------------------------ argument types


def _parse_shard(text: str) -> "tuple[int, int] | str":
    from tagseg.runner.launch import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


SHARD_HELP = ("process shard i of n (i/n), or auto: rank and world size from torchrun (RANK, WORLD_SIZE, "
              "LOCAL_RANK) or SLURM (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), one GPU per process "
              "(cuda:LOCAL_RANK); without a launcher, auto is 0/1")


MAX_SCALE = 8.0  # an image resized beyond 8x its size is a typo, and an allocation that fails


def _parse_scales(text: str) -> list[float]:
    try:
        scales = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scales expects comma-separated numbers (e.g. 0.75,1,1.25), got {text!r}") from None
    if not scales or not all(math.isfinite(s) and 0 < s <= MAX_SCALE for s in scales) or len(scales) > 16:
        raise argparse.ArgumentTypeError(f"--scales {text[:60]}: need 1 to 16 finite scales in (0, {MAX_SCALE:g}]")
    return scales


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# ------------------------------------------------------------------------------- the parser


def _lazy(target: str) -> Callable[[argparse.Namespace], int]:
    """A handler ``"module:function"`` imported only when its verb runs, so that ``--help`` and
    the other verbs never pay for its imports (torch, scipy, ...)."""
    module, _, attr = target.partition(":")

    def handler(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), attr)(args)

    handler.__qualname__ = handler.__name__ = attr
    return handler


def _common(device: bool = True) -> argparse.ArgumentParser:
    """--threads (and --device) shared by the verbs."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads per process (default: the machine's cores divided by the processes "
                        "this command runs; use 1 on a machine busy with other work)")
    if device:
        p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: the config's device)")
    return p


def _add_overrides(p: argparse.ArgumentParser, example: str = "train.epochs=2 data.root=/data/VOC2012") -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value", help=f"config overrides, e.g. {example}")


def _add_training_args(p: argparse.ArgumentParser, config_help: str) -> None:
    p.add_argument("--config", required=True, help=config_help)
    p.add_argument("--out", help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--stop-after-epoch", type=int, default=None, help="stop after this many finished epochs")


def _add_check_data(p: argparse.ArgumentParser, masks: str = "masks") -> None:
    from tagseg.data.check import CHECK_DATA_DEFAULT_MAX  # tagseg.data.check imports no torch

    p.add_argument("--check-data", action=argparse.BooleanOptionalAction, default=None,
                   help=f"decode every image and its {masks} of the training split before training starts "
                        f"(default: on for at most {CHECK_DATA_DEFAULT_MAX:,} images)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagseg", description="Pseudo-masks from image-level tags (WSSS).")
    parser.add_argument("--version", action="version", version=f"tagseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    common, common_no_device = _common(), _common(device=False)

    p = sub.add_parser("demo", parents=[common],
                       help="generate the synthetic demo data, train TKP-PCL, make and score pseudo-masks")
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    _add_overrides(p, "method.pooling=max")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("train", parents=[common],
                       help="train a WSSS model (patch-classifier or CAM family) from a config")
    _add_training_args(p, "a shipped config name (see `tagseg configs`) or a YAML path")
    _add_check_data(p)
    _add_overrides(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("pseudo", parents=[common], help="write pseudo-masks with a trained model")
    p.add_argument("--run", required=True, help="run folder of `tagseg train` (holds model.safetensors)")
    p.add_argument("--split", help="split to process (default: data.pseudo_split of the run)")
    p.add_argument("--out", help="output folder (default: <run>/pseudo/<split>)")
    p.add_argument("--shard", type=_parse_shard, default=(0, 1), help=SHARD_HELP)
    p.add_argument("--overwrite", action="store_true", help="recompute masks that already exist")
    p.add_argument("--crf", choices=CRF_CHOICES,
                   help="also write dense-CRF refined masks to <out>/crf/masks (default: pseudo.crf)")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="CPU processes, each running --threads threads (default: cores / workers). With "
                        "neither flag, on a CPU: single-threaded processes, one per core (at most 4) when "
                        "there are at least 128 images per process, else one; on a GPU: 1 process")
    _add_overrides(p, "pseudo.flip=true pseudo.image_size=320")
    p.set_defaults(handler=cmd_pseudo)

    p = sub.add_parser("eval", parents=[common],
                       help="score predicted masks against ground truth (mIoU, contour F, J&F)")
    p.add_argument("--pred", nargs="+", default=[], metavar="DIR",
                   help="folder(s) of <id>.png masks; several folders (e.g. one per seed) are scored "
                        "separately and averaged (mean ± std)")
    p.add_argument("--sweep-bg", metavar="T1,T2,...",
                   help="CAM family: score these background thresholds from the run's model (needs --run); "
                        "the best is reported as chosen on the ground truth")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--run", help="take the dataset (and, for --sweep-bg, the model) from this run folder")
    src.add_argument("--config", help="take the dataset from this config (name or YAML)")
    p.add_argument("--split", help="split to score (default: data.pseudo_split)")
    p.add_argument("--shard", type=_parse_shard, default=(0, 1),
                   help=SHARD_HELP.replace("process shard", "score shard") + "; writes eval.shard-<i>-of-<n>.json "
                        "with the sums `--merge` adds")
    p.add_argument("--merge", nargs="+", metavar="EVAL_JSON",
                   help="add the eval.json of every shard into the exact whole-set result (no --pred/--run)")
    p.add_argument("--out", help="JSON file for the metrics (default: <pred>/../eval.json, "
                                 "<pred>/../eval.shard-<i>-of-<n>.json for a shard; several folders: "
                                 "./eval_runs.json; --merge: ./eval.json beside the first shard file; --sweep-bg: "
                                 "<run>/bg_sweep_<split>.json, or a name spelling the settings when that exists)")
    _add_overrides(p, "data.max_images=100 pseudo.image_size=320")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("configs", parents=[common],
                       help="list the shipped experiment configs, or print one resolved with overrides")
    p.add_argument("name", nargs="?", help="a config name or YAML path to print resolved (default: list the names)")
    _add_overrides(p, "method.topk=3")
    p.set_defaults(handler=cmd_configs)

    p = sub.add_parser("report", parents=[common_no_device], help="write a self-contained HTML report of a run folder")
    p.add_argument("run", metavar="RUN_DIR", help="run folder (config.yaml, history.jsonl, pseudo/, predictions/)")
    p.add_argument("--out", help="HTML file to write (default: RUN_DIR/report.html)")
    p.add_argument("--split", help="split whose masks the sample grid shows (default: data.pseudo_split "
                                   "if it has masks, else data.val_split, else the first found)")
    p.add_argument("--samples", type=_non_negative_int, default=24,
                   help="sample rows, worst first by per-image mIoU (default: 24)")
    p.add_argument("--thumb", type=_non_negative_int, default=200,
                   help="thumbnail size in px, longer side (default: 200)")
    p.add_argument("--data-root", help="dataset folder, when it moved since the run (replaces data.root)")
    _add_overrides(p, "data.max_images=50 (data.* keys of the run's config)")
    p.set_defaults(handler=_lazy("tagseg.report.cli:cmd_report"))

    seg = sub.add_parser("segment", help="train or evaluate the DeepLab segmentation network on pseudo-masks")
    seg_sub = seg.add_subparsers(dest="segment_command", required=True)
    p = seg_sub.add_parser("train", parents=[common], help="train a DeepLab network on the pseudo-masks of a config")
    _add_training_args(p, "a shipped config name (e.g. segment_voc) or a YAML path")
    _add_check_data(p, "training masks (segment.masks_dir)")
    _add_overrides(p, "train.epochs=2 segment.masks_dir=runs/x/pseudo/train_aug/masks")
    p.set_defaults(handler=_lazy("tagseg.segment.cli:cmd_segment_train"))

    p = seg_sub.add_parser("eval", parents=[common],
                           help="score a trained network on a split with ground truth (mIoU, contour F, J&F)")
    p.add_argument("--run", required=True, help="run folder of `tagseg segment train`")
    p.add_argument("--split", help="split to score (default: data.val_split of the run)")
    p.add_argument("--shard", type=_parse_shard, default=(0, 1),
                   help="score shard i of n (i/n), or auto: from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or SLURM "
                        "(SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), one GPU per process; writes "
                        "eval.shard-<i>-of-<n>.json, added up by `tagseg eval --merge`")
    p.add_argument("--out", help="JSON file for the metrics (default: <run>/eval.json, "
                                 "<run>/eval.shard-<i>-of-<n>.json for a shard)")
    p.add_argument("--save-masks", action="store_true", help="also write the predictions to <run>/predictions/<split>/")
    _add_overrides(p, "inference.flip=true data.max_images=50")
    p.set_defaults(handler=_lazy("tagseg.segment.cli:cmd_segment_eval"))

    p = sub.add_parser("predict", parents=[common],
                       help="write masks and colour overlays for images with a segmentation model")
    p.add_argument("images", nargs="+", metavar="IMAGES",
                   help="image files and/or folders of images, then any key=value overrides of the model's "
                        "inference settings (inference.scales=[1.0,0.75] ...)")
    p.add_argument("--model", required=True, help="model.safetensors of `tagseg segment train` (or its run folder)")
    p.add_argument("--out", help="output folder (default: <folder of the model>/predict/<name of the first input>)")
    p.add_argument("--scales", type=_parse_scales, default=None,
                   help="comma-separated inference scales (default: those stored in the model)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the mirrored image (default: as stored in the model)")
    p.add_argument("--crf", choices=CRF_CHOICES, default=None,
                   help="dense-CRF refinement (default: as stored in the model)")
    p.add_argument("--classes", default=None,
                   help="check the model's classes against 'voc', a classes file or a folder with classes.txt")
    p.set_defaults(handler=_lazy("tagseg.segment.cli:cmd_predict"))

    add_prepare_command(sub)
    add_refine_command(sub, common, _parse_shard, SHARD_HELP)
    sub.choices["prepare"].set_defaults(handler=_lazy("tagseg.data.prepare.cli:cmd_prepare"))
    return parser


def split_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate ``key=value`` overrides from paths in a list of positional words: a word is an
    override when it looks like ``dotted.key=value`` and is not an existing path."""
    paths, overrides = [], []
    for item in items:
        (overrides if OVERRIDE.match(item) and not Path(item).exists() else paths).append(item)
    return paths, overrides


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides may stand anywhere among a verb's options.

    argparse fills a verb's ``key=value ...`` positional from one run of words only, so words after
    a later option come back unrecognised: those that look like overrides join the verb's overrides
    in the order given (``predict`` takes other such words as images); anything else is an error.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "eval":
        args.pred, overrides = split_overrides(args.pred)
        args.overrides = [*overrides, *args.overrides]
    elif args.command == "predict":
        args.images, args.overrides = split_overrides(args.images)
        more_images, extra = split_overrides(extra)
        args.images += [p for p in more_images if not p.startswith("-")]
        extra = [p for p in more_images if p.startswith("-")] + extra
    late = [word for word in extra if OVERRIDE.match(word)]
    unknown = [word for word in extra if not OVERRIDE.match(word)]
    if late and not hasattr(args, "overrides"):
        unknown = extra
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if late:
        args.overrides = [*args.overrides, *late]
    return args


# ---------------------------------------------------------------------------------- handlers


def _resolve_run_config(run: Path, overrides: Sequence[str], verb: str):
    """The run's configuration with the overrides ``verb`` applies (others are refused, naming
    the key), checked like training checks it (family, add-on sections)."""
    from tagseg.config import check_verb_overrides
    from tagseg.experiment import load_experiment

    from tagseg.utils.run_kind import TAGS, require_run_kind

    check_verb_overrides(verb, overrides)
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise TagsegError(f"{run} is not a tagseg run folder (no config.yaml)")
    require_run_kind(run, TAGS, "use")
    return load_experiment(str(cfg_path), overrides)


def _note_cost(stage: str, cfg) -> None:
    """One line on stderr when the stage's inference costs far more per image than training."""
    from tagseg.utils.cost import cost_note

    note = cost_note(stage, cfg.data.image_size, cfg.pseudo.image_size, cfg.pseudo.scales, cfg.pseudo.flip)
    if note:
        print(note, file=sys.stderr)


def _check_data(cfg, requested: Optional[bool]) -> None:
    """``train --check-data``: decode the training split before the first epoch (see tagseg.data.check)."""
    from tagseg.data.build import build_index
    from tagseg.data.check import check_split, should_check

    if cfg.data.dataset == "synthetic":
        return  # generated by the run itself
    index = build_index(cfg.data, cfg.data.train_split)
    if should_check(requested, len(index)):
        progress = os.environ.get("RANK", "0") == "0" and sys.stderr.isatty()
        files = check_split(index, progress=progress)
        print(f"checked {files} files of {index.name or cfg.data.train_split}: all decode")


def cmd_train(args: argparse.Namespace) -> int:
    from tagseg.config import load_config
    from tagseg.engine.checkpoint import ensure_fresh_run_dir
    from tagseg.classify.trainer import Trainer
    from tagseg.utils.run_kind import TAGS, require_run_kind
    from tagseg.utils.safe_paths import run_folder

    if Path(args.config).stem.startswith("segment"):
        raise TagsegError(f"{args.config} is a segmentation-stage config: use `tagseg segment train --config {args.config}`")
    threads = [f"train.cpu_threads={args.threads}"] if args.threads else []
    cfg = load_config(args.config, [*device_overrides(args.device), *threads, *args.overrides])
    out = Path(args.out) if args.out else run_folder(cfg.name)
    with run_lock(out):
        require_run_kind(out, TAGS, "resume" if args.resume else "train into")
        ensure_fresh_run_dir(out, args.resume)
        apply_threads(cfg.train.cpu_threads or None, world_size(), cfg.data.num_workers)  # the trainer keeps it
        _check_data(cfg, args.check_data)
        result = Trainer(cfg, out, resume=args.resume).fit(stop_after_epoch=args.stop_after_epoch)
    print(f"saved {result}")
    return 0


def cmd_pseudo(args: argparse.Namespace) -> int:
    import torch

    from tagseg.data.build import build_index
    from tagseg.inference.loading import load_trained_model
    from tagseg.pseudo.generate import generate_pseudo_masks
    from tagseg.engine.distributed import DistInfo, launch_device, resolve_device
    from tagseg.runner.launch import resolve_shard

    run = Path(args.run)
    overrides = [*device_overrides(args.device), *args.overrides, *([f"pseudo.crf={args.crf}"] if args.crf else [])]
    cfg = _resolve_run_config(run, overrides, "pseudo")
    args.shard, launch = resolve_shard(args.shard)
    # one GPU per launched process: cuda:LOCAL_RANK (or the one GPU the launcher left visible)
    device = resolve_device(launch_device(launch, cfg.device) if launch.source != "single" else cfg.device,
                            DistInfo())
    split = args.split or cfg.data.pseudo_split
    out = Path(args.out or run / "pseudo" / split)
    _note_cost("pseudo", cfg)
    index = build_index(cfg.data, split)
    threads, workers = inference_processes(device.type, len(index) // args.shard[1], args.workers, args.threads)
    apply_threads(threads)
    model, _, info = load_trained_model(run / "model.safetensors", device)
    with torch.no_grad():  # the runner holds the folder's (shard's) lock
        stats = generate_pseudo_masks(model, index, out, cfg.pseudo, device, shard=args.shard,
                                      overwrite=args.overwrite, family=info["family"], workers=workers,
                                      model_path=run / "model.safetensors", threads=threads,
                                      manifest={"run": run, "split": split, "config": cfg,
                                                "input": cfg.data.root})
    rate = f", {stats.written / stats.seconds:.2f} img/s" if stats.written and stats.seconds > 0 else ""
    print(f"pseudo-masks: {stats.written} written, {stats.skipped} already done, "
          f"{stats.seconds:.1f}s{rate} ({workers} process{'es' if workers > 1 else ''} × {threads} "
          f"thread{'s' if threads > 1 else ''}) -> {out / 'masks'}"
          + (f" and {out / 'crf' / 'masks'}" if cfg.pseudo.crf != "none" else ""))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tagseg.config import check_verb_overrides
    from tagseg.data.build import build_index
    from tagseg.runner.launch import resolve_shard
    from tagseg.experiment import load_experiment
    from tagseg.evaluate.folder import evaluate_folder, merge_eval_files, summarize_runs
    from tagseg.metrics.miou import format_table
    from tagseg.metrics.shards import shard_file_name
    from tagseg.utils.io import write_json

    if args.merge:
        if args.pred or args.run or args.config or args.sweep_bg:
            raise TagsegError("--merge takes only the shards' eval.json files (and --out)")
        summary = merge_eval_files(args.merge)
        print(format_table(summary, title=f"{len(args.merge)} shards of {summary['dataset']} "
                                          f"({summary['images']} images)") + "\n")
        out = Path(args.out) if args.out else Path(args.merge[0]).resolve().parent / "eval.json"
        write_json(out, summary)
        print(f"metrics -> {out}")
        return 0
    if not (args.run or args.config):
        raise TagsegError("give the dataset with --run RUN or --config CONFIG (or merge shards with --merge)")
    not_overrides = [o for o in args.overrides if "=" not in o]
    if not_overrides:
        raise TagsegError(f"{not_overrides[0]!r} is not a key=value override; prediction folders go behind "
                          f"--pred (tagseg eval --pred DIR [DIR ...] --run RUN)")
    shard, _ = resolve_shard(args.shard)
    overrides = [*device_overrides(args.device), *args.overrides]
    verb = "eval --sweep-bg" if args.sweep_bg else "eval"
    if args.run:
        cfg = _resolve_run_config(Path(args.run), overrides, verb)
    else:
        check_verb_overrides(verb, overrides)
        cfg = load_experiment(args.config, overrides)
    apply_threads(args.threads)
    split = args.split or cfg.data.pseudo_split
    if args.sweep_bg:
        from tagseg.evaluate.bg_sweep import sweep_bg_cli

        if not args.run:
            raise TagsegError("--sweep-bg needs --run (the CAMs come from the run's model)")
        _note_cost("the background sweep", cfg)
        try:
            thresholds = [float(x) for x in args.sweep_bg.split(",") if x.strip()]
        except ValueError:
            raise TagsegError(f"--sweep-bg expects comma-separated numbers, got {args.sweep_bg!r}") from None
        sweep_bg_cli(Path(args.run), split, thresholds, overrides, out=Path(args.out) if args.out else None)
        return 0
    if not args.pred:
        raise TagsegError("give at least one folder of predicted masks with --pred (or --sweep-bg with --run)")
    index = build_index(cfg.data, split)
    if shard[1] > 1 and len(args.pred) > 1:
        raise TagsegError("--shard scores one prediction folder at a time")
    summaries = []
    for pred in args.pred:
        summary = evaluate_folder(pred, index, shard=shard)
        summaries.append(summary)
        part = f"shard {shard[0]}/{shard[1]}: " if shard[1] > 1 else ""
        print(format_table(summary, title=f"{pred} vs {index.name} ({part}{summary['images']} images)") + "\n")
    if len(summaries) == 1:
        out = Path(args.out) if args.out else Path(args.pred[0]).resolve().parent / shard_file_name(shard)
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
    from tagseg.config import config_to_yaml, shipped_configs

    # nothing is computed here: no torch threads to set (and no torch to import)
    if args.name is None:
        if args.overrides or args.device:
            raise TagsegError("overrides and --device need a config name: tagseg configs NAME key=value ...")
        print("\n".join(shipped_configs()))
        return 0
    if Path(args.name).stem.startswith("segment"):
        from tagseg.segment.config import load_segment_config

        cfg = load_segment_config(args.name, [*device_overrides(args.device), *args.overrides])
    else:
        from tagseg.experiment import load_experiment  # the family and add-on registries (torch)

        cfg = load_experiment(args.name, [*device_overrides(args.device), *args.overrides])
    print(config_to_yaml(cfg), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tagseg.demo import run_demo

    threads = [f"train.cpu_threads={args.threads}"] if args.threads else []
    run_demo(Path(args.out), [*device_overrides(args.device), *threads, *args.overrides], threads=args.threads)
    return 0


def _output_folders(args: argparse.Namespace) -> list[Path]:
    """The run and output folders a verb writes into (``--run``, ``--out``); ``prepare`` guards its
    own tree (its image files may be links on purpose)."""
    if args.command == "prepare":
        return []
    found = []
    for attr in ("run", "out"):
        value = getattr(args, attr, None)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, (str, Path)) and str(item):
                found.append(check_path_text(item, f"--{attr}"))
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    name = args.command + (f" {args.segment_command}" if args.command == "segment" else "")
    try:
        from tagseg.utils.io import output_root  # here: numpy and Pillow load only when a verb runs

        with sigterm_as_interrupt(), contextlib.ExitStack() as roots:
            for root in _output_folders(args):
                refuse_links_out(root)  # a pre-planted link to elsewhere is refused before any work
                roots.enter_context(output_root(root))  # and every atomic write under the folder is checked
            return args.handler(args)
    except TagsegError as exc:
        print(f"tagseg {name}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # what the commands do not turn into a TagsegError themselves: one line, not a traceback
        where = str(exc.filename) if exc.filename else ""
        where = f" ({where[:80]}{'...' if len(where) > 80 else ''})" if where else ""
        if exc.errno == errno.ENAMETOOLONG:
            print(f"tagseg {name}: error: a path is too long for the file system{where}", file=sys.stderr)
        else:
            print(f"tagseg {name}: error: {exc.strerror or type(exc).__name__}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        how = "interrupted by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
        print(f"tagseg {name}: {how}; finished outputs and the last checkpoint are kept", file=sys.stderr)
        return EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT


if __name__ == "__main__":
    sys.exit(main())
