"""Each list of allowed values is written once (tagseg.config) and read by the code that
implements it; a bad value is refused by every loader, naming the key."""

from __future__ import annotations

import re

import pytest

from conftest import REPO_ROOT
from tagseg import config as C
from tagseg.errors import ConfigError

LISTS = {"DATASETS": ("voc", "coco", "folder", "synthetic"), "BN_MODES": ("frozen", "adapt", "train"),
         "CRF_BACKENDS": ("torch", "pydensecrf"), "POOLINGS": ("avg", "max", "topk"),
         "PCE_REDUCTIONS": ("pair_mean", "class_sum")}


def test_each_list_is_written_once():
    sources = {p: p.read_text(encoding="utf-8") for p in (REPO_ROOT / "src" / "tagseg").rglob("*.py")}
    for name, values in LISTS.items():
        assert getattr(C, name) == values
        literal = re.compile(r"\(\s*" + r",\s*".join(f'"{v}"' for v in values) + r"\s*\)")
        holders = [p.relative_to(REPO_ROOT).as_posix() for p, text in sources.items() if literal.search(text)]
        assert holders == ["src/tagseg/config.py"], (name, holders)


def test_the_implementations_read_the_declared_lists():
    from tagseg.engine import phases
    from tagseg.inference.crf import dense
    from tagseg.methods import pce, pooling

    assert phases.BN_MODES is C.BN_MODES and dense.CRF_BACKENDS is C.CRF_BACKENDS
    assert pooling.POOLINGS is C.POOLINGS and pce.PCE_REDUCTIONS is C.PCE_REDUCTIONS
    assert C.CRF_CHOICES == ("none", *C.CRF_BACKENDS)


@pytest.mark.parametrize("override,message", [
    ("model.bn=fixed", "model.bn='fixed': choose frozen, adapt or train"),
    ("data.dataset=imagenet", "data.dataset='imagenet': choose voc, coco, folder or synthetic"),
    ("pseudo.crf=dense", "pseudo.crf='dense': choose none, torch or pydensecrf"),
    ("method.pooling=sum", "method.pooling='sum': choose avg, max or topk"),
])
def test_a_value_outside_the_list_is_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        C.load_config("demo", [override])


def test_segment_inference_crf_uses_the_same_list():
    from tagseg.segment.config import load_segment_config

    with pytest.raises(ConfigError, match=re.escape("inference.crf='dense': choose none, torch or pydensecrf")):
        load_segment_config("segment_demo", ["inference.crf=dense"])
