"""``tagseg report RUN_DIR``: the verb of the report stage."""

from __future__ import annotations

import argparse
from pathlib import Path

from tagseg.cli_args import add_overrides, common, non_negative_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", parents=[common(device=False)],
                              help="write a self-contained HTML report of a run folder")
    p.add_argument("run", metavar="RUN_DIR", help="run folder (config.yaml, history.jsonl, pseudo/, predictions/)")
    p.add_argument("--out", help="HTML file to write (default: RUN_DIR/report.html)")
    p.add_argument("--split", help="split whose masks the sample grid shows (default: data.pseudo_split "
                                   "if it has masks, else data.val_split, else the first found)")
    p.add_argument("--samples", type=non_negative_int, default=24,
                   help="sample rows, worst first by per-image mIoU (default: 24)")
    p.add_argument("--thumb", type=non_negative_int, default=200,
                   help="thumbnail size in px, longer side (default: 200)")
    p.add_argument("--data-root", help="dataset folder, when it moved since the run (replaces data.root)")
    add_overrides(p, "data.max_images=50 (data.* keys of the run's config)")
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from tagseg.utils.runtime import apply_threads
    from tagseg.errors import TagsegError
    from tagseg.report.html import write_report

    if args.thumb < 16:
        raise TagsegError(f"--thumb {args.thumb}: thumbnails need at least 16 px")
    apply_threads(args.threads)
    path = write_report(Path(args.run), out=args.out, split=args.split, samples=args.samples,
                        max_side=args.thumb, data_root=args.data_root, overrides=args.overrides)
    print(f"report -> {path}")
    return 0
