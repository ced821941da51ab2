"""The ``tagseg`` command line: a thin dispatcher over the verbs each stage registers.

Each stage package declares its own verbs in its ``cli.py`` (``register(subparsers)``: parser
entries and handlers that import their work only when they run, so ``--help`` loads neither
torch nor numpy): ``prepare`` (``data/prepare/cli.py``), ``train`` (``classify/cli.py``),
``pseudo``, ``refine``, ``segment train|eval`` and ``predict`` (``segment/cli.py``), ``eval``
(``evaluate/cli.py``) and ``report``. This module holds the two verbs of the whole pipeline
(``demo``, ``configs``), collects the registrations (:data:`STAGE_VERBS`), and runs a verb:
``key=value`` overrides may stand anywhere among its options (:func:`parse_args`), output folders
are checked before any work, SIGTERM ends it like Ctrl-C, and a :class:`TagsegError` becomes one
line and exit status 2 (:func:`main`). Every verb takes ``--threads N`` and ``--device`` (report:
``--threads`` only, it runs no network).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from tagseg import __version__
from tagseg.cli_args import add_overrides, common
from tagseg.errors import TagsegError
from tagseg.utils.runtime import device_overrides
from tagseg.utils.safe_paths import check_path_text, refuse_links_out
from tagseg.utils.signals import EXIT_SIGINT, EXIT_SIGTERM, Terminated, sigterm_as_interrupt

OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")

#: The modules whose ``register(subparsers)`` declares a stage's verbs, in pipeline order.
STAGE_VERBS = (
    "tagseg.data.prepare.cli",  # prepare voc|coco
    "tagseg.classify.cli",      # train
    "tagseg.pseudo.cli",        # pseudo
    "tagseg.refine.cli",        # refine
    "tagseg.segment.cli",       # segment train|eval, predict
    "tagseg.evaluate.cli",      # eval
    "tagseg.report.cli",        # report
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagseg", description="Pseudo-masks from image-level tags (WSSS).")
    parser.add_argument("--version", action="version", version=f"tagseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", parents=[common()],
                       help="generate the synthetic demo data, train TKP-PCL, make and score pseudo-masks")
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    add_overrides(p, "method.pooling=max")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("configs", parents=[common()],
                       help="list the shipped experiment configs, or print one resolved with overrides")
    p.add_argument("name", nargs="?", help="a config name or YAML path to print resolved (default: list the names)")
    add_overrides(p, "method.topk=3")
    p.set_defaults(handler=cmd_configs)

    for module in STAGE_VERBS:
        importlib.import_module(module).register(sub)
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
    in the order given; anything else is an error. A verb whose positional words mix paths and
    overrides names them in ``paths_with_overrides`` (``eval --pred``, ``predict``), and with
    ``late_words_are_paths`` takes other late words as more paths (``predict``'s images).
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    paths_attr = getattr(args, "paths_with_overrides", None)  # declared by the verb (eval --pred, predict)
    if paths_attr:
        paths, overrides = split_overrides(getattr(args, paths_attr))
        setattr(args, paths_attr, paths)
        args.overrides = [*overrides, *getattr(args, "overrides", [])]
        if getattr(args, "late_words_are_paths", False):
            more, extra = split_overrides(extra)
            paths += [p for p in more if not p.startswith("-")]
            extra = [p for p in more if p.startswith("-")] + extra
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


def cmd_configs(args: argparse.Namespace) -> int:
    from tagseg.config import config_to_yaml, is_segment_config, shipped_configs

    # nothing is computed here: no torch threads to set (and no torch to import)
    if args.name is None:
        if args.overrides or args.device:
            raise TagsegError("overrides and --device need a config name: tagseg configs NAME key=value ...")
        print("\n".join(shipped_configs()))
        return 0
    if is_segment_config(args.name):
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
