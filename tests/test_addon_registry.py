"""Add-ons as plug-ins: typed sections, key-naming errors, the family table as data, and a new
add-on that plugs in with its own module only."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from tagseg.addons import registry
from tagseg.addons.hfpl import HFPLConfig
from tagseg.addons.ppc import PPCConfig
from tagseg.addons.rca import RCAConfig
from tagseg.config import config_to_yaml, load_config
from tagseg.errors import ConfigError
from tagseg.experiment import experiment_from_yaml, load_experiment
from tagseg.methods.families import FAMILIES, get_family
from tagseg.methods.objective import patch_classifier_loss

TINY = ["data.image_size=64", "model.encoder=test_resnet", "model.pretrained=false", "model.lstm_hidden=8", "method.et_weight=0",
        "method.pce_weight=0"]


def test_sections_become_each_addons_settings_and_round_trip():
    cfg = load_experiment("tkpcl_voc", ["addons.hfpl.isl=true", "addons.hfpl.lam=0.3", "addons.rca.enabled=true"])
    assert isinstance(cfg.addons.hfpl, HFPLConfig) and isinstance(cfg.addons["ppc"], PPCConfig)
    assert isinstance(cfg.addons.rca, RCAConfig) and cfg.addons.rca.enabled and not cfg.addons.ppc.enabled
    assert cfg.addons.hfpl.lam == 0.3 and cfg.addons.hfpl.isl and not cfg.addons.hfpl.fsl
    text = config_to_yaml(cfg)
    assert "addons.hfpl" not in text and "lam: 0.3" in text and "capacity: 500" in text  # every key written
    assert experiment_from_yaml(text) == cfg
    # the plain loader keeps the sections as written
    assert load_config("tkpcl_voc", ["addons.hfpl.isl=true"]).addons == {"hfpl": {"isl": True}}


@pytest.mark.parametrize("override,match", [
    ("addons.ppc.enable=true", r"addons.ppc.enable: unknown key; addons.ppc takes enabled, proj_dim"),
    ("addons.hfpl.lambda=0.3", r"addons.hfpl.lambda: unknown key"),
    ("addons.crf.enabled=true", r"addons.crf: unknown add-on; known add-ons: hfpl, ppc, rca"),
    ("addons.rca.capacity=abc", r"addons.rca"),
    ("addons.hfpl.lam=1.5", r"addons.hfpl.lam=1.5: must be in \[0, 1\]"),
])
def test_bad_addon_keys_are_named(override, match):
    with pytest.raises(ConfigError, match=match):
        load_experiment("cam_voc", [override])


def test_which_family_each_switch_serves_follows_from_the_capabilities_declared_on_both():
    families = {name: fam.capabilities for name, fam in FAMILIES.items()}
    table = {a.name: {s: tuple(registry.served_families(a, s, families)) for s in a.requires}
             for a in registry.registered_addons().values()}
    assert table == {"hfpl": {"isl": ("cam", "patch", "seam"), "fsl": ("cam", "seam")},
                     "ppc": {"enabled": ("cam", "patch", "seam")}, "rca": {"enabled": ("cam", "patch")}}
    with pytest.raises(ConfigError, match=r"addons.hfpl.fsl=true: the FSL add-on is not available for "
                                          r"model.family='patch' \(it serves: cam, seam; FSL needs CAM score maps"):
        load_experiment("tkpcl_voc", ["addons.hfpl.fsl=true"])


@dataclass(frozen=True)
class ToySettings:
    enabled: bool = False
    weight: float = 2.0


def _toy_terms(ctx, s):
    part = ctx.maps[:, 1:].mean()  # mean foreground probability of the patch grid
    return {"toy": part}, s.weight * part


def test_a_new_addon_plugs_in_with_one_registration(monkeypatch):
    toy = registry.Addon(name="toy", settings=ToySettings,
                         requires={"enabled": frozenset({registry.SCORE_MAPS, registry.WHOLE_CLASS_LOSS})},
                         attach=lambda s, ctx: torch.nn.ParameterDict({"scale": torch.nn.Parameter(torch.ones(()))}),
                         loss_terms=_toy_terms)
    monkeypatch.setitem(registry.ADDONS, "toy", toy)
    cfg = load_experiment("tkpcl_voc", [*TINY, "addons.toy.enabled=true", "addons.toy.weight=3"])
    assert cfg.addons.toy == ToySettings(True, 3.0) and "weight: 3.0" in config_to_yaml(cfg)
    torch.manual_seed(0)
    core = get_family("patch").build(cfg, 4)
    assert isinstance(core.addons["toy"].scale, torch.nn.Parameter)
    batch = {"image": torch.rand(2, 3, 64, 64), "labels": torch.tensor([[1.0, 1, 0, 0], [1, 0, 0, 1]])}
    core.eval()
    total, parts = patch_classifier_loss(core, core, batch, cfg, 0)
    z = core(batch["image"]).probs  # (B, h, w, K)
    assert parts["toy"].item() == pytest.approx(z[..., 1:].mean().item(), rel=1e-5)
    assert total.item() == pytest.approx((parts["mce"] + parts["l2"] + 3 * parts["toy"]).item(), rel=1e-5)
    with pytest.raises(ConfigError, match="the TOY add-on is not available for model.family='seam'.*"
                                          "'whole_class_loss', which 'seam' does not offer"):
        load_experiment("seam_voc", ["addons.toy.enabled=true"])
