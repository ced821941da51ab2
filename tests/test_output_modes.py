"""Outputs follow the umask: 0644 files and 0755 folders under 022 (a run or dataset on a shared
file system is readable by the group), and stay private when the user's umask says so."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from tagseg.engine.checkpoint import save_checkpoint
from tagseg.utils.io import atomic_path, process_umask, save_mask_png, umask_mode, write_json, write_text


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_to(mask: int) -> None:
        os.umask(mask)

    yield set_to
    os.umask(saved)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write_everything(root: Path) -> list[Path]:
    write_json(root / "a" / "eval.json", {"x": 1})
    write_text(root / "config.yaml", "a: 1\n")
    save_mask_png(root / "masks" / "0001.png", np.zeros((4, 5), np.uint8), [0, 0, 0, 128, 0, 0])
    with atomic_path(root / "raw.bin") as tmp:
        tmp.write_bytes(b"\0")
    save_checkpoint(root, 1, torch.nn.Linear(2, 2), {"epoch": 1})
    return sorted(root.rglob("*"))


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750),
                                                       (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    assert process_umask() == mask
    assert (umask_mode(), umask_mode(folder=True)) == (file_mode, dir_mode)
    paths = _write_everything(tmp_path / "run")
    files = [p for p in paths if p.is_file() and p.name != ".lock"]
    folders = [p for p in paths if p.is_dir()]
    assert {p.name for p in files} >= {"eval.json", "config.yaml", "0001.png", "raw.bin", "model.safetensors",
                                       "state.safetensors"}
    assert any(p.name == "epoch_0001" for p in folders)
    assert {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in files} == \
        {str(p.relative_to(tmp_path)): oct(file_mode) for p in files}
    assert {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in folders} == \
        {str(p.relative_to(tmp_path)): oct(dir_mode) for p in folders}
    assert not [p for p in paths if ".tmp" in p.name]  # nothing temporary left behind


def test_reading_the_umask_does_not_change_it(umask):
    umask(0o027)
    process_umask()
    assert os.umask(0o027) == 0o027


def test_a_prepared_voc_tree_follows_the_umask(tmp_path, umask):
    """The whole `prepare` tree (from the archives: every file is written by tagseg) is shareable."""
    from prepare_fakes import EXPECTED_VOC, make_voc_archives, make_voc_sources
    from tagseg.data.prepare.verify import ListExpectation, list_sha256
    from tagseg.data.prepare.voc import prepare_voc

    umask(0o022)
    voc, sbd, _ = make_voc_sources(tmp_path / "src")
    voc_tar, sbd_tgz = make_voc_archives(tmp_path, voc, sbd)
    expected = {k: ListExpectation(len(v), list_sha256(v)) for k, v in EXPECTED_VOC.items()}
    prepare_voc(voc_tar, sbd_tgz, tmp_path / "out", workers=1, expected=expected)
    paths = sorted((tmp_path / "out").rglob("*"))
    files = {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in paths if p.is_file() and "lock" not in p.name}
    folders = {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in paths if p.is_dir()}
    assert len(files) > 10 and set(files.values()) == {"0o644"}, files
    assert set(folders.values()) == {"0o755"}, folders
