"""The training engine on a toy task: best-epoch selection, exact resume with it, threads, resume checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tagseg.engine import loop
from tagseg.engine.checkpoint import list_checkpoints
from tagseg.engine.resume import check_resumable
from tagseg.engine.schedule import PolySchedule, poly_lr
from tagseg.engine.task import Task
from tagseg.engine.threads import cpu_threads
from tagseg.errors import TrainingError


class ToyData(torch.utils.data.Dataset):
    def __init__(self, n: int = 6) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


def toy_task(epochs: int = 3, scores=None, keep: int = 5):
    def build(info, device) -> Task:
        model = torch.nn.Linear(3, 1).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

        def loss(model, core, batch, epoch):
            mse = ((model(batch["x"])[:, 0] - batch["y"]) ** 2).mean()
            return mse, {"mse": mse.detach()}

        select = None if scores is None else (lambda core, epoch: scores[epoch])
        return Task(model=model, dataset=ToyData(), loss=loss, optimizer=optimizer,
                    schedule=PolySchedule(0.1, 3 * epochs), metadata=lambda: {"format": "toy"},
                    config={"lr": 0.1}, config_yaml="lr: 0.1\n", epochs=epochs, batch_size=2, num_workers=0,
                    seed=3, keep_checkpoints=keep, select_epoch=select)

    return build


def _meta(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as fh:
        return fh.metadata()


def test_the_selected_epoch_is_the_model_file(tmp_path):
    final = loop.fit(toy_task(scores=[1.0, 3.0, 2.0]), tmp_path / "run", seed=3, show_progress=False)
    assert _meta(final)["selected_epoch"] == "2" and _meta(final)["selection"] == "best"
    chosen = load_file(str(tmp_path / "run" / "checkpoints" / "epoch_0002" / "model.safetensors"))
    last = load_file(str(tmp_path / "run" / "checkpoints" / "epoch_0003" / "model.safetensors"))
    weights = load_file(str(final))
    assert all(torch.equal(weights[k], chosen[k]) for k in weights)
    assert any(not torch.equal(weights[k], last[k]) for k in weights)  # the comparison can fail
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["selection_score"] for h in history] == [1.0, 3.0, 2.0]
    assert [h["step"] for h in history] == [3, 6, 9]  # 6 items, batch 2
    assert history[-1]["lr_last"] == pytest.approx(poly_lr(0.1, 8, 9))


def test_default_selection_is_the_last_epoch(tmp_path):
    final = loop.fit(toy_task(), tmp_path / "run", seed=3, show_progress=False)
    assert _meta(final)["selected_epoch"] == "3" and _meta(final)["selection"] == "last"
    last = load_file(str(list_checkpoints(tmp_path / "run")[-1] / "model.safetensors"))
    assert all(torch.equal(v, last[k]) for k, v in load_file(str(final)).items())


def test_resume_keeps_the_selection(tmp_path):
    full = loop.fit(toy_task(scores=[1.0, 3.0, 2.0]), tmp_path / "full", seed=3, show_progress=False)
    loop.fit(toy_task(scores=[1.0, 3.0, 2.0]), tmp_path / "split", seed=3, show_progress=False, stop_after_epoch=2)
    resumed = loop.fit(toy_task(scores=[1.0, 3.0, 2.0]), tmp_path / "split", seed=3, show_progress=False,
                       resume=True)
    a, b = load_file(str(full)), load_file(str(resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _meta(resumed)["selected_epoch"] == "2"


def test_non_finite_loss_names_epoch_and_step(tmp_path):
    def build(info, device):
        task = toy_task()(info, device)
        real = task.loss
        calls = {"n": 0}

        def flaky(*args):
            calls["n"] += 1
            loss, parts = real(*args)
            return (loss * float("inf"), parts) if calls["n"] == 5 else (loss, parts)

        task.loss = flaky
        return task

    with pytest.raises(TrainingError, match=r"non-finite loss at epoch 2, step 2 \(mse="):
        loop.fit(build, tmp_path / "run", seed=3, show_progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["epoch_0001"]


def test_cpu_threads():
    assert cpu_threads(3, 2) == 3
    cores = os.cpu_count() or 1
    assert cpu_threads(0, 1) == max(1, cores - 1)
    assert cpu_threads(0, 0, processes=cores * 2) == 1


def test_check_resumable_names_keys_and_lets_listed_ones_change(tmp_path):
    saved = {"train": {"lr": 0.1, "epochs": 2}, "device": "cpu"}
    check_resumable(saved, {"train": {"lr": 0.1, "epochs": 5}, "device": "cuda"}, tmp_path,
                    ("train.epochs", "device"))
    with pytest.raises(TrainingError, match=r"train.lr: 0.1 -> 0.2"):
        check_resumable(saved, {"train": {"lr": 0.2, "epochs": 2}, "device": "cpu"}, tmp_path, ("device",))


def test_a_failed_checkpoint_write_is_an_output_error_and_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno

    from tagseg.engine import checkpoint as ckpt
    from tagseg.errors import OutputError

    model = torch.nn.Linear(2, 2)
    first = ckpt.save_checkpoint(tmp_path, 1, model, {"epoch": 1})
    before = {p.name: p.read_bytes() for p in first.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "write_safetensors", full_disk)
    with pytest.raises(OutputError, match="epoch_0002.*No space left"):
        ckpt.save_checkpoint(tmp_path, 2, model, {"epoch": 2})
    assert list_checkpoints(tmp_path) == [first]
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [first.name]  # no temporary folder left
