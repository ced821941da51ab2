"""The shell every trainable stage's trainer shares: hold a run configuration and a run folder,
pick the best-epoch hook and hand the stage's task to :func:`tagseg.engine.loop.fit`.

A stage subclasses :class:`StageTrainer` and says only what is its own: how its configuration
is checked, its default best-epoch hook, its task and (optionally) its thread counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from tagseg.engine import loop
from tagseg.engine.task import SelectFn


class StageTrainer:
    """Train ``cfg`` into ``run_dir`` (config.yaml, checkpoints/, tb/, history.jsonl, model.safetensors).

    select_epoch: optional best-epoch hook (core, 0-based epoch) -> score; default: the stage's
    (:meth:`default_selection`), else the last epoch.
    """

    def __init__(self, cfg: Any, run_dir: str | Path, resume: bool = False,
                 show_progress: bool = True, select_epoch: Optional[SelectFn] = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.show_progress = show_progress
        self.select_epoch = select_epoch

    def checked_config(self) -> Any:
        """The configuration to train, after the stage's start-up checks (default: as given)."""
        return self.cfg

    def default_selection(self, cfg: Any) -> Optional[SelectFn]:
        """The stage's best-epoch hook when none was given (default: none, the last epoch)."""
        return None

    def task(self, cfg: Any, select: Optional[SelectFn]) -> Callable:
        """The engine task builder ``(dist_info, device) -> Task`` of this stage."""
        raise NotImplementedError

    def threads(self, cfg: Any) -> Optional[tuple[int, int]]:
        """(intra-op threads, loader workers) for :func:`tagseg.engine.loop.fit`; None: its default."""
        return None

    def fit(self, stop_after_epoch: Optional[int] = None) -> Path:
        """Train until ``train.epochs`` (or stop after ``stop_after_epoch`` finished epochs, for
        splitting a run); return the path of the final model (or of the last checkpoint)."""
        cfg = self.checked_config()
        select = self.select_epoch if self.select_epoch is not None else self.default_selection(cfg)
        return loop.fit(self.task(cfg, select), self.run_dir, seed=cfg.seed, device=cfg.device,
                        resume=self.resume, show_progress=self.show_progress, stop_after_epoch=stop_after_epoch,
                        threads=self.threads(cfg))
