"""Trainer: exact resume, non-finite losses, DDP under torchrun, checkpoints."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fixtures import make_voc
from tagseg.config import load_config
from tagseg.errors import TrainingError
from tagseg.engine.checkpoint import list_checkpoints
from tagseg.classify.trainer import Trainer

TINY = [
    "data.dataset=voc", "data.train_split=train", "data.pseudo_split=train", "data.image_size=64",
    "data.num_workers=0", "model.encoder=test_resnet", "model.pretrained=false", "model.lstm_hidden=8",
    "method.et_crop_size=32", "method.pce_threshold=0.3", "train.batch_size=2", "train.epochs=2", "train.cpu_threads=1",
    "train.warmup_epochs=1", "train.unfreeze_blocks=1", "pseudo.image_size=64", "seed=7",
]


def tiny_config(root: Path, *extra: str):
    return load_config("tkpcl_voc", [f"data.root={root}", *TINY, *extra])


def test_resume_continues_exactly(tmp_path):
    make_voc(tmp_path / "voc", n=5)
    cfg = tiny_config(tmp_path / "voc")
    full = Trainer(cfg, tmp_path / "full", show_progress=False).fit()
    Trainer(cfg, tmp_path / "split", show_progress=False).fit(stop_after_epoch=1)
    assert [p.name for p in list_checkpoints(tmp_path / "split")] == ["epoch_0001"]
    assert not (tmp_path / "split" / "model.safetensors").exists()
    resumed = Trainer(cfg, tmp_path / "split", resume=True, show_progress=False).fit()
    a, b = load_file(str(full)), load_file(str(resumed))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # a different seed really gives different weights (the comparison above can fail)
    other = Trainer(tiny_config(tmp_path / "voc", "seed=8"), tmp_path / "other", show_progress=False).fit()
    c = load_file(str(other))
    assert any(not torch.equal(a[k], c[k]) for k in a)
    history = (tmp_path / "split" / "history.jsonl").read_text().splitlines()
    assert len(history) == 2
    assert (tmp_path / "full" / "config.yaml").is_file() and (tmp_path / "full" / "tb").is_dir()


def test_warmup_freezes_the_encoder(tmp_path):
    make_voc(tmp_path / "voc", n=3)
    cfg = tiny_config(tmp_path / "voc", "train.epochs=1")
    from tagseg.models.patch_classifier import build_patch_classifier

    init = build_patch_classifier(cfg.model, 21, 64)
    torch.manual_seed(cfg.seed)
    out = Trainer(cfg, tmp_path / "run", show_progress=False).fit()
    trained = load_file(str(out))
    torch.manual_seed(cfg.seed)
    init = build_patch_classifier(cfg.model, 21, 64).state_dict()
    enc = [k for k in trained if k.startswith("encoder.") and "running" not in k and "num_batches" not in k]
    assert enc and all(torch.equal(trained[k], init[k]) for k in enc)
    assert not torch.equal(trained["classifier.weight"], init["classifier.weight"])


def test_non_finite_loss_stops_with_a_clear_error(tmp_path, monkeypatch):
    make_voc(tmp_path / "voc", n=4)
    cfg = tiny_config(tmp_path / "voc")
    import dataclasses

    from tagseg.methods import families

    real = families.get_family("patch").loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # first step of epoch 2
            loss = loss * float("nan")
        return loss, parts

    monkeypatch.setitem(families.FAMILIES, "patch", dataclasses.replace(families.FAMILIES["patch"], loss=flaky))
    with pytest.raises(TrainingError, match="non-finite loss at epoch 2, step 1"):
        Trainer(cfg, tmp_path / "run", show_progress=False).fit()
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["epoch_0001"]
    assert not (tmp_path / "run" / "model.safetensors").exists()
    leftovers = [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert not leftovers


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    make_voc(tmp_path / "voc", n=6)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tagseg", "train", "--config", "tkpcl_voc", "--out", str(out),
           f"data.root={tmp_path / 'voc'}", *TINY, "train.epochs=1", "train.warmup_epochs=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "model.safetensors").is_file()
    assert [p.name for p in list_checkpoints(out)] == ["epoch_0001"]
    assert len((out / "history.jsonl").read_text().splitlines()) == 1  # rank 0 writes once


def test_frozen_encoder_reuse_gives_the_same_target():
    """With the encoder frozen (warm-up), the L_ET target from the reused training-pass grid equals
    the one from a separate eval-mode pass."""
    from tagseg.methods.objective import eval_mode_probs
    from tagseg.models.patch_classifier import build_patch_classifier
    from tagseg.config import ModelConfig
    from tagseg.engine.phases import Phase, apply_phase

    torch.manual_seed(0)
    core = build_patch_classifier(ModelConfig(encoder="test_resnet", lstm_hidden=8), 4, 64)
    frozen = apply_phase(core, load_config("tkpcl_voc").train, Phase("warmup", 1e-3, False))
    core.train()
    for m in frozen:
        m.eval()
    assert core.encoder_is_frozen()
    images = torch.rand(3, 3, 64, 64)
    out = core(images)
    reused = eval_mode_probs(core, images, out.grid)
    separate = eval_mode_probs(core, images)
    assert torch.allclose(reused, separate, atol=1e-6)
    assert core.training  # mode restored
    core.encoder.train()  # an encoder in train mode (BN statistics) is not reused
    assert not core.encoder_is_frozen()


def test_resume_refuses_another_configuration(tmp_path):
    make_voc(tmp_path / "voc", n=3)
    Trainer(tiny_config(tmp_path / "voc"), tmp_path / "run", show_progress=False).fit(stop_after_epoch=1)
    with pytest.raises(TrainingError, match=r"method.topk: 6 -> 3"):
        Trainer(tiny_config(tmp_path / "voc", "method.topk=3"), tmp_path / "run", resume=True,
                show_progress=False).fit()
    # changing only the length of training is allowed
    Trainer(tiny_config(tmp_path / "voc", "train.epochs=3"), tmp_path / "run", resume=True,
            show_progress=False).fit()


def test_batch_size_is_the_global_batch(tmp_path):
    """train.batch_size is divided over the processes (DistInfo.world_size); not divisible -> ConfigError."""
    from tagseg.engine.distributed import DistInfo, per_process_batch
    from tagseg.errors import ConfigError
    from tagseg.classify.trainer import classifier_task

    assert per_process_batch(16, 1) == 16 and per_process_batch(16, 4) == 4
    with pytest.raises(ConfigError, match="train.batch_size=6 is the global batch"):
        per_process_batch(6, 4)
    make_voc(tmp_path / "voc", n=4)
    cfg = tiny_config(tmp_path / "voc")
    cfg.train.batch_size = 4
    task = classifier_task(cfg)(DistInfo(rank=1, world_size=2, local_rank=1), torch.device("cpu"))
    assert task.batch_size == 2
    cfg.train.batch_size = 3
    with pytest.raises(ConfigError, match="global batch"):
        classifier_task(cfg)(DistInfo(rank=0, world_size=2), torch.device("cpu"))
