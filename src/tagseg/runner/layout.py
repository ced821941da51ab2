"""Where one record's outputs go: a named set of file templates under one output folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from tagseg.utils.safe_paths import path_inside

ID = "{id}"


@dataclass(frozen=True)
class OutputLayout:
    """The files each record produces under ``root``.

    ``files`` maps an output name to its path parts below ``root``, where ``{id}`` stands for the
    record's id, e.g. ``{"masks": ("masks", "{id}.png"), "crf": ("crf", "masks", "{id}.png")}``.
    A record is done when every one of its files exists.
    """

    root: Path
    files: Mapping[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "files", {k: tuple(v) for k, v in self.files.items()})

    def paths(self, rec_id: str) -> dict[str, Path]:
        """name -> file of record ``rec_id``, each checked to lie inside ``root`` (DataError otherwise)."""
        return {name: path_inside(self.root, *(p.replace(ID, rec_id) for p in parts))
                for name, parts in self.files.items()}

    def done(self, rec_id: str) -> bool:
        """Whether every output file of ``rec_id`` exists."""
        return all(p.is_file() for p in self.paths(rec_id).values())

    def count(self, ids: Iterable[str]) -> dict[str, int]:
        """Files on disk now, per output name, among the records ``ids``, and 'complete': the
        records with all their files."""
        counts = dict.fromkeys(self.files, 0)
        complete = 0
        for rec_id in ids:
            have = {name: p.is_file() for name, p in self.paths(rec_id).items()}
            for name, ok in have.items():
                counts[name] += ok
            complete += all(have.values())
        return {**counts, "complete": complete}
