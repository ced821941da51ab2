"""SIGTERM (what schedulers send) is handled like Ctrl-C by every verb: one "interrupted" line,
finished outputs and the last checkpoint kept, exit 143."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import tagseg.cli as cli
from conftest import REPO_ROOT
from tagseg.engine.checkpoint import list_checkpoints
from tagseg.utils.signals import EXIT_SIGTERM, Terminated, sigterm_as_interrupt

TINY = ["data.synthetic_train=16", "data.synthetic_val=8", "data.synthetic_size=64", "data.image_size=64",
        "data.num_workers=0", "train.batch_size=16", "method.et_crop_size=32", "pseudo.image_size=64",
        "model.encoder=test_resnet"]


def test_sigterm_in_any_verb_prints_one_interrupted_line_and_exits_143(monkeypatch, capsys):
    before = signal.getsignal(signal.SIGTERM)

    def terminated_midway(args):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10**7):  # the handler runs at the next bytecode boundary
            pass
        raise AssertionError("SIGTERM did not interrupt the command")

    monkeypatch.setattr(cli, "cmd_configs", terminated_midway)
    assert cli.main(["configs"]) == EXIT_SIGTERM == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tagseg configs: interrupted by SIGTERM; finished outputs and the last checkpoint are kept"]
    assert signal.getsignal(signal.SIGTERM) is before  # restored: the handler only lives inside main


def test_sigint_keeps_its_own_exit_code(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_configs", interrupted)
    assert cli.main(["configs"]) == 130
    assert "interrupted;" in capsys.readouterr().err


def test_sigterm_as_interrupt_raises_a_keyboard_interrupt_subclass():
    with pytest.raises(KeyboardInterrupt) as info:
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**7):
                pass
    assert isinstance(info.value, Terminated)


def _wait_for(proc: subprocess.Popen, ready) -> None:
    """Wait (no deadline: a slow machine only makes it longer) until ``ready()`` or the process ends."""
    while proc.poll() is None and not ready():
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_during_training_keeps_the_last_checkpoint_and_exits_143(tmp_path):
    run, data = tmp_path / "run", tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = ["train", "--config", "demo", "--out", str(run), f"data.root={data}", *TINY, "train.epochs=1000"]
    proc = subprocess.Popen([sys.executable, "-m", "tagseg", *cmd], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(proc, lambda: bool(list_checkpoints(run)))
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate()[1]
    lines = [x.split("\r")[-1] for x in err.splitlines() if x.split("\r")[-1].strip()]
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    assert lines[-1].endswith("interrupted by SIGTERM; finished outputs and the last checkpoint are kept")
    assert list_checkpoints(run)  # kept, and complete (written atomically)


@pytest.mark.slow
def test_sigterm_during_pseudo_with_workers_exits_143_and_keeps_finished_masks(tmp_path):
    run, data = tmp_path / "run", tmp_path / "data"
    tiny = [f"data.root={data}", "data.synthetic_train=8", "data.synthetic_val=48", "data.synthetic_size=64",
            "data.image_size=64", "data.num_workers=0", "train.epochs=1", "train.batch_size=8",
            "method.et_crop_size=32", "pseudo.image_size=64", "model.encoder=test_resnet"]
    assert cli.main(["train", "--config", "demo", "--out", str(run), *tiny]) == 0
    masks = run / "pseudo" / "val" / "masks"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tagseg", "pseudo", "--run", str(run), "--split", "val",
                             "--workers", "2"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(proc, lambda: masks.is_dir() and any(masks.glob("[!.]*.png")))
    assert proc.poll() is None, "pseudo finished before it could be terminated"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate()[1]
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "interrupted by SIGTERM" in err
    done = sorted(masks.glob("[!.]*.png"))
    assert 0 < len(done) < 48
    from tagseg.utils.io import read_mask
    for path in done:  # every mask left is complete
        read_mask(path, 256)
