"""Shared test fixtures."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

# Tests run many tiny tensor ops; one intra-op thread avoids oversubscribing small machines.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a freshly executed module, registered as ``sys.modules[name]``
    (dataclasses and spawned workers look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def find_voc_subset() -> Path | None:
    """The real VOC 2012 developer subset, if present (TAGSEG_VOC_ROOT or ../shared/data/voc12-subset)."""
    env = os.environ.get("TAGSEG_VOC_ROOT")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "voc12-subset")
    for c in candidates:
        if (c / "JPEGImages").is_dir():
            return c
    return None


@pytest.fixture
def voc_root() -> Path:
    root = find_voc_subset()
    if root is None:
        pytest.skip("VOC 2012 subset not found (set TAGSEG_VOC_ROOT)")
    return root


@pytest.fixture(autouse=True)
def _one_thread_again():
    """Every test starts with one torch thread (small tensors: faster than several, and it shares the
    CPU); commands under test set torch's threads (``--threads``, its default), so later tests get 1 back."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)
