"""docs/ARCHITECTURE.md's "How to add a per-image stage", followed literally: its code blocks become
a trial stage in a temporary package, registered with one line; the new verb then runs through
the command line and gets resume, shards, workers and a manifest from the runner without any
code of its own."""

from __future__ import annotations

import importlib
import json
import re
import sys
import textwrap

import numpy as np
from PIL import Image

import tagseg.cli
from conftest import REPO_ROOT
from fixtures import make_folder
from tagseg.data.folder import read_folder

RULE = '''
import numpy as np


def my_rule(image, labels):
    """Bright pixels get the image's first present class, the rest background."""
    return (image.mean(-1) > 127).astype(np.uint8) * int(np.flatnonzero(labels[1:])[0] + 1)
'''

STAGE = "src/tagseg/<stage>/"


def recipe_section(title: str) -> str:
    text = (REPO_ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def recipe_blocks(section: str) -> list[tuple[str, str]]:
    """(file the recipe names, its code) for every python block, the file being the last
    `src/tagseg/...` path named before the block."""
    found = []
    for match in re.finditer(r"```python\n(.*?)```", section, re.S):
        before = section[:match.start()]
        paths = re.findall(r"`(src/tagseg/[^`]+\.py)`", before)
        found.append((paths[-1] if paths else "", textwrap.dedent(match.group(1))))
    return found


def test_the_recipe_touches_its_own_package_plus_one_registration():
    section = recipe_section("How to add a per-image stage")
    blocks = recipe_blocks(section)
    files = [path for path, _ in blocks]
    assert files == [STAGE + "run.py", STAGE + "cli.py", "src/tagseg/cli.py"]
    outside = [(path, code) for path, code in blocks if not path.startswith(STAGE)]
    assert len(outside) == 1
    registration = [line.strip() for line in outside[0][1].splitlines() if line.strip()]
    assert registration == ['"tagseg.<stage>.cli",']  # one entry of tagseg.cli.STAGE_VERBS
    # the files the recipe tells to write are the package's own; the one registration is above
    named = set(re.findall(r"`(src/tagseg/[^`]+)`", section))
    assert {p for p in named if not p.startswith(STAGE)} == {"src/tagseg/cli.py"}


def test_a_stage_written_by_the_recipe_gets_everything_from_the_runner(tmp_path, monkeypatch, capsys):
    blocks = dict(recipe_blocks(recipe_section("How to add a per-image stage")))
    pkg = tmp_path / "pkgs" / "trialstage"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""A trial stage."""\n')
    (pkg / "run.py").write_text(blocks[STAGE + "run.py"] + "\n" + RULE)
    (pkg / "cli.py").write_text(blocks[STAGE + "cli.py"])
    entry = blocks["src/tagseg/cli.py"].strip().strip(",").strip('"').replace("tagseg.<stage>", "trialstage")
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    monkeypatch.setattr(tagseg.cli, "STAGE_VERBS", (*tagseg.cli.STAGE_VERBS, entry))  # the one registration
    run = importlib.import_module("trialstage.run")
    try:
        make_folder(tmp_path / "data", n=5)
        index = read_folder(tmp_path / "data")
        out = tmp_path / "out"

        assert tagseg.cli.main(["my-stage", "--data", str(tmp_path / "data"), "--out", str(out),
                                "--shard", "0/2", "--threads", "1"]) == 0
        assert "my stage: 3 written, 0 already done" in capsys.readouterr().out  # records 0, 2, 4
        first = json.loads((out / "manifest.json").read_text())
        assert first["settings"] == {"rule": "bright"} and first["split"] == "all"
        stats = run.run_stage(index, out, shard=(1, 2), workers=2)
        assert stats.written == 2
        stats = run.run_stage(index, out)  # resume: everything is there
        assert (stats.written, stats.skipped) == (0, 5)
        for rec in index.records:
            image = np.asarray(Image.open(rec.image_path).convert("RGB"))
            assert np.array_equal(np.array(Image.open(out / "masks" / f"{rec.id}.png")), run.my_rule(image, rec.labels))
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["stage"] == "my_stage" and manifest["counts"]["on_disk"] == {"masks": 5, "complete": 5}
        assert tagseg.cli.main(["my-stage", "--data", str(tmp_path / "data"), "--out", str(out)]) == 0
        assert "my stage: 0 written, 5 already done" in capsys.readouterr().out
    finally:
        for name in ("trialstage.cli", "trialstage.run", "trialstage"):
            sys.modules.pop(name, None)
