"""Families offer capabilities, add-ons ask for them: every allowed family × add-on pair builds and
takes a loss step, every other pair is refused naming the add-on, the family and the missing
capability; add-on modules live in ``net.addons`` and older model files (per-attribute key names)
still load; the family's patch size reaches training views and inference."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tagseg.addons import registry
from tagseg.classify.trainer import model_metadata
from tagseg.config import PseudoConfig
from tagseg.engine.checkpoint import write_safetensors
from tagseg.errors import ConfigError
from tagseg.experiment import load_experiment
from tagseg.inference.loading import load_trained_model
from tagseg.inference.pseudo import merged_probabilities
from tagseg.methods.families import FAMILIES, get_family, register_family

K = 21
COMMON = ["data.root=unused", "data.dataset=voc", "data.train_split=train", "data.pseudo_split=train",
          "data.image_size=64", "data.num_workers=0", "model.encoder=test_resnet", "model.pretrained=false",
          "train.batch_size=2", "train.epochs=1", "pseudo.image_size=64", "seed=5"]
RECIPES = {
    "patch": ("tkpcl_voc", ["model.lstm_hidden=8", "method.et_weight=0", "method.pce_threshold=0.3",
                            "train.warmup_epochs=0", "train.unfreeze_blocks=1"]),
    "cam": ("cam_voc", ["train.warmup_epochs=0", "train.unfreeze_blocks=1"]),
    "seam": ("seam_voc", ["train.augment.resize_long=[48,96]", "cam.output_stride=16"]),
}
SWITCHES = {  # add-on switch -> (overrides that turn it on at a small size, the loss part it logs)
    "hfpl.isl": (["addons.hfpl.isl=true"], "isl"),
    "hfpl.fsl": (["addons.hfpl.fsl=true"], "fsl"),
    "ppc.enabled": (["addons.ppc.enabled=true", "addons.ppc.view2_size=32"], "ppc"),
    "rca.enabled": (["addons.rca.enabled=true", "addons.rca.score_threshold=0.0",
                     "addons.rca.contrast_start_epoch=0"], "rca_rm"),
}
ALLOWED = {("patch", "hfpl.isl"), ("patch", "ppc.enabled"), ("patch", "rca.enabled"),
           ("cam", "hfpl.isl"), ("cam", "hfpl.fsl"), ("cam", "ppc.enabled"), ("cam", "rca.enabled"),
           ("seam", "hfpl.isl"), ("seam", "hfpl.fsl"), ("seam", "ppc.enabled")}


def config(family: str, *extra: str):
    name, own = RECIPES[family]
    return load_experiment(name, [*COMMON, *own, *extra])


def toy_batch(b: int = 2, size: int = 64) -> dict:
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(b, K)
    labels[:, 0] = 1
    labels[0, 8] = 1
    labels[1, [8, 12]] = 1
    return {"image": torch.rand(b, 3, size, size, generator=g), "labels": labels, "index": torch.arange(b)}


@pytest.mark.parametrize("family", sorted(RECIPES))
@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_every_allowed_pair_builds_and_steps_and_every_other_is_refused(family, switch):
    overrides, part = SWITCHES[switch]
    addon, key = switch.split(".")
    if (family, switch) not in ALLOWED:
        missing = registry.registered_addons()[addon].missing(key, get_family(family).capabilities)
        assert missing
        with pytest.raises(ConfigError, match=re.escape(f"addons.{switch}=true: the ") + ".* add-on is not available "
                           f"for model.family='{family}'.*capability '{missing[0]}', which '{family}' does not offer"):
            config(family, *overrides)
        return
    cfg = config(family, *overrides)
    fam = get_family(family)
    torch.manual_seed(0)
    core = fam.build(cfg, K)
    assert set(core.addons) <= {addon} and all(not n.startswith(("projector", "aggregation", "memory", "ppc_",
                                                                   "rca_")) for n, _ in core.named_children())
    before = [p.detach().clone() for p in core.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD([p for p in core.parameters() if p.requires_grad], lr=0.1)
    total, parts = fam.loss(core, core, toy_batch(), cfg, 0)
    assert part in parts and math.isfinite(total.item())
    total.backward()
    optimizer.step()
    after = [p.detach() for p in core.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    if addon in core.addons:  # its trainable modules take part in the step
        grads = [p.grad for p in core.addons[addon].parameters() if p.requires_grad]
        assert not grads or any(g is not None and g.abs().sum() > 0 for g in grads)


def test_the_capability_error_names_addon_family_and_capability():
    with pytest.raises(ConfigError, match=r"addons.rca.enabled=true: the RCA add-on is not available for "
                                          r"model.family='seam' \(it serves: cam, patch; .* it needs the family "
                                          r"capability 'whole_class_loss', which 'seam' does not offer\)"):
        config("seam", *SWITCHES["rca.enabled"][0])


def test_an_addon_naming_an_unknown_capability_is_refused_when_declared():
    with pytest.raises(ConfigError, match="unknown capability 'cams'"):
        registry.Addon(name="odd", settings=dict, requires={"enabled": frozenset({"cams"})})


def test_no_family_or_network_module_names_an_addon():
    src = Path(__file__).resolve().parents[1] / "src" / "tagseg"
    named = [f"{p.parent.name}/{p.name}" for folder in ("methods", "models") for p in (src / folder).rglob("*.py")
             if re.search(r"ppc|hfpl|rca", p.read_text(encoding="utf-8"), re.IGNORECASE)]
    assert named == []


# ----------------------------------------------------------------------------- older model files

OLD_NAMES = {  # how model files named the add-on modules before the container (per family)
    "cam": {"addons.ppc.": "projector.", "addons.rca.aggregation.": "aggregation.", "addons.rca.memory.": "memory."},
    "patch": {"addons.ppc.": "ppc_projector.", "addons.rca.memory.": "rca_memory."},
}


def _old_state(state: dict, family: str) -> dict:
    out = {}
    for key, value in state.items():
        for new, old in OLD_NAMES[family].items():
            if key.startswith(new):
                key = old + key[len(new):]
                break
        out[key] = value
    return out


@pytest.mark.parametrize("family", ["cam", "patch"])
def test_a_model_file_with_the_old_key_names_still_loads(tmp_path, family):
    cfg = config(family, *SWITCHES["ppc.enabled"][0], *SWITCHES["rca.enabled"][0])
    torch.manual_seed(0)
    core = get_family(family).build(cfg, K).eval()
    old = _old_state({k: v.detach().clone() for k, v in core.state_dict().items()}, family)
    expected_old = {"cam": ["projector.conv.weight", "aggregation.head.weight", "memory.memory"],
                    "patch": ["ppc_projector.conv.weight", "rca_memory.memory"]}[family]
    assert set(expected_old) <= set(old) and not any(k.startswith("addons.") for k in old)
    path = tmp_path / "model.safetensors"
    meta = model_metadata(cfg, tuple(f"c{i}" for i in range(K)), [0] * (3 * K))
    write_safetensors(path, old, {k: v if isinstance(v, str) else __import__("json").dumps(v) for k, v in meta.items()})
    model, _, info = load_trained_model(path)
    assert info["family"] == family
    loaded = model.state_dict()
    for key, value in core.state_dict().items():
        assert torch.equal(loaded[key], value), key
    # a checkpoint's state dict with the old names loads into a fresh network as well
    fresh = get_family(family).build(cfg, K)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.addons["ppc"].conv.weight, core.addons["ppc"].conv.weight)


def test_the_legacy_key_map_renames_only_first_components():
    state = {"encoder.memory.x": 1, "memory.sizes": 2, "projector.conv.weight": 3, "classifier.weight": 4}
    assert list(registry.upgrade_state_dict(state)) == ["encoder.memory.x", "addons.rca.memory.sizes",
                                                        "addons.ppc.conv.weight", "classifier.weight"]


# ----------------------------------------------------------------------------- patch size


class _GridProbe(torch.nn.Module):
    """A patch-family stand-in: records its input sides, returns uniform Z on the (S/cell)² grid."""

    def __init__(self, cell: int, k: int) -> None:
        super().__init__()
        self.cell, self.k, self.sides = cell, k, []

    def forward(self, batch: torch.Tensor):
        self.sides.append(int(batch.shape[-1]))
        n = batch.shape[-1] // self.cell
        logits = torch.zeros(batch.shape[0], n, n, self.k)
        return type("Out", (), {"probs": logits.softmax(dim=-1)})()


def test_the_patch_size_reaches_inference_from_the_family():
    trial = dataclasses.replace(get_family("patch"), name="trial32", format="tagseg.trial32/1", patch_size=32)
    register_family(trial)
    try:
        image = np.zeros((40, 50, 3), np.uint8)
        labels = np.array([1.0, 1.0, 0.0])
        cfg = PseudoConfig(image_size=96, scales=(1.0, 0.5))
        probe = _GridProbe(32, 3)
        probs = merged_probabilities(probe, image, labels, cfg, family="trial32")
        assert probe.sides == [96, 64]  # 48 px snapped to the family's 32, not to 16
        assert probs.shape == (3, 40, 50)
        probe16 = _GridProbe(16, 3)
        merged_probabilities(probe16, image, labels, cfg, family="patch")
        assert probe16.sides == [96, 48]
    finally:
        FAMILIES.pop("trial32")


def test_the_patch_size_reaches_the_training_views_and_config_checks(monkeypatch):
    import tagseg.classify.trainer as trainer

    seen = {}

    class Views:
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            raise RuntimeError("stop")

    trial = dataclasses.replace(get_family("patch"), name="trial32", format="tagseg.trial32/1", patch_size=32)
    register_family(trial)
    try:
        with pytest.raises(ConfigError, match=r"data.image_size=48: must be a multiple of 32 \(the patch size of "
                                              r"model.family='trial32'\)"):
            config("patch", "model.family=trial32", "data.image_size=48", "pseudo.image_size=64")
        cfg = config("patch", "model.family=trial32")
        monkeypatch.setattr(trainer, "TrainingViews", Views)
        monkeypatch.setattr(trainer, "build_index", lambda *a: type("I", (), {"require_nonempty": lambda s: s})())
        with pytest.raises(RuntimeError, match="stop"):
            trainer.classifier_task(cfg)(None, torch.device("cpu"))
        assert seen["patch_size"] == 32
    finally:
        FAMILIES.pop("trial32")
