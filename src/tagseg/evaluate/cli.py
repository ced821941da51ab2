"""``tagseg eval``: the verb of the evaluation stage (folders of masks, shard merges, the
background-threshold sweep)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tagseg.cli_args import SHARD_HELP, add_overrides, common, parse_shard


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", parents=[common()],
                              help="score predicted masks against ground truth (mIoU, contour F, J&F)")
    p.add_argument("--pred", nargs="+", default=[], metavar="DIR",
                   help="folder(s) of <id>.png masks; several folders are scored separately and shown side "
                        "by side (e.g. seed, CRF and refined masks of one run)")
    p.add_argument("--seeds", action="store_true",
                   help="the --pred folders are seeds of one setting: add their mean ± std")
    p.add_argument("--classes", metavar="NAME,NAME,...",
                   help="also report the mIoU over these classes (e.g. the well-represented ones: "
                        "background,cat,dog,person); names as in the dataset's class list")
    p.add_argument("--sweep-bg", metavar="T1,T2,...",
                   help="CAM family: score these background thresholds from the run's model (needs --run); "
                        "the best is reported as chosen on the ground truth")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--run", help="take the dataset (and, for --sweep-bg, the model) from this run folder")
    src.add_argument("--config", help="take the dataset from this config (name or YAML)")
    p.add_argument("--split", help="split to score (default: data.pseudo_split)")
    p.add_argument("--shard", type=parse_shard, default=(0, 1),
                   help=SHARD_HELP.replace("process shard", "score shard") + "; writes eval.shard-<i>-of-<n>.json "
                        "with the sums `--merge` adds")
    p.add_argument("--merge", nargs="+", metavar="EVAL_JSON",
                   help="add the eval.json of every shard into the exact whole-set result (no --pred/--run)")
    p.add_argument("--out", help="JSON file for the metrics (default: <pred>/../eval.json, "
                                 "<pred>/../eval.shard-<i>-of-<n>.json for a shard; several folders: "
                                 "./eval_runs.json; --merge: ./eval.json beside the first shard file; --sweep-bg: "
                                 "<run>/bg_sweep_<split>.json, or a name spelling the settings when that exists)")
    add_overrides(p, "data.max_images=100 pseudo.image_size=320")
    # override-looking words given behind --pred join the overrides (tagseg.cli.parse_args)
    p.set_defaults(handler=cmd_eval, paths_with_overrides="pred")


def cmd_eval(args: argparse.Namespace) -> int:
    from tagseg.config import check_verb_overrides
    from tagseg.data.build import build_index
    from tagseg.errors import TagsegError
    from tagseg.evaluate.folder import compare_runs, evaluate_folder, format_runs, merge_eval_files, summarize_runs
    from tagseg.experiment import load_experiment, load_run_experiment
    from tagseg.metrics.miou import format_table, subset_miou
    from tagseg.metrics.shards import shard_file_name
    from tagseg.runner.launch import resolve_shard
    from tagseg.utils.io import write_json
    from tagseg.utils.runtime import apply_threads, device_overrides

    if args.merge:
        if args.pred or args.run or args.config or args.sweep_bg:
            raise TagsegError("--merge takes only the shards' eval.json files (and --out)")
        summary = merge_eval_files(args.merge)
        if args.classes:
            summary["subset"] = subset_miou(summary, _class_names(args.classes, summary["class_names"]))
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
        cfg = load_run_experiment(Path(args.run), overrides, verb)
    else:
        check_verb_overrides(verb, overrides)
        cfg = load_experiment(args.config, overrides)
    apply_threads(args.threads)
    split = args.split or cfg.data.pseudo_split
    if args.sweep_bg:
        from tagseg.evaluate.bg_sweep import sweep_bg_cli
        from tagseg.utils.cost import print_cost_note

        if args.classes:
            raise TagsegError("--classes applies to scored folders, not to --sweep-bg (which picks on all classes)")
        if not args.run:
            raise TagsegError("--sweep-bg needs --run (the CAMs come from the run's model)")
        print_cost_note("the background sweep", cfg)
        try:
            thresholds = [float(x) for x in args.sweep_bg.split(",") if x.strip()]
        except ValueError:
            raise TagsegError(f"--sweep-bg expects comma-separated numbers, got {args.sweep_bg!r}") from None
        sweep_bg_cli(Path(args.run), split, thresholds, overrides, out=Path(args.out) if args.out else None)
        return 0
    if not args.pred:
        raise TagsegError("give at least one folder of predicted masks with --pred (or --sweep-bg with --run)")
    index = build_index(cfg.data, split)
    if args.seeds and len(args.pred) < 2:
        raise TagsegError("--seeds averages several --pred folders; give two or more")
    if shard[1] > 1 and len(args.pred) > 1:
        raise TagsegError("--shard scores one prediction folder at a time")
    subset = _class_names(args.classes, index.class_names) if args.classes else None  # before any scoring
    summaries = []
    for pred in args.pred:
        summary = evaluate_folder(pred, index, shard=shard)
        if subset:
            summary["subset"] = subset_miou(summary, subset)
        summaries.append(summary)
        part = f"shard {shard[0]}/{shard[1]}: " if shard[1] > 1 else ""
        print(format_table(summary, title=f"{pred} vs {index.name} ({part}{summary['images']} images)") + "\n")
    if len(summaries) == 1:
        out = Path(args.out) if args.out else Path(args.pred[0]).resolve().parent / shard_file_name(shard)
        write_json(out, summaries[0])
    else:
        runs = (summarize_runs if args.seeds else compare_runs)(summaries, args.pred)
        print(format_runs(runs))
        out = Path(args.out) if args.out else Path("eval_runs.json")
        write_json(out, runs)
    print(f"metrics -> {out}")
    return 0


def _class_names(classes: str, class_names) -> list[str]:
    """The names of ``--classes a,b,c``, each a class of the data (TagsegError listing them otherwise)."""
    from tagseg.errors import TagsegError
    from tagseg.metrics.miou import check_known_classes

    names = [n.strip() for n in classes.split(",") if n.strip()]
    if not names:
        raise TagsegError("--classes: give class names separated by commas")
    try:
        check_known_classes(names, class_names)
    except ValueError as e:
        raise TagsegError(f"--classes: {e}") from None
    return names
