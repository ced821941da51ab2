"""Two "nodes" x one process each over a localhost c10d rendezvous (gloo): the weights after one
step equal those of one process that sees the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fixtures import make_voc
from tagseg.config import load_config
from tagseg.engine.distributed import DistInfo
from tagseg.engine.loop import seed_everything
from tagseg.classify.trainer import classifier_task

# One warm-up step: the encoder is frozen and in eval mode (BatchNorm uses running statistics), the
# head and the LSTM inputs have no dropout, and PCE and L_ET are off (L_ET's mosaic tiles view-B images of the same
# process's batch), so every loss term is a mean of per-image terms (or, L2, the same on every
# process) and DDP's mean of the two processes' means equals one process's mean over the 4 images. The data
# order does not matter: one step sees the whole set. Augmentations are seeded by (seed, epoch,
# image), not by the process. model.bn=frozen keeps BatchNorm on its running statistics (adapt
# would normalise each process's half batch by its own statistics). train.batch_size is the global
# batch: 4 on one process, and 4 = 2 per node x 2 nodes under torchrun.
TINY = [
    "data.dataset=voc", "data.train_split=train", "data.pseudo_split=train", "data.image_size=64",
    "data.num_workers=0", "model.encoder=test_resnet", "model.pretrained=false", "model.lstm_hidden=8",
    "model.dropout=0", "model.lstm_input_dropout=0", "model.bn=frozen", "method.et_crop_size=32", "method.pce_weight=0", "method.et_weight=0", "train.epochs=1",
    "train.warmup_epochs=1", "train.cpu_threads=1", "pseudo.image_size=64", "seed=7",
]
IMAGES = 4


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cmd(root: Path, out: Path, batch: int) -> list[str]:
    return ["-m", "tagseg", "train", "--config", "tkpcl_voc", "--out", str(out), f"data.root={root}", *TINY,
            f"train.batch_size={batch}"]


@pytest.mark.slow
def test_two_nodes_over_c10d_equal_one_process_with_the_same_global_batch(tmp_path):
    make_voc(tmp_path / "voc", n=IMAGES)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    single = subprocess.run([sys.executable, *train_cmd(tmp_path / "voc", tmp_path / "single", IMAGES)],
                            capture_output=True, text=True, env=env, timeout=3600)
    assert single.returncode == 0, single.stderr[-3000:]

    port = free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "tagseg-test",
         "--local-addr", "127.0.0.1", *train_cmd(tmp_path / "voc", tmp_path / "ddp", IMAGES)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)]
    logs = []
    for node in nodes:
        try:
            logs.append(node.communicate(timeout=3600)[0])
        finally:
            node.kill()
    for node, log in zip(nodes, logs):
        assert node.returncode == 0, log[-3000:]

    a = load_file(str(tmp_path / "single" / "model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), (k, (a[k] - b[k]).abs().max())
    # the step moved the head (so the comparison can fail): the initial weights, built as fit builds them
    cfg = load_config("tkpcl_voc", [f"data.root={tmp_path / 'voc'}", *TINY, f"train.batch_size={IMAGES}"])
    seed_everything(cfg.seed)
    init = classifier_task(cfg)(DistInfo(), torch.device("cpu")).model.state_dict()
    moved = [k for k in a if not torch.equal(a[k], init[k])]
    assert moved and all(torch.equal(a[k], init[k]) for k in a if k.startswith("encoder."))  # frozen encoder
    history = (tmp_path / "ddp" / "history.jsonl").read_text().splitlines()
    assert len(history) == 1 and '"step": 1' in history[0]  # one step of global batch 4
