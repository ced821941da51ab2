"""``tagseg pseudo``: the verb of the pseudo-mask stage."""

from __future__ import annotations

import argparse
from pathlib import Path

from tagseg.cli_args import SHARD_HELP, add_overrides, common, parse_shard, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    from tagseg.config import CRF_CHOICES  # plain dataclasses, no torch

    p = subparsers.add_parser("pseudo", parents=[common()], help="write pseudo-masks with a trained model")
    p.add_argument("--run", required=True, help="run folder of `tagseg train` (holds model.safetensors)")
    p.add_argument("--split", help="split to process (default: data.pseudo_split of the run)")
    p.add_argument("--out", help="output folder (default: <run>/pseudo/<split>)")
    p.add_argument("--shard", type=parse_shard, default=(0, 1), help=SHARD_HELP)
    p.add_argument("--overwrite", action="store_true", help="recompute masks that already exist")
    p.add_argument("--crf", choices=CRF_CHOICES,
                   help="also write dense-CRF refined masks to <out>/crf/masks (default: pseudo.crf)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="CPU processes, each running --threads threads (default: cores / workers). With "
                        "neither flag, on a CPU: single-threaded processes, one per core (at most 4) when "
                        "there are at least 128 images per process, else one; on a GPU: 1 process")
    add_overrides(p, "pseudo.flip=true pseudo.image_size=320")
    p.set_defaults(handler=cmd_pseudo)


def cmd_pseudo(args: argparse.Namespace) -> int:
    import torch

    from tagseg.data.build import build_index
    from tagseg.engine.distributed import DistInfo, launch_device, resolve_device
    from tagseg.experiment import load_run_experiment
    from tagseg.inference.loading import load_trained_model, model_family
    from tagseg.pseudo.generate import finished_pseudo_masks, generate_pseudo_masks
    from tagseg.runner import RunOptions
    from tagseg.runner.launch import resolve_shard
    from tagseg.utils.cost import print_cost_note
    from tagseg.utils.runtime import apply_threads, device_overrides, inference_processes

    run = Path(args.run)
    overrides = [*device_overrides(args.device), *args.overrides, *([f"pseudo.crf={args.crf}"] if args.crf else [])]
    cfg = load_run_experiment(run, overrides, "pseudo")
    args.shard, launch = resolve_shard(args.shard)
    # one GPU per launched process: cuda:LOCAL_RANK (or the one GPU the launcher left visible)
    device = resolve_device(launch_device(launch, cfg.device) if launch.source != "single" else cfg.device,
                            DistInfo())
    split = args.split or cfg.data.pseudo_split
    out = Path(args.out or run / "pseudo" / split)
    index = build_index(cfg.data, split)
    threads, workers = inference_processes(device.type, len(index) // args.shard[1], args.workers, args.threads)
    apply_threads(threads)
    model_file = run / "model.safetensors"
    options = RunOptions(shard=args.shard, overwrite=args.overwrite, workers=workers, threads=threads,
                         manifest={"run": run, "split": split, "config": cfg, "input": cfg.data.root})
    done = finished_pseudo_masks(index, out, cfg.pseudo, options, model_family(model_file), model_file)
    if done is not None:  # every mask is there, made by this model with these settings: no model load
        print(f"pseudo-masks: all {done.skipped} already done with these settings and this model "
              f"({out / 'manifest.json'}) -> {out / 'masks'}")
        return 0
    print_cost_note("pseudo", cfg)
    model, _, info = load_trained_model(model_file, device)
    with torch.no_grad():  # the runner holds the folder's (shard's) lock
        stats = generate_pseudo_masks(model, index, out, cfg.pseudo, options, device=device, family=info["family"],
                                      model_path=model_file)
    rate = f", {stats.written / stats.seconds:.2f} img/s" if stats.written and stats.seconds > 0 else ""
    print(f"pseudo-masks: {stats.written} written, {stats.skipped} already done, "
          f"{stats.seconds:.1f}s{rate} ({workers} process{'es' if workers > 1 else ''} × {threads} "
          f"thread{'s' if threads > 1 else ''}) -> {out / 'masks'}"
          + (f" and {out / 'crf' / 'masks'}" if cfg.pseudo.crf != "none" else ""))
    return 0
