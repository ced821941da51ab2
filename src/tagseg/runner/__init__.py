"""The per-image runner shared by every stage that works image by image (pseudo-masks, prediction,
scoring, sweeps, benchmarks).

Stable API::

    from tagseg.runner import OutputLayout, ManifestInfo, WorkerStep, run_per_image

    layout = OutputLayout(out, {"masks": ("masks", "{id}.png")})
    stats = run_per_image(index.records, step, layout, shard=(0, 1), workers=1,
                          worker_step=WorkerStep(build_step, (model_path,)),
                          manifest=ManifestInfo(stage="pseudo", settings=cfg.pseudo, config=cfg))

``step(record, paths)`` writes ``paths`` (the layout's files of that record) atomically; the
runner shards, locks, cleans stale temporary files, resumes, runs workers, shows progress,
checks the folder is still there and writes ``manifest.json``. See docs/ARCHITECTURE.md,
"How to add a per-image stage".
"""

from tagseg.runner.layout import OutputLayout
from tagseg.runner.manifest import MANIFEST_NAME, ManifestInfo, config_hash, file_sha256, read_manifest, write_manifest
from tagseg.runner.per_image import RunOptions, RunStats, finished_already, run_per_image, shard_of
from tagseg.runner.pool import Step, WorkerStep

__all__ = ["MANIFEST_NAME", "ManifestInfo", "OutputLayout", "RunOptions", "RunStats", "Step", "WorkerStep", "config_hash",
           "file_sha256", "finished_already", "read_manifest", "run_per_image", "shard_of", "write_manifest"]
