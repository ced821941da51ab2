"""The CAM families' learnt class prior (``cam.class_prior``): an offset of the image logits only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures import make_voc
from tagseg.config import CAMConfig
from tagseg.data.build import build_index
from tagseg.errors import ConfigError
from tagseg.experiment import load_experiment
from tagseg.inference.loading import load_trained_model
from tagseg.methods.cam_objective import build_cam_net, cam_classification_loss, cam_family_loss, tag_frequencies
from tagseg.methods.seam import seam_losses
from tagseg.methods.seam_objective import build_seam_net, seam_family_loss
from tagseg.classify.trainer import Trainer

TINY = [
    "data.dataset=voc", "data.train_split=train", "data.pseudo_split=train", "data.image_size=64",
    "data.num_workers=0", "model.encoder=test_resnet", "model.pretrained=false", "train.batch_size=2",
    "train.epochs=1", "train.warmup_epochs=0", "train.unfreeze_blocks=1", "pseudo.image_size=64",
    "pseudo.scales=[1.0]", "pseudo.flip=false", "seed=5", "train.cpu_threads=1",
]


def cam_config(*extra: str, root: Path | str = "unused", base: str = "cam_voc"):
    return load_experiment(base, [f"data.root={root}", *TINY, *extra])


def toy_batch() -> dict:
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(2, 21)
    labels[:, 0] = 1
    labels[0, 8] = 1
    labels[1, [8, 12]] = 1
    return {"image": torch.rand(2, 3, 64, 64, generator=g), "labels": labels, "index": torch.arange(2)}


def test_loss_with_a_prior_by_hand():
    # logits 0 + prior (ln 3, −ln 3); tags (1, 0): both terms are −ln 0.75
    cams = torch.zeros(1, 2, 3, 3)
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    loss = cam_classification_loss(cams, labels, torch.tensor([math.log(3), -math.log(3)]))
    assert float(loss) == pytest.approx(-math.log(0.75), abs=1e-6)
    assert float(cam_classification_loss(cams, labels)) == pytest.approx(math.log(2), abs=1e-6)


def test_seam_loss_adds_the_prior_to_both_views_classification_only():
    # zero maps, prior (ln 3, −ln 3), tags (1, 0): each view's term is −ln 0.75 (by hand, as above)
    g = torch.Generator().manual_seed(0)
    cam1, rv1 = torch.zeros(1, 3, 4, 4), torch.rand(1, 3, 4, 4, generator=g)
    cam2, rv2 = torch.zeros(1, 3, 2, 2), torch.rand(1, 3, 2, 2, generator=g)
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    prior = torch.tensor([math.log(3), -math.log(3)])
    with_prior = seam_losses(cam1, rv1, cam2, rv2, labels, prior=prior)
    without = seam_losses(cam1, rv1, cam2, rv2, labels)
    assert float(with_prior["cls1"]) == pytest.approx(-math.log(0.75), abs=1e-6)
    assert float(with_prior["cls2"]) == pytest.approx(-math.log(0.75), abs=1e-6)
    assert float(without["cls1"]) == pytest.approx(math.log(2), abs=1e-6)
    for key in ("rvmin1", "rvmin2", "er", "ecr"):  # the maps' terms never see the prior
        assert torch.equal(with_prior[key], without[key]), key


def test_seam_learns_the_prior_through_its_loss_and_never_in_its_maps():
    torch.manual_seed(0)
    cfg = cam_config("model.family=seam", "cam.class_prior=zero")
    net = build_seam_net(cfg, 21)
    assert build_seam_net(cam_config("model.family=seam", "cam.class_prior=none"), 21).class_prior is None
    assert load_experiment("seam_voc", ["data.root=unused"]).cam.class_prior == "none"  # the official recipe
    assert net.class_prior is not None and any(p is net.class_prior for p in net.head_parameters())
    images = toy_batch()["image"]
    net.eval()
    with torch.no_grad():
        before = net.inference_maps(images)
        net.class_prior.fill_(-2.0)
        assert torch.equal(before, net.inference_maps(images))
    net.train()
    net.class_prior.data.zero_()
    loss, parts = seam_family_loss(net, net, toy_batch(), cfg)
    loss.backward()
    assert net.class_prior.grad is not None
    assert float(net.class_prior.grad[7]) < 0 < float(net.class_prior.grad[0])  # present up, absent down


def test_tag_frequencies_by_hand():
    # 3 images; class 1 in one, class 2 in none, class 3 in all: (count + 0.5) / 4
    labels = np.array([[1, 1, 0, 1], [1, 0, 0, 1], [1, 0, 0, 1]], dtype=np.float32)
    assert tag_frequencies(labels).tolist() == pytest.approx([1.5 / 4, 0.5 / 4, 3.5 / 4])


def test_the_prior_is_learnt_and_never_enters_the_cams():
    torch.manual_seed(0)
    net = build_cam_net(cam_config("cam.class_prior=zero"), 21).eval()
    assert CAMConfig().class_prior == "none"  # the key's default: the official bias-free head
    assert build_cam_net(cam_config("cam.class_prior=none"), 21).class_prior is None
    assert net.class_prior is not None and net.class_prior.shape == (20,)
    assert any(p is net.class_prior for p in net.head_parameters())  # trained with the head
    images = toy_batch()["image"]
    with torch.no_grad():
        before_maps, before_out = net.inference_maps(images), net(images)
        net.class_prior.fill_(-2.0)
        after_maps, after_out = net.inference_maps(images), net(images)
    assert torch.equal(before_maps, after_maps) and torch.equal(before_out.cams, after_out.cams)
    assert torch.allclose(net.image_logits(after_out.cams), after_out.cams.mean(dim=(2, 3)) - 2.0)
    # the loss reaches it: a gradient flows into the prior
    net.train()
    net.class_prior.data.zero_()
    loss, _ = cam_family_loss(net, net, toy_batch(), cam_config("cam.class_prior=zero"))
    loss.backward()
    assert net.class_prior.grad is not None and float(net.class_prior.grad.abs().sum()) > 0
    # absent classes are pushed down, present ones up (prior at 0 and mean logit ~ a gradient sign)
    assert float(net.class_prior.grad[7]) < 0 < float(net.class_prior.grad[0])


def test_prior_keys_are_checked():
    with pytest.raises(ConfigError, match="cam.class_prior"):
        cam_config("cam.class_prior=yes")
    with pytest.raises(ConfigError, match="cam.class_prior"):
        load_experiment("tkpcl_voc", ["data.root=unused", *TINY, "method.et_crop_size=32", "cam.class_prior=tags"])
    with pytest.raises(ConfigError, match="no class prior"):
        build_cam_net(cam_config("cam.class_prior=none"), 21).set_class_prior(torch.full((20,), 0.5))
    with pytest.raises(ConfigError, match="frequencies in"):
        build_cam_net(cam_config("cam.class_prior=zero"), 21).set_class_prior(torch.zeros(20))


@pytest.mark.parametrize("family", ["cam", "seam"])
def test_tags_prior_starts_at_the_log_odds_and_is_saved(tmp_path, family):
    root = tmp_path / "voc"
    make_voc(root, n=4)
    cfg = cam_config("cam.class_prior=tags", "train.lr=1e-12", f"model.family={family}", root=root)
    index = build_index(cfg.data, "train")
    expected = torch.logit(tag_frequencies(np.stack([r.labels for r in index.records])))
    Trainer(cfg, tmp_path / "run", show_progress=False).fit()
    model, loaded_cfg, _ = load_trained_model(tmp_path / "run" / "model.safetensors")
    assert loaded_cfg.cam.class_prior == "tags" and loaded_cfg.model.family == family
    assert torch.allclose(model.class_prior, expected, atol=1e-6)  # lr ~0: still where it started
    assert float(expected.std()) > 0  # the fixture's classes differ in frequency, so this is no constant


def test_shipped_cam_recipe_fixes_batchnorm_and_learns_a_prior():
    """cam_voc and cam_coco: the recipe that fit and localised best (benchmarks/results/classifier_fit.md);
    the official-code configs keep their own (no prior)."""
    for name in ("cam_voc", "cam_coco"):
        cfg = load_experiment(name, ["data.root=unused"])
        assert (cfg.model.bn, cfg.cam.class_prior) == ("frozen", "tags"), name
    for name in ("cam_voc_official", "cam_voc_rca_official"):
        assert load_experiment(name, ["data.root=unused"]).cam.class_prior == "none", name
