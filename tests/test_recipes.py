"""docs/ARCHITECTURE.md's recipes for an add-on, a dataset and a backbone, followed literally: each
code block is written into a temporary package, registered the way the recipe says (in a
monkeypatched registry), and run."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from test_stage_recipe import recipe_blocks, recipe_section
from tagseg.errors import ConfigError, DataError

TINY = ["data.image_size=64", "model.encoder=test_resnet", "model.pretrained=false", "model.lstm_hidden=8",
        "method.et_weight=0", "method.pce_weight=0"]


@pytest.fixture
def trial_package(tmp_path, monkeypatch):
    """A temporary package ``trial`` on sys.path: write(name, code) -> the imported module."""
    pkg = tmp_path / "pkgs" / "trial"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))

    def write(name: str, code: str):
        (pkg / f"{name}.py").write_text(code)
        return importlib.import_module(f"trial.{name}")

    yield write
    for name in [m for m in sys.modules if m == "trial" or m.startswith("trial.")]:
        sys.modules.pop(name)


def test_an_addon_written_by_the_recipe_plugs_in_with_one_line(trial_package, monkeypatch):
    from tagseg.addons import registry
    from tagseg.experiment import load_experiment
    from tagseg.methods.families import get_family
    from tagseg.methods.objective import patch_classifier_loss

    blocks = recipe_blocks(recipe_section("How to add an add-on"))
    assert [path for path, _ in blocks] == ["src/tagseg/addons/<name>.py", "src/tagseg/addons/registry.py"]
    (_, module_code), (_, line) = blocks
    monkeypatch.setattr(registry, "ADDONS", dict(registry.ADDONS))  # what the module registers goes away after
    trial_package("sparsity", module_code)
    entry = line.strip().strip(",").strip('"').replace("tagseg.addons.<name>", "trial.sparsity")
    monkeypatch.setattr(registry, "BUILTIN", (*registry.BUILTIN, entry))  # the one line

    cfg = load_experiment("tkpcl_voc", [*TINY, "addons.sparsity.enabled=true", "addons.sparsity.weight=3"])
    assert cfg.addons.sparsity.enabled and cfg.addons.sparsity.weight == 3.0
    torch.manual_seed(0)
    core = get_family("patch").build(cfg, 4).eval()
    batch = {"image": torch.rand(2, 3, 64, 64), "labels": torch.tensor([[1.0, 1, 0, 0], [1, 0, 0, 1]])}
    total, parts = patch_classifier_loss(core, core, batch, cfg, 0)
    z = core(batch["image"]).probs  # (B, h, w, K)
    assert parts["sparsity"].item() == pytest.approx(z[..., 1:].mean().item(), rel=1e-5)
    assert total.item() == pytest.approx((parts["mce"] + parts["l2"] + 3 * parts["sparsity"]).item(), rel=1e-5)
    with pytest.raises(ConfigError, match=r"addons.sparsity.wieght: unknown key"):
        load_experiment("tkpcl_voc", ["addons.sparsity.wieght=1"])
    # it asks for a capability, not a family: the CAM family offers score maps too (its CAMs
    # have no background channel); a family lacking a capability is refused in
    # tests/test_family_capabilities.py
    cam_cfg = load_experiment("cam_voc", ["model.encoder=test_resnet", "model.pretrained=false", "data.image_size=64",
                                          "addons.sparsity.enabled=true", "addons.sparsity.weight=3"])
    torch.manual_seed(0)
    cam = get_family("cam").build(cam_cfg, 4).eval()
    _, cam_parts = get_family("cam").loss(cam, cam, batch, cam_cfg, 0)
    assert cam_parts["sparsity"].item() == pytest.approx(cam(batch["image"]).cams.mean().item(), rel=1e-5)


def test_a_dataset_written_by_the_recipe_is_read_by_build_index(trial_package, tmp_path, monkeypatch):
    import tagseg.config as config
    from tagseg.config import load_config
    from tagseg.data import build

    assert set(build.READERS) == set(config.DATASETS)  # every allowed dataset has its reader
    blocks = recipe_blocks(recipe_section("How to add a dataset"))
    assert [path for path, _ in blocks] == ["src/tagseg/data/<name>.py", "src/tagseg/data/build.py"]
    (_, reader_code), (_, registration) = blocks
    module = trial_package("tagged", reader_code)
    monkeypatch.setattr(config, "DATASETS", (*config.DATASETS, "tagged"))
    monkeypatch.setattr(build, "READERS", dict(build.READERS))
    exec(registration, {"READERS": build.READERS, "read_tagged_list": module.read_tagged_list})  # noqa: S102

    root = tmp_path / "tagged"
    (root / "images").mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / name)
    (root / "train.txt").write_text("a.png apple\nb.png apple,pear\nc.png\n")
    cfg = load_config(None, ["data.dataset=tagged", f"data.root={root}"])
    index = build.build_index(cfg.data, "train")
    assert [r.id for r in index.records] == ["a", "b", "c"] and index.class_names == module.CLASSES
    assert [r.labels.tolist() for r in index.records] == [[1, 1, 0], [1, 1, 1], [1, 0, 0]]
    assert all(r.image_path.is_file() and r.mask_path is None for r in index.records)
    (root / "val.txt").write_text("a.png plum\n")
    with pytest.raises(DataError, match=r"val.txt:1: unknown class 'plum'"):
        build.build_index(cfg.data, "val")
    (root / "val.txt").write_text("../a.png apple\n")
    with pytest.raises(DataError):
        build.build_index(cfg.data, "val")


def test_a_backbone_written_by_the_recipe_trains_the_tag_classifier(trial_package):
    from tagseg.experiment import load_experiment
    from tagseg.methods.families import get_family
    from tagseg.methods.objective import patch_classifier_loss

    blocks = recipe_blocks(recipe_section("How to add a backbone"))
    assert len(blocks) == 1
    trial_package("backbone", blocks[0][1])  # registers tiny_resnet with timm
    cfg = load_experiment("tkpcl_voc", [*TINY, "model.encoder=tiny_resnet"])
    torch.manual_seed(0)
    core = get_family("patch").build(cfg, 4)
    batch = {"image": torch.rand(2, 3, 64, 64), "labels": torch.tensor([[1.0, 1, 0, 0], [1, 0, 0, 1]])}
    # the grid at stride 16: the last stage dilated (64 channels), or the network cut after the third (48)
    assert core.encoder.out_channels == (64 if core.encoder.dilated else 48)
    assert core.encoder(batch["image"]).shape == (2, core.encoder.out_channels, 4, 4)
    params = [p for p in core.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    total, _ = patch_classifier_loss(core, core, batch, cfg, 0)
    total.backward()
    torch.optim.SGD(params, lr=0.1).step()
    assert torch.isfinite(total) and any(not torch.equal(a, p) for a, p in zip(before, params))
