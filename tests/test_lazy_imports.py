"""tagseg loads no optional compiled extension unless it is used (CPU-only installs stay small)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO_ROOT

PROBE = """
import sys
import tagseg.cli, tagseg.engine.loop, tagseg.engine.precision
import tagseg.inference.crf as crf
loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('pydensecrf', 'pydensecrf2'))
print('BEFORE', loaded)
if crf.pydensecrf_available():
    print('AFTER', sorted(m for m in sys.modules if m.split('.')[0] == 'pydensecrf')[:1])
"""


def test_pydensecrf_is_imported_only_when_its_backend_is_asked_for():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BEFORE []" in out.stdout  # nothing compiled from the crf extra at import time
    if "AFTER" in out.stdout:  # installed: the probe itself imports it, which the check can see
        assert "AFTER ['pydensecrf" in out.stdout


def test_the_command_line_imports_no_torch_before_a_verb_runs():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    probe = "import sys, tagseg.cli; print(sorted(m for m in ('torch', 'timm', 'triton') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


HELP_PROBE = """
import contextlib, io, sys
from tagseg.cli import main
for argv in ([], ['demo'], ['train'], ['pseudo'], ['eval'], ['configs'], ['report'], ['segment'],
             ['segment', 'train'], ['segment', 'eval'], ['predict'], ['prepare'], ['prepare', 'voc'],
             ['prepare', 'coco']):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main([*argv, '--help'])
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main(['--version'])
print(sorted(m for m in ('torch', 'timm', 'triton', 'numpy', 'scipy', 'PIL') if m in sys.modules))
"""


def test_help_of_every_verb_and_version_import_no_torch_numpy_or_scipy():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_configs_listing_needs_no_torch():
    """`tagseg configs` only lists the shipped names: torch is not imported for it. (`tagseg configs
    NAME` checks the config against the family and add-on registries, which are torch modules, so that
    a misspelt add-on key is refused there as in every verb.)"""
    probe = HELP_PROBE.split("for argv")[0] + (
        "for argv in (['configs'],):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        assert main(argv) == 0\n"
        "print(sorted(m for m in ('torch', 'timm', 'triton') if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
