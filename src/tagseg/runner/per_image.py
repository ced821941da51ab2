"""The per-image runner: records in, a step function, an output layout.

It owns what every per-image stage needs: sharding (``i/n``; ``auto`` is resolved by the caller
from the launcher), the run-folder lock, removal of temporary files a killed earlier run left,
resume (records whose files all exist are skipped, and only when the folder's ``manifest.json``
was written with the same settings and models), a check a stage makes before loading its model
(:func:`finished_already`: nothing left to do), a serial loop or a pool of worker processes
that die with their parent, the progress bar, a check that the output folder is still there
before every record and that every reported result is on disk afterwards, and
``manifest.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from tqdm import tqdm

from tagseg.errors import ConfigError, DataError, OutputError
from tagseg.runner.layout import OutputLayout
from tagseg.runner.manifest import ManifestInfo, read_manifest, settings_differences, write_manifest
from tagseg.runner.pool import Step, WorkerStep, check_root, run_pool, run_step
from tagseg.utils.io import remove_stale_temp_files
from tagseg.utils.runlock import run_lock


@dataclass
class RunStats:
    """What one run did: records written now, skipped (already done), wall seconds, and the
    folder's counts on disk at the end (those of the manifest)."""

    written: int = 0
    skipped: int = 0
    seconds: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (record id, reason), keep_going only


