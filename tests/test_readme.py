"""README.md states only what commands produce: the shipped configs, the verbs, the config keys
and their defaults, and the demo's numbers and time (re-measured by benchmarks/readme_numbers.py).
Each failure says what to change in README.md."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from typing import Any

import pytest
import yaml

from conftest import REPO_ROOT
from tagseg.cli import build_parser
from tagseg.config import ExperimentConfig, shipped_configs

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def verbs(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    """Every verb of the command line, e.g. 'segment train'."""
    found: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += verbs(sub, f"{prefix}{name} ") or [f"{prefix}{name}"]
    return found


def test_the_configs_line_lists_every_shipped_config():
    found = re.search(r"^tagseg configs +# the shipped experiments: (.+)$", README, re.M)
    expected = ", ".join(shipped_configs())
    assert found, ("README.md needs the line\ntagseg configs                          # the shipped experiments: "
                   f"{expected}")
    assert found.group(1) == expected, (
        f"README.md's `tagseg configs` line is out of date (a config was added or removed); replace its "
        f"comment with:\n# the shipped experiments: {expected}")


def test_the_verbs_line_lists_every_verb():
    expected = "The verbs: " + ", ".join(f"`{v}`" for v in verbs(build_parser())) + "."
    assert expected in README, (f"README.md's list of verbs is out of date (a verb was added or removed); "
                                f"replace the line starting 'The verbs:' with:\n{expected}")


def _defaults() -> dict[str, Any]:
    """Every config key with its dataclass default: the experiment and the segmentation schemas."""
    from tagseg.segment.config import SegmentExperimentConfig

    flat: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                flat.setdefault(f"{prefix}{f.name}", value)

    walk(ExperimentConfig(), "")
    walk(SegmentExperimentConfig(), "")
    return flat


def _same(stated: str, default: Any) -> bool:
    text = stated.strip().strip("`")
    if default is None or default == "":
        return text in ("–", "none", "null", "")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    if isinstance(default, bool) or isinstance(value, bool):
        return value is default
    if isinstance(default, (int, float)):
        try:
            return float(value) == float(default)  # YAML reads 1e-3 (no dot) as text
        except (TypeError, ValueError):
            return False
    if isinstance(default, list) and isinstance(value, list):
        return [float(v) for v in value] == [float(v) for v in default]
    return str(value) == str(default)


def _key_tables() -> list[tuple[str, str, str]]:
    """(row, keys cell, defaults cell) of every README table whose header is 'key | default | meaning'."""
    rows, inside = [], False
    for line in README.splitlines():
        if re.match(r"^\| key \| default \| meaning \|$", line):
            inside = True
            continue
        if inside and not line.startswith("|"):
            inside = False
        if inside and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.append((line, cells[0], cells[1]))
    return rows


def test_config_tables_name_real_keys_with_their_defaults():
    defaults = _defaults()
    rows = _key_tables()
    assert len(rows) > 20
    problems = []
    for line, keys_cell, defaults_cell in rows:
        if re.sub(r"`[^`]*`|[,/ ]", "", keys_cell):
            continue  # a row about something other than plain keys (e.g. a weights tag)
        keys = re.findall(r"`([^`]+)`", keys_cell)
        unknown = [k for k in keys if k not in defaults]
        if unknown:
            problems.append(f"{unknown} in the row {line!r} are not config keys: rename or remove them")
            continue
        stated = re.split(r" / |, (?![^\[]*\])", defaults_cell)
        if len(stated) != len(keys):
            problems.append(f"the row {line!r} states {len(stated)} defaults for {len(keys)} keys")
            continue
        for key, text in zip(keys, stated):
            if not _same(text, defaults[key]):
                problems.append(f"{key}: README.md says {text!r}, the default is {defaults[key]!r}; update the row")
    assert not problems, "README.md's key tables are out of date:\n" + "\n".join(problems)


def test_demo_paragraph_states_the_measured_numbers():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from readme_numbers import RESULTS, readme_paragraph
    finally:
        sys.path.pop(0)
    paragraph = readme_paragraph(json.loads(RESULTS.read_text()))
    assert paragraph in " ".join(README.split()), (
        "README.md's demo numbers differ from benchmarks/results/readme_demo.json (re-measured with "
        "`python benchmarks/readme_numbers.py`); replace the paragraph starting 'Measured with' under "
        f"'What the demo shows' with:\n{paragraph}")


@pytest.mark.parametrize("claim", ["about 1.5 minutes", "about 50 s", "a few minutes on 2 CPU cores", "lists 4"])
def test_no_unmeasured_claims_remain(claim):
    assert claim not in README, f"README.md states {claim!r}, which no command measured; state a measured value"
