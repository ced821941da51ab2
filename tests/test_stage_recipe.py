"""docs/ARCHITECTURE.md's "How to add a per-image stage", followed literally: its code block becomes
a trial stage in a temporary package, which then gets resume, shards, workers and a manifest from
the runner without any code of its own."""

from __future__ import annotations

import importlib
import json
import re
import sys

import numpy as np
from PIL import Image

from conftest import REPO_ROOT
from fixtures import make_folder
from tagseg.data.folder import read_folder

RULE = '''
import numpy as np


def my_rule(image, labels):
    """Bright pixels get the image's first present class, the rest background."""
    return (image.mean(-1) > 127).astype(np.uint8) * int(np.flatnonzero(labels[1:])[0] + 1)
'''


def recipe_code() -> str:
    text = (REPO_ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("## How to add a per-image stage", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    return "\n".join(line[3:] if line.startswith("   ") else line for line in blocks[0].splitlines())


def test_a_stage_written_by_the_recipe_gets_everything_from_the_runner(tmp_path, monkeypatch):
    pkg = tmp_path / "pkgs" / "trialstage"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "run.py").write_text(recipe_code() + "\n" + RULE)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    run = importlib.import_module("trialstage.run")
    try:
        make_folder(tmp_path / "data", n=5)
        index = read_folder(tmp_path / "data")
        out = tmp_path / "out"

        stats = run.run_stage(index, out, shard=(0, 2), settings={"rule": "bright"}, run="r", split="all")
        assert stats.written == 3  # records 0, 2, 4
        stats = run.run_stage(index, out, shard=(1, 2), workers=2)
        assert stats.written == 2
        stats = run.run_stage(index, out)  # resume: everything is there
        assert (stats.written, stats.skipped) == (0, 5)
        for rec in index.records:
            image = np.asarray(Image.open(rec.image_path).convert("RGB"))
            assert np.array_equal(np.array(Image.open(out / "masks" / f"{rec.id}.png")), run.my_rule(image, rec.labels))
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["stage"] == "my_stage" and manifest["counts"]["on_disk"] == {"masks": 5, "complete": 5}
    finally:
        sys.modules.pop("trialstage.run", None)
        sys.modules.pop("trialstage", None)
