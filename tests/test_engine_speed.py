"""Speed options of the engine on CPU: precision (bf16/fp16 autocast, grad scaler), channels-last,
torch.compile, persistent data-loader workers, and the inference helper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fixtures import make_voc
from tagseg.config import load_config
from tagseg.engine import loop
from tagseg.engine import precision as P
from tagseg.engine.checkpoint import load_latest_checkpoint
from tagseg.engine.distributed import DistInfo
from tagseg.errors import ConfigError
from tagseg.segment.config import load_segment_config
from tagseg.classify.trainer import Trainer, classifier_task

TINY = [
    "data.dataset=voc", "data.train_split=train", "data.pseudo_split=train", "data.image_size=64",
    "data.num_workers=0", "model.encoder=test_resnet", "model.pretrained=false", "model.lstm_hidden=8",
    "method.et_crop_size=32", "method.pce_threshold=0.3", "train.epochs=1", "train.warmup_epochs=0",
    "train.unfreeze_blocks=-1", "train.cpu_threads=1", "pseudo.image_size=64", "seed=7",
]
CPU = torch.device("cpu")


def tiny_config(root: Path, *extra: str):
    return load_config("tkpcl_voc", [f"data.root={root}", *TINY, *extra])


def first_batch(task) -> dict:
    loader, sampler = loop.make_loader(task, DistInfo(), CPU)
    sampler.set_epoch(0)
    return next(iter(loader))


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_resolve_precision_and_the_older_amp_switch():
    cuda = torch.device("cuda", 0)  # a device object only: nothing runs on it
    assert P.resolve_precision("auto", CPU) == "fp32"
    assert P.resolve_precision("auto", cuda) == "bf16"
    assert P.resolve_precision("auto", cuda, amp=False) == "fp32"  # train.amp=false keeps meaning fp32
    assert P.resolve_precision("bf16", CPU) == "bf16" and P.resolve_precision("fp16", cuda) == "fp16"
    with pytest.raises(ConfigError, match=r"train\.amp=false contradicts train\.precision=bf16.*replaced by"):
        P.resolve_precision("bf16", CPU, amp=False)
    with pytest.raises(ConfigError, match=r"train\.precision='half': choose one of auto, fp32, bf16, fp16"):
        P.resolve_precision("half", CPU)


def test_config_keys_are_checked_in_both_schemas(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.precision='fp8'"):
        tiny_config(tmp_path, "train.precision=fp8")
    with pytest.raises(ConfigError, match=r"train\.amp=false contradicts train\.precision=fp16"):
        tiny_config(tmp_path, "train.amp=false", "train.precision=fp16")
    with pytest.raises(ConfigError, match=r"pseudo\.precision='x'"):
        tiny_config(tmp_path, "pseudo.precision=x")
    cfg = tiny_config(tmp_path, "train.precision=bf16", "train.compile=true", "train.channels_last=true")
    assert (cfg.train.precision, cfg.train.compile, cfg.train.channels_last) == ("bf16", True, True)
    seg = load_segment_config("segment_demo", ["train.precision=fp16", "inference.precision=bf16",
                                               "inference.channels_last=true"])
    assert (seg.train.precision, seg.inference.precision, seg.inference.channels_last) == ("fp16", "bf16", True)
    with pytest.raises(ConfigError, match=r"inference\.precision='fp64'"):
        load_segment_config("segment_demo", ["inference.precision=fp64"])
    with pytest.raises(ConfigError, match=r"train\.amp=false contradicts train\.precision=bf16"):
        load_segment_config("segment_demo", ["train.amp=false", "train.precision=bf16"])


def test_bf16_and_fp16_losses_match_fp32_on_the_same_batch(tmp_path):
    """The TKP-PCL objective (MCE + PCE + L_ET + L2) under CPU autocast, same weights, same batch."""
    make_voc(tmp_path / "voc", n=4)
    cfg = tiny_config(tmp_path / "voc", "train.batch_size=4")
    torch.manual_seed(0)
    task = classifier_task(cfg)(DistInfo(), CPU)
    batch = first_batch(task)
    losses = {}
    for precision in ("fp32", "bf16", "fp16"):
        torch.manual_seed(1)  # the same dropout masks in every forward pass
        with P.autocast(precision, CPU):
            loss, _ = task.loss(task.model, task.model, batch, 0)
        losses[precision] = float(loss.detach())
    assert losses["fp32"] > 0.1
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.03)  # bf16 keeps ~3 significant digits
    assert losses["fp16"] == pytest.approx(losses["fp32"], rel=0.01)
    assert losses["bf16"] != losses["fp32"]  # autocast did run in bf16 (the comparison can fail)


def test_a_bf16_training_step_through_the_engine_matches_fp32(tmp_path):
    make_voc(tmp_path / "voc", n=4)
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_config(tmp_path / "voc", "train.batch_size=4", f"train.precision={precision}")
        Trainer(cfg, tmp_path / precision, show_progress=False).fit()
        runs[precision] = history(tmp_path / precision)[0]["total"]  # one step: the loss at the initial weights
    assert runs["bf16"] == pytest.approx(runs["fp32"], rel=0.03)
    assert runs["bf16"] != runs["fp32"]


def test_fp16_training_uses_the_grad_scaler_and_checkpoints_its_state(tmp_path):
    make_voc(tmp_path / "voc", n=4)
    cfg = tiny_config(tmp_path / "voc", "train.batch_size=2", "train.precision=fp16", "train.epochs=2")
    Trainer(cfg, tmp_path / "run", show_progress=False).fit(stop_after_epoch=1)
    from tagseg.classify.trainer import classifier_task as build
    task = build(cfg)(DistInfo(), CPU)
    _, state = load_latest_checkpoint(tmp_path / "run", task.model)
    # two fp16 steps from torch's initial scale 2^16: each either counts a good step or halves the
    # scale on an overflow (and restarts the count)
    scaler = (state["scaler"]["scale"], state["scaler"]["_growth_tracker"])
    assert scaler in {(65536.0, 2), (32768.0, 1), (32768.0, 0), (16384.0, 0)}, scaler
    final = Trainer(cfg, tmp_path / "run", resume=True, show_progress=False).fit()
    assert all(torch.isfinite(v).all() for v in load_file(str(final)).values())
    fp32 = tiny_config(tmp_path / "voc", "train.batch_size=2", "train.epochs=1")
    Trainer(fp32, tmp_path / "fp32", show_progress=False).fit()
    _, plain = load_latest_checkpoint(tmp_path / "fp32", task.model)
    assert "scaler" not in plain  # fp32 and bf16 runs carry no scaler


def test_grad_scaler_is_enabled_only_for_fp16():
    assert P.grad_scaler("fp16", CPU).is_enabled()
    assert not P.grad_scaler("bf16", CPU).is_enabled() and not P.grad_scaler("fp32", CPU).is_enabled()


def test_channels_last_changes_layout_not_results(tmp_path):
    make_voc(tmp_path / "voc", n=4)
    cfg = tiny_config(tmp_path / "voc", "train.batch_size=4")
    torch.manual_seed(0)
    task = classifier_task(cfg)(DistInfo(), CPU)
    batch = first_batch(task)
    task.model.eval()  # no dropout, BatchNorm from running statistics: the same function twice
    plain, _ = task.loss(task.model, task.model, batch, 0)
    P.channels_last(task.model)
    conv = next(m for m in task.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    nhwc = P.batch_channels_last(batch)
    assert nhwc["image"].is_contiguous(memory_format=torch.channels_last)
    fast, _ = task.loss(task.model, task.model, nhwc, 0)
    assert float(fast.detach()) == pytest.approx(float(plain.detach()), rel=1e-5)
    cfg_cl = tiny_config(tmp_path / "voc", "train.batch_size=4", "train.channels_last=true")
    Trainer(cfg_cl, tmp_path / "cl", show_progress=False).fit()
    Trainer(cfg, tmp_path / "plain", show_progress=False).fit()
    # through the engine (train mode): BatchNorm over the 2x2 maps of view B amplifies the
    # different summation order of NHWC kernels to ~0.3% in this tiny network
    assert history(tmp_path / "cl")[0]["total"] == pytest.approx(history(tmp_path / "plain")[0]["total"], rel=0.01)


def test_persistent_workers_draw_the_same_batches_as_the_main_process(tmp_path):
    """Workers live over epochs; the epoch travels with each index, so epoch 2's augmentations are
    epoch 2's and the weights equal a run without workers."""
    make_voc(tmp_path / "voc", n=4)
    finals = {}
    for workers in (0, 2):
        cfg = tiny_config(tmp_path / "voc", "train.batch_size=2", "train.epochs=2", f"data.num_workers={workers}")
        finals[workers] = load_file(str(Trainer(cfg, tmp_path / f"w{workers}", show_progress=False).fit()))
    for k in finals[0]:
        assert torch.equal(finals[0][k], finals[2][k]), k