@dataclass(frozen=True)
class RunOptions:
    """How a stage's caller wants one per-image run carried out (see :func:`run_per_image`): shard
    (i, n); overwrite (redo finished records instead of resuming); progress bar; workers (CPU
    processes) with ``threads`` intra-op threads each (None: the stage's default); lock (False only
    when the caller already holds the folder's lock); manifest: extra facts for ``manifest.json``
    (``run``, ``split``, ``config``, ``input``)."""

    shard: tuple[int, int] = (0, 1)
    overwrite: bool = False
    progress: bool = True
    workers: int = 1
    threads: Optional[int] = None
    lock: bool = True
    manifest: Optional[dict[str, Any]] = None

    def runner_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`run_per_image` these options set (not the manifest,
        which the stage turns into its :class:`ManifestInfo`)."""
        return dict(shard=self.shard, overwrite=self.overwrite, progress=self.progress, workers=self.workers,
                    threads=self.threads, lock=self.lock)


def shard_of(records: Sequence[Any], shard: tuple[int, int]) -> list[Any]:
    """The records shard i of n takes: every n-th from i (DataError for a bad shard)."""
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise DataError(f"invalid shard {i}/{n}: need 0 <= i < n")
    return list(records[i::n])


def run_per_image(records: Sequence[Any], step: Optional[Step], layout: OutputLayout, *,
                  shard: tuple[int, int] = (0, 1), overwrite: bool = False, progress: bool = True,
                  desc: str = "images", workers: int = 1, worker_step: Optional[WorkerStep] = None,
                  threads: Optional[int] = None, lock: bool = True,
                  manifest: Optional[ManifestInfo] = None,
                  keep_going: tuple[type[BaseException], ...] = ()) -> RunStats:
    """Run ``step`` on the records of this shard whose outputs are not all on disk yet.

    records: the whole set (anything with a string ``id``), in a fixed order; step: ``(record,
    paths) -> None`` writing ``paths`` (the layout's files of that record; write them with
    ``tagseg.utils.io``'s atomic writers, ``root=layout.root``); shard: (i, n), every n-th
    record from i; overwrite: redo finished records; workers > 1: that many spawned CPU
    processes, each building its step from ``worker_step`` and running ``threads`` intra-op
    threads; lock: hold ``layout.root``'s lock (this shard's when n > 1) for the run — pass
    False only when the caller already holds it; manifest: write ``<root>/manifest.json`` with
    these facts and the counts of the whole set's files on disk at the end (at the start it holds
    the facts and ``{"finished": False}``); resuming into a folder whose manifest names other
    settings is refused (ConfigError listing them) unless ``overwrite``; keep_going:
    exception types (e.g. DataError for an unreadable image) that fail only their record — it
    is listed in ``RunStats.failures`` (record order) and the run goes on.

    Every record's paths are checked to lie inside ``layout.root`` before anything is written
    (DataError). OutputError when the folder vanishes mid-run or a finished record's files are
    missing at the end. Returns :class:`RunStats`.
    """
    mine = shard_of(records, shard)
    paths = {r.id: layout.paths(r.id) for r in mine}  # refuses an escaping id before anything is created
    if workers > 1 and worker_step is None:
        raise ConfigError("running several worker processes needs a worker_step (how each builds its step)")
    if workers <= 1 and step is None:
        raise ConfigError("a serial run needs a step function")
    if lock:
        with run_lock(layout.root, shard=shard):
            return _run(records, mine, paths, step, layout, shard, overwrite, progress, desc, workers,
                        worker_step, threads, manifest, keep_going)
    layout.root.mkdir(parents=True, exist_ok=True)
    return _run(records, mine, paths, step, layout, shard, overwrite, progress, desc, workers, worker_step,
                threads, manifest, keep_going)


def finished_already(records: Sequence[Any], layout: OutputLayout, manifest: ManifestInfo,
                     shard: tuple[int, int] = (0, 1)) -> Optional[RunStats]:
    """The stats of a run that would have nothing to do, or None when it must run.

    Nothing to do: ``layout.root``'s ``manifest.json`` says its last run finished (none is in
    progress or was killed), made with the settings and models of ``manifest`` (as a resume
    compares them), and every record of this shard has all its files. A stage calls this before
    it loads its model, so that re-running a finished command costs a file check, not a model
    load. Reads only: no lock, nothing written (the manifest keeps its counts).
    """
    previous = read_manifest(layout.root)
    counts = None if previous is None else previous.get("counts")
    if not isinstance(counts, dict) or counts.get("finished") is False:
        return None  # no manifest, one without counts (damaged), or a run in progress or killed
    if settings_differences(previous, manifest):
        return None
    mine = shard_of(records, shard)
    if not all(p.is_file() for r in mine for p in layout.paths(r.id).values()):
        return None
    return RunStats(skipped=len(mine), counts=dict(counts))


def _run(records, mine, paths, step, layout, shard, overwrite, progress, desc, workers, worker_step, threads,
         manifest, keep_going) -> RunStats:
    # a run killed mid-write leaves hidden temporary files of this shard's records: remove them
    remove_stale_temp_files([p for files in paths.values() for p in files.values()])
    todo = [r for r in mine if overwrite or not all(p.is_file() for p in paths[r.id].values())]
    stats = RunStats(skipped=len(mine) - len(todo))
    if manifest is not None:
        if stats.skipped:
            _refuse_other_settings(layout.root, manifest, stats.skipped)
        write_manifest(layout.root, manifest, {"finished": False})
    t0 = time.time()
    done = 0
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    try:
        if workers > 1 and todo:
            chunks = run_pool(todo, layout, worker_step, workers, threads, keep_going)
        else:
            chunks = (_one(step, r, layout, keep_going) for r in todo)
        failed: dict[str, str] = {}
        for n, failures in chunks:
            failed.update(failures)
            done += n
            bar.update(n)
            bar.set_postfix(img_per_s=f"{done / max(1e-9, time.time() - t0):.2f}")
    finally:
        bar.close()
    check_root(layout.root)
    stats.failures = [(r.id, failed[r.id]) for r in todo if r.id in failed]
    todo = [r for r in todo if r.id not in failed]
    missing = [r.id for r in todo if not all(p.is_file() for p in paths[r.id].values())]
    if missing:
        raise OutputError(f"{len(missing)} of the {len(todo)} images processed now have files missing from "
                          f"{layout.root} (first: {missing[0]}); were they deleted by another program? "
                          "Run the command again to redo them")
    stats.written = len(todo)
    stats.seconds = time.time() - t0
    stats.counts = {"images": len(records), "shard": [int(shard[0]), int(shard[1])], "shard_images": len(mine),
                    "written_now": stats.written, "skipped_now": stats.skipped, "failed_now": len(stats.failures),
                    "on_disk": layout.count(r.id for r in records)}
    if manifest is not None:
        write_manifest(layout.root, manifest, stats.counts)
    return stats


def _refuse_other_settings(root, manifest: ManifestInfo, finished: int) -> None:
    """ConfigError when ``root``'s manifest says its finished records were made with other settings
    than ``manifest``'s (a folder without a readable manifest is resumed as it is)."""
    previous = read_manifest(root)
    diffs = [] if previous is None else settings_differences(previous, manifest)
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise ConfigError(f"{root} already holds {finished} finished images made with other settings ({shown}); "
                          "resuming would mix the two. Redo every image with the command's --overwrite, or "
                          "write to another folder")


def _one(step: Step, record: Any, layout: OutputLayout, keep_going) -> tuple[int, list[tuple[str, str]]]:
    failure = run_step(step, record, layout, keep_going)
    return 1, [] if failure is None else [failure]
