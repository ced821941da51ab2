"""The SEAM family (model.family=seam): network on timm CNNs, training with the add-ons where the
official code puts them, pseudo-masks from the PCM-revised maps, sharding and resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from fixtures import make_voc
from tagseg.data.build import build_index
from tagseg.errors import ConfigError
from tagseg.evaluate.folder import evaluate_folder
from tagseg.experiment import load_experiment
from tagseg.inference.loading import load_trained_model
from tagseg.methods.seam_objective import build_seam_net, seam_family_loss, seam_view2
from tagseg.models.encoder import PatchEncoder
from tagseg.models.seam_net import SEAMNet, pcm_feature_indices
from tagseg.pseudo.generate import generate_pseudo_masks
from tagseg.runner import RunOptions
from tagseg.classify.trainer import Trainer

from test_cam_family import TINY, toy_batch

K = 21
SEAM_TINY = [o for o in TINY if not o.startswith(("train.warmup_epochs", "train.unfreeze_blocks"))]
SMALL = ["train.augment.resize_long=[48,96]", "cam.output_stride=16"]



@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc") / "voc"
    make_voc(root, n=4)
    return root


def seam_config(*extra: str, root: Path | str = "unused", name: str = "seam_voc"):
    return load_experiment(name, [f"data.root={root}", *SEAM_TINY, *SMALL, *extra])


def test_pcm_reads_the_two_maps_before_the_output():
    resnet = PatchEncoder("resnet50", output_stride=16)
    info = resnet.backbone.feature_info
    assert [info[i]["module"] for i in pcm_feature_indices(resnet)] == ["layer2", "layer3"]
    assert [info[i]["num_chs"] for i in pcm_feature_indices(resnet)] == [512, 1024]  # ResNet-38 conv4 / conv5
    lite = PatchEncoder("tf_efficientnet_lite0", output_stride=16)
    info = lite.backbone.feature_info
    assert [info[i]["module"] for i in pcm_feature_indices(lite)] == ["blocks.2", "blocks.4"]
    with pytest.raises(ConfigError, match="CNN encoder"):
        pcm_feature_indices(PatchEncoder("test_vit", image_size=64))


@pytest.mark.parametrize("encoder,stride", [("test_resnet", 16), ("test_resnet", 8), ("test_efficientnet", 16)])
def test_seam_net_outputs(encoder, stride):
    net = SEAMNet(PatchEncoder(encoder, output_stride=stride), K).eval()
    out1, out2 = net(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 32, 32))
    assert out1.cams.shape == (2, K - 1, 64 // stride, 64 // stride)
    assert out1.cams_revised.shape == (2, K, 64 // stride, 64 // stride)
    assert out2.cams_revised.shape[-1] == 32 // stride
    # the PCM sees no gradient from the encoder: its inputs are detached
    loss = out1.cams_revised.sum()
    loss.backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert net.pcm.proj.weight.grad is not None
    maps = net.inference_maps(torch.rand(1, 3, 64, 64))
    assert maps.shape == (1, K - 1, 64 // stride, 64 // stride) and (maps >= 0).all()


def test_view2_is_snapped_to_16():
    images = torch.rand(1, 3, 448, 448)
    assert seam_view2(images, 0.3).shape[-2:] == (128, 128)
    assert seam_view2(torch.rand(1, 3, 64, 48), 0.3).shape[-2:] == (16, 16)
    assert seam_view2(images, 0.3, size=96).shape[-2:] == (96, 96)


@pytest.mark.parametrize("extra,parts", [
    ([], {"cls", "rvmin", "er", "ecr"}),
    (["addons.ppc.enabled=true", "addons.ppc.view2_size=32"], {"cls", "er", "ecr", "ppc"}),
    (["addons.hfpl.isl=true", "addons.hfpl.fsl=true"], {"cls", "er", "ecr", "isl", "fsl"}),
])
def test_seam_loss_parts_and_gradients(extra, parts):
    cfg = seam_config(*extra)
    net = build_seam_net(cfg, K)
    total, got = seam_family_loss(net, net, toy_batch(size=64), cfg)
    assert parts <= set(got) and torch.isfinite(total)
    total.backward()
    assert net.classifier.weight.grad.abs().sum() > 0 and net.pcm.proj.weight.grad.abs().sum() > 0


def test_isl_replaces_view1_class_loss_before_the_average():
    """HFPL on SEAM: cls = ((1 − λ)·cls1 + λ·ISL + cls2) / 2 (arvijj/hfpl train_cam_voc.py)."""
    torch.manual_seed(0)
    cfg = seam_config("seam.head_dropout=0.0")
    isl_cfg = seam_config("seam.head_dropout=0.0", "addons.hfpl.isl=true", "addons.hfpl.lam=1.0")
    net = build_seam_net(cfg, K).eval()
    batch = toy_batch(size=64)
    _, plain = seam_family_loss(net, net, batch, cfg)
    _, with_isl = seam_family_loss(net, net, batch, isl_cfg)
    with torch.no_grad():  # view 2's class loss, from the same outputs the family computes
        out1, out2 = net(batch["image"], seam_view2(batch["image"], 0.3))
        cls2 = F.multilabel_soft_margin_loss(F.interpolate(out2.cams, size=(16, 16), mode="bilinear",
                                                           align_corners=True).mean(dim=(2, 3)),
                                             batch["labels"][:, 1:])
    cls1 = 2 * plain["cls"] - cls2
    hfpl = isl_cfg.addons.hfpl
    # λ = 1: view 1's loss is isl_weight·ISL alone; view 2's is untouched
    assert with_isl["cls"].item() == pytest.approx(((hfpl.isl_weight * with_isl["isl"] + cls2) / 2).item(), rel=1e-5)
    assert cls1.item() != pytest.approx(hfpl.isl_weight * with_isl["isl"].item())


def test_rca_is_refused_on_seam():
    with pytest.raises(ConfigError, match="rca"):
        seam_config("addons.rca.enabled=true")


def test_seam_configs_are_shipped():
    for name in ("seam_voc", "seam_ppc_voc", "seam_hfpl_voc", "seam_coco", "seam_ppc_coco", "seam_hfpl_coco"):
        cfg = load_experiment(name, ["data.root=unused"])
        assert cfg.model.family == "seam" and cfg.seam.view2_scale == 0.3 and cfg.pseudo.bg_threshold == 0.26


def test_seam_train_pseudo_eval_sharded(voc, tmp_path):
    cfg = seam_config("addons.ppc.enabled=true", "addons.ppc.view2_size=32", root=voc)
    run = tmp_path / "run"
    Trainer(cfg, run, show_progress=False).fit()
    model, _, info = load_trained_model(run / "model.safetensors")
    assert info["family"] == "seam" and isinstance(model, SEAMNet)
    index = build_index(cfg.data, "train")
    written = 0
    for shard in ((0, 2), (1, 2)):
        stats = generate_pseudo_masks(model, index, run / "pseudo", cfg.pseudo,
                                      RunOptions(shard=shard, progress=False), family="seam")
        written += stats.written
    assert written == len(index) == 4
    summary = evaluate_folder(run / "pseudo" / "masks", index, progress=False)
    assert 0.0 <= summary["miou"] <= 1.0 and summary["images"] == 4
    history = json.loads((run / "history.jsonl").read_text().splitlines()[-1])
    assert {"er", "ecr", "ppc"} <= set(history) and math.isfinite(history["total"])


def test_seam_resume_is_exact(voc, tmp_path):
    cfg = seam_config("addons.hfpl.isl=true", "train.epochs=2", root=voc)
    full = Trainer(cfg, tmp_path / "full", show_progress=False).fit()
    Trainer(cfg, tmp_path / "split", show_progress=False).fit(stop_after_epoch=1)
    resumed = Trainer(cfg, tmp_path / "split", resume=True, show_progress=False).fit()
    a, b = load_file(str(full)), load_file(str(resumed))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert np.isfinite(a["pcm.proj.weight"].numpy()).all()


def test_seam_run_refined_by_psa_with_the_seam_preset(voc, tmp_path):
    """SEAM + AffinityNet, the published pipeline: `tagseg refine` on a SEAM run (its seeds are the
    PCM-revised maps), PSA with the SEAM preset of the shipped config."""
    from PIL import Image

    from tagseg.cli import main

    cfg = seam_config(root=voc)
    assert cfg.refine.method == "psa" and cfg.refine.psa.preset == "seam"
    run = tmp_path / "run"
    Trainer(cfg, run, show_progress=False).fit()
    heads = ["refine.psa.crop_size=64", "refine.psa.batch_size=2", "refine.psa.epochs=1", "refine.psa.radius=3"]
    assert main(["refine", "--run", str(run), "--method", "psa", "--threads", "1", *heads]) == 0
    masks = sorted((run / "refine" / "psa" / "train" / "masks").glob("*.png"))
    assert len(masks) == 4
    index = build_index(cfg.data, "train")
    tags = {rec.id: set(np.flatnonzero(rec.labels > 0.5).tolist()) for rec in index.records}
    for p in masks:
        assert set(np.unique(np.asarray(Image.open(p))).tolist()) <= tags[p.stem]


def test_a_copy_of_the_encoder_does_not_feed_the_pcm_taps():
    """The refine stage trains on a deep copy of the run's encoder; its forward passes must not
    leave activations in the SEAM network's PCM taps."""
    import copy

    net = SEAMNet(PatchEncoder("test_resnet", output_stride=16), K).eval()
    twin = copy.deepcopy(net.encoder)
    twin(torch.rand(1, 3, 64, 64))
    assert net._taps == {}
    assert net.inference_maps(torch.rand(1, 3, 64, 64)).shape[1] == K - 1