def test_the_epoch_travels_with_the_index():
    class Seen(torch.utils.data.Dataset):
        epoch = 0

        def set_epoch(self, e):
            self.epoch = e

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return self.epoch * 10 + i

    items = loop._EpochItems(Seen())
    assert items[(0, 2)] == 2 and items[(4, 1)] == 41 and items[(4, 0)] == 40


def test_inference_helper_bf16_matches_fp32_and_keeps_layout():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = net(x)
    speed = P.InferenceSpeed("bf16", CPU, use_channels_last=True)
    model = speed.prepare(net)
    assert not model.training and model[0].weight.is_contiguous(memory_format=torch.channels_last)
    with speed.context():
        out = model(speed.input(x))
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref, atol=0.05, rtol=0.02) and not torch.equal(out.float(), ref)
    assert P.InferenceSpeed("auto", CPU).precision == "fp32"
    with pytest.raises(ConfigError, match=r"inference\.precision='int8'"):
        P.InferenceSpeed("int8", CPU, section="inference")


@pytest.mark.slow
def test_compile_gives_the_eager_loss(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 8 * 8, 2))
    x = torch.randn(2, 3, 8, 8)
    fast = P.compiled(net, True)
    assert fast is not net and P.compiled(net, False) is net
    assert torch.allclose(fast(x), net(x), atol=1e-5)
    assert set(dict(net.named_parameters())) == {"0.weight", "0.bias", "3.weight", "3.bias"}  # saved names stay plain



