"""The shell both stage trainers share (tagseg.engine.trainer.StageTrainer)."""

from types import SimpleNamespace

from tagseg.classify.trainer import Trainer
from tagseg.engine import loop
from tagseg.engine.trainer import StageTrainer
from tagseg.segment.trainer import SegmentationTrainer


def stage_hook(core, epoch):
    return 0.0


def given_hook(core, epoch):
    return 1.0


class Stage(StageTrainer):
    def default_selection(self, cfg):
        return stage_hook

    def task(self, cfg, select):
        return ("task", cfg.name, select)


def test_the_shell_hands_the_stage_task_and_options_to_the_loop(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(loop, "fit", lambda build, run_dir, **kw: calls.append((build, run_dir, kw)) or run_dir)
    cfg = SimpleNamespace(name="trial", seed=7, device="cpu")
    assert Stage(cfg, str(tmp_path), resume=True, show_progress=False).fit(stop_after_epoch=2) == tmp_path
    assert calls[0] == (("task", "trial", stage_hook), tmp_path,
                        dict(seed=7, device="cpu", resume=True, show_progress=False, stop_after_epoch=2, threads=None))
    Stage(cfg, tmp_path, select_epoch=given_hook).fit()
    assert calls[1][0] == ("task", "trial", given_hook)
    assert (calls[1][2]["resume"], calls[1][2]["show_progress"], calls[1][2]["stop_after_epoch"]) == (False, True, None)


def test_both_stage_trainers_are_the_shell():
    assert issubclass(Trainer, StageTrainer) and issubclass(SegmentationTrainer, StageTrainer)
    assert "fit" not in vars(Trainer) and "fit" not in vars(SegmentationTrainer)
