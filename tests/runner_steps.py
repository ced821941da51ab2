"""Module-level steps for the per-image runner's tests (worker processes import them by name)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from tagseg.utils.io import write_text


@dataclass(frozen=True)
class Rec:
    id: str
    value: int = 0


def write_value(rec: Rec, paths: dict[str, Path]) -> None:
    write_text(paths["out"], f"{rec.value}\n")


def build_write_value():
    return write_value


def build_slow_writer(seconds: float, pid_file: str):
    """A step that records its worker's pid, then sleeps before writing."""
    def step(rec: Rec, paths: dict[str, Path]) -> None:
        with open(pid_file, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(seconds)
        write_value(rec, paths)
    return step