def test_pseudo_and_segmentation_inference_follow_their_precision_keys(tmp_path):
    from tagseg.config import PseudoConfig
    from tagseg.methods.families import get_family
    from tagseg.inference.pseudo import merged_probabilities
    from tagseg.segment.config import SegInferenceConfig, SegModelConfig
    from tagseg.segment.inference import predict_probs
    from tagseg.segment.models import build_segmenter

    torch.manual_seed(0)
    image = (torch.rand(48, 64, 3) * 255).to(torch.uint8).numpy()
    cfg = tiny_config(tmp_path)
    model = get_family(cfg.model.family).build(cfg, 21).eval()
    labels = torch.zeros(21)
    labels[[0, 8, 12]] = 1
    probs = {p: merged_probabilities(model, image, labels.numpy(), PseudoConfig(image_size=64, precision=p))
             for p in ("fp32", "bf16")}
    assert probs["bf16"].dtype == torch.float32 and probs["bf16"].shape == (21, 48, 64)
    assert torch.allclose(probs["bf16"], probs["fp32"], atol=0.03) and not torch.equal(probs["bf16"], probs["fp32"])
    cl = merged_probabilities(model, image, labels.numpy(), PseudoConfig(image_size=64, channels_last=True))
    assert torch.allclose(cl, probs["fp32"], atol=1e-5)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)

    seg = build_segmenter(SegModelConfig(encoder="test_resnet", pretrained=False, aspp_channels=16,
                                         low_level_channels=8), 21, 32).eval()
    out = {p: predict_probs(seg, image, SegInferenceConfig(precision=p)) for p in ("fp32", "bf16")}
    assert out["bf16"].dtype == torch.float32
    assert torch.allclose(out["bf16"], out["fp32"], atol=0.03) and not torch.equal(out["bf16"], out["fp32"])
