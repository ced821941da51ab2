"""Handler of the ``tagseg report`` verb (its arguments are declared in :mod:`tagseg.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path


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
