"""Every shipped experiment config resolves to exactly the configuration it resolved to before the
per-dataset files became compositions (``defaults: [<method>_voc, data/coco]``): the resolved
configs were recorded in config_snapshots.json first, then the files were cut. Keys added to the
schema after the record are not part of it (every recorded key must keep its value)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tagseg.config import load_config, shipped_configs, to_dict

SNAPSHOTS = json.loads((Path(__file__).parent / "config_snapshots.json").read_text(encoding="utf-8"))
COMPOSED = ("cam_coco", "tkpcl_coco", "vitpcm_coco", "seam_coco", "seam_ppc_coco", "seam_hfpl_coco")


def test_the_shipped_names_are_the_same():
    assert sorted(SNAPSHOTS) == sorted(n for n in shipped_configs() if not n.startswith("segment"))


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize("name", sorted(SNAPSHOTS))
def test_each_shipped_name_resolves_as_before(name):
    now = _leaves(json.loads(json.dumps(to_dict(load_config(name)))))
    recorded = _leaves(SNAPSHOTS[name])
    assert {k: now.get(k, "<missing>") for k in recorded} == recorded


@pytest.mark.parametrize("name", COMPOSED)
def test_each_coco_config_is_its_voc_method_plus_the_coco_part(name):
    from importlib import resources

    text = (resources.files("tagseg") / "configs" / f"{name}.yaml").read_text(encoding="utf-8")
    voc = name.replace("_coco", "_voc")
    assert f"defaults: [{voc}, data/coco]" in text
    # only the keys that differ for COCO, each with a comment saying why
    own = [line for line in text.splitlines() if line and not line.startswith(("#", "defaults:"))]
    leaves = [line for line in own if not line.rstrip().endswith(":")]
    assert all("#" in line for line in leaves if not line.lstrip().startswith("name:")), leaves


@pytest.mark.parametrize("name,differs", [
    ("seam_ppc_voc", {"name", "addons.ppc.enabled"}),
    ("seam_hfpl_voc", {"name", "addons.hfpl.isl", "addons.hfpl.fsl", "refine.psa.preset"}),
])
def test_each_seam_addon_config_is_seam_voc_plus_its_addon(name, differs):
    from importlib import resources

    text = (resources.files("tagseg") / "configs" / f"{name}.yaml").read_text(encoding="utf-8")
    assert "defaults: [seam_voc]" in text and "# Paper row:" in text
    base, own = _leaves(to_dict(load_config("seam_voc"))), _leaves(to_dict(load_config(name)))
    changed = {k for k in base.keys() | own.keys() if base.get(k) != own.get(k)}
    assert changed - {"addons"} == differs  # "addons" is seam_voc's empty section, a leaf of its own
