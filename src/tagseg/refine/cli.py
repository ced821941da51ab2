"""``tagseg refine``: the verb of the refinement stage."""

from __future__ import annotations

import argparse
from pathlib import Path

from tagseg.cli_args import SHARD_HELP, add_overrides, common, parse_shard
from tagseg.config import REFINE_METHODS

METHOD_HELP = ("irn: IRN's class-boundary branch + random walk (trains the branch first); psa: AffinityNet's "
               "affinity head + random walk (trains the head first); par: pixel-adaptive refinement, no training")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("refine", parents=[common()],
                              help="refine a run's pseudo-masks with IRN, AffinityNet (PSA) or PAR",
                              description="Refined pseudo-masks: <run>/refine/<method>/<split>/masks. "
                                          "Methods: " + METHOD_HELP)
    p.add_argument("--run", required=True, help="run folder of `tagseg train` (holds model.safetensors)")
    p.add_argument("--method", required=True, choices=REFINE_METHODS, help=METHOD_HELP)
    p.add_argument("--split", help="split to refine (default: data.pseudo_split of the run)")
    p.add_argument("--out", help="output folder (default: <run>/refine/<method>/<split>)")
    p.add_argument("--shard", type=parse_shard, default=(0, 1), help=SHARD_HELP)
    p.add_argument("--overwrite", action="store_true", help="recompute masks that already exist")
    p.add_argument("--workers", type=int, default=None,
                   help="CPU processes, each running --threads threads (default: as `tagseg pseudo`)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted training of the irn / psa head")
    add_overrides(p, "refine.irn.beta=8 refine.psa.preset=seam")
    p.set_defaults(handler=cmd_refine)


def cmd_refine(args: argparse.Namespace) -> int:
    from tagseg.data.build import build_index
    from tagseg.engine.distributed import DistInfo, launch_device, resolve_device
    from tagseg.errors import TagsegError
    from tagseg.experiment import load_run_experiment
    from tagseg.inference.loading import load_trained_model, model_family
    from tagseg.refine.run import finished_refine, refine_run
    from tagseg.runner.launch import resolve_shard
    from tagseg.utils.runtime import apply_threads, device_overrides, inference_processes

    run = Path(args.run)
    overrides = [*device_overrides(args.device), *args.overrides]
    # a key refine would not apply is refused, naming it
    cfg = load_run_experiment(run, overrides, "refine", action="refine")
    args.shard, launch = resolve_shard(args.shard)
    device = resolve_device(launch_device(launch, cfg.device) if launch.source != "single" else cfg.device,
                            DistInfo())
    split = args.split or cfg.data.pseudo_split
    if args.workers is not None and args.workers < 1:
        raise TagsegError(f"--workers must be >= 1, got {args.workers}")
    images = len(build_index(cfg.data, split))
    threads, workers = inference_processes(device.type, images // args.shard[1], args.workers, args.threads)
    apply_threads(threads)
    out = Path(args.out) if args.out else None
    done = None if args.overwrite else finished_refine(cfg, run, args.method, model_family(run / "model.safetensors"),
                                                       split, args.shard, out)
    if done is not None:  # every mask is there, made by these models with these settings: no model load
        print(f"refine {args.method}: all {done[0].skipped} already done with these settings and models -> {done[1]}")
        return 0
    model, _, info = load_trained_model(run / "model.safetensors", device)
    stats, masks = refine_run(model, cfg, run, args.method, info["family"], split, device, shard=args.shard,
                              overwrite=args.overwrite, resume=args.resume,
                              out=out, workers=workers, threads=threads)
    print(f"refine {args.method}: {stats.written} written, {stats.skipped} already done, "
          f"{stats.seconds:.1f}s -> {masks}")
    return 0
