"""The argument types and options every verb shares (argparse only).

Each stage's ``cli.py`` builds its verbs' parser entries from these; nothing here imports torch or
numpy, so that ``tagseg --help`` stays fast (what an argument type checks against is imported
when the argument is parsed).
"""

from __future__ import annotations

import argparse
import math

SHARD_HELP = ("process shard i of n (i/n), or auto: rank and world size from torchrun (RANK, WORLD_SIZE, "
              "LOCAL_RANK) or SLURM (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), one GPU per process "
              "(cuda:LOCAL_RANK); without a launcher, auto is 0/1")

MAX_SCALE = 8.0  # an image resized beyond 8x its size is a typo, and an allocation that fails


def parse_shard(text: str) -> "tuple[int, int] | str":
    """``--shard``: ``i/n`` or ``auto`` (plain Python: parsing a shard imports no torch)."""
    from tagseg.runner.launch import parse_shard as parse

    try:
        return parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_scales(text: str) -> list[float]:
    """``--scales 0.75,1,1.25``: 1 to 16 finite scales in (0, MAX_SCALE]."""
    try:
        scales = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scales expects comma-separated numbers (e.g. 0.75,1,1.25), got {text!r}") from None
    if not scales or not all(math.isfinite(s) and 0 < s <= MAX_SCALE for s in scales) or len(scales) > 16:
        raise argparse.ArgumentTypeError(f"--scales {text[:60]}: need 1 to 16 finite scales in (0, {MAX_SCALE:g}]")
    return scales


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def common(device: bool = True) -> argparse.ArgumentParser:
    """The parent parser of --threads (and --device) shared by the verbs."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="CPU threads per process (default: the machine's cores divided by the processes "
                        "this command runs; use 1 on a machine busy with other work)")
    if device:
        p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: the config's device)")
    return p


def add_overrides(p: argparse.ArgumentParser, example: str = "train.epochs=2 data.root=/data/VOC2012") -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value", help=f"config overrides, e.g. {example}")


def add_training_args(p: argparse.ArgumentParser, config_help: str) -> None:
    """--config, --out, --resume and --stop-after-epoch of a training verb."""
    p.add_argument("--config", required=True, help=config_help)
    p.add_argument("--out", help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--stop-after-epoch", type=int, default=None, help="stop after this many finished epochs")


def add_check_data(p: argparse.ArgumentParser, masks: str = "masks") -> None:
    """--check-data / --no-check-data of a training verb."""
    from tagseg.data.check import CHECK_DATA_DEFAULT_MAX  # tagseg.data.check imports no torch

    p.add_argument("--check-data", action=argparse.BooleanOptionalAction, default=None,
                   help=f"decode every image and its {masks} of the training split before training starts "
                        f"(default: on for at most {CHECK_DATA_DEFAULT_MAX:,} images)")
