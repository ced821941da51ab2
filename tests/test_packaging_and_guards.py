"""The wheel carries the LICENSE; the dependency floors are the versions whose guards the tests rely
on (omegaconf's YAML alias limit), and that guard's message reaches users in tagseg's words."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata

import pytest

from conftest import REPO_ROOT
from tagseg.config import parse_yaml
from tagseg.errors import ConfigError


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def test_license_file_is_the_apache_2_text_and_pyproject_ships_it():
    text = (REPO_ROOT / "LICENSE").read_text()
    assert text.strip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text and "END OF TERMS AND CONDITIONS" in text
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert 'license = "Apache-2.0"' in pyproject and 'license-files = ["LICENSE"]' in pyproject


def test_omegaconf_floor_matches_the_alias_guard_the_tests_rely_on():
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"omegaconf>=([0-9.]+)"', pyproject).group(1)
    assert _version(floor) >= (2, 4)
    assert _version(metadata.version("omegaconf")) >= _version(floor)


def alias_bomb(levels: int = 9) -> str:
    names = [chr(ord("a") + i) for i in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"{n}: &{n} [{', '.join(['*' + p] * 9)}]" for p, n in zip(names, names[1:])]
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused_in_tagsegs_words():
    with pytest.raises(ConfigError) as info:
        parse_yaml(alias_bomb(), "bomb.yaml")
    message = str(info.value)
    assert message.startswith("bomb.yaml: ") and "alias" in message and "\n" not in message
    # the library's hint on switching the limit off is not passed on to users
    assert "OMEGACONF_MAX_YAML_EXPANDED_NODES" not in message and "none" not in message.lower().split("alias")[-1]


@pytest.mark.slow
def test_the_built_wheel_contains_the_license(tmp_path):
    source = tmp_path / "source"  # a copy: building in place would leave build/ and *.egg-info in the tree
    shutil.copytree(REPO_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO_ROOT / name, source / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(source)], capture_output=True, text=True, cwd=tmp_path)
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("tagseg-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        license_files = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert license_files, names[-10:]
        assert zf.read(license_files[0]) == (REPO_ROOT / "LICENSE").read_bytes()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta and "Requires-Dist: omegaconf>=2.4" in meta
