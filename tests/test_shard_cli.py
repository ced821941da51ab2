"""`pseudo --shard auto` under launcher variables writes every mask exactly once; per-shard `eval`
merged with `eval --merge` equals the unsharded evaluation to the last digit."""

from __future__ import annotations

import json

import pytest

from fixtures import make_voc
from tagseg.cli import main

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
N_IMAGES = 5  # shards of 3 and 2 images: the merge must interleave them back


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def as_launched(monkeypatch, rank: int, world: int, slurm: bool = False) -> None:
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    names = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID") if slurm else ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    for name, value in zip(names, (rank, world, rank)):
        monkeypatch.setenv(name, str(value))


def test_shard_auto_pseudo_masks_and_merged_eval(tmp_path, clean_env, capsys):
    monkeypatch = clean_env
    make_voc(tmp_path / "voc", n=N_IMAGES)
    run = tmp_path / "run"
    common = [f"data.root={tmp_path / 'voc'}", "data.dataset=voc", "data.train_split=train",
              "data.pseudo_split=train", "data.image_size=64", "data.num_workers=0", "model.encoder=test_resnet",
              "model.pretrained=false", "model.lstm_hidden=8", "method.et_crop_size=32", "train.epochs=1",
              "train.warmup_epochs=0", "train.batch_size=2", "train.cpu_threads=1", "pseudo.image_size=64"]
    assert main(["train", "--config", "tkpcl_voc", "--out", str(run), *common]) == 0
    ids = sorted(p.stem for p in (tmp_path / "voc" / "JPEGImages").glob("*.jpg"))
    masks = run / "pseudo" / "train" / "masks"

    # two shards in sequence, as torchrun numbers them: each writes its own share, together all
    as_launched(monkeypatch, 0, 2)
    assert main(["pseudo", "--run", str(run), "--shard", "auto"]) == 0
    first = sorted(p.stem for p in masks.glob("*.png"))
    assert first == ids[0::2]  # shard 0 of 2: images 0, 2, 4 of the split
    as_launched(monkeypatch, 1, 2)
    assert main(["pseudo", "--run", str(run), "--shard", "auto"]) == 0
    out = capsys.readouterr().out
    assert "2 written, 0 already done" in out  # shard 1 wrote only its own two
    assert sorted(p.stem for p in masks.glob("*.png")) == ids  # every mask, each once
    assert not list(masks.parent.glob("**/.*.tmp*"))

    # unsharded scores
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    assert main(["eval", "--pred", str(masks), "--run", str(run), "--out", str(tmp_path / "whole.json")]) == 0
    # per-shard scores: one from torchrun variables, one from SLURM's, one spelled out
    as_launched(monkeypatch, 0, 3)
    assert main(["eval", "--pred", str(masks), "--run", str(run), "--shard", "auto"]) == 0
    as_launched(monkeypatch, 1, 3, slurm=True)
    assert main(["eval", "--pred", str(masks), "--run", str(run), "--shard", "auto"]) == 0
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    assert main(["eval", "--pred", str(masks), "--run", str(run), "--shard", "2/3"]) == 0
    shard_files = sorted(masks.parent.glob("eval.shard-*-of-3.json"))
    assert [p.name for p in shard_files] == [f"eval.shard-{i}-of-3.json" for i in range(3)]
    assert [json.loads(p.read_text())["images"] for p in shard_files] == [2, 2, 1]

    assert main(["eval", "--merge", *map(str, shard_files), "--out", str(tmp_path / "merged.json")]) == 0
    whole = json.loads((tmp_path / "whole.json").read_text())
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged == whole  # every number, to the last digit, and the same state
    assert whole["images"] == N_IMAGES and whole["contour_f"] is not None and whole["miou"] > 0

    # a missing shard is an error naming it, not a partial result
    capsys.readouterr()
    assert main(["eval", "--merge", str(shard_files[0]), str(shard_files[2])]) == 2
    assert "missing shard(s) 1/3 of 3" in capsys.readouterr().err


def test_pseudo_help_documents_auto(capsys):
    with pytest.raises(SystemExit):
        main(["pseudo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "or auto: rank and world size from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or SLURM" in text


def test_eval_merge_takes_only_shard_files(tmp_path, capsys):
    assert main(["eval", "--merge", str(tmp_path / "a.json"), "--run", str(tmp_path)]) == 2
    assert "--merge takes only the shards' eval.json files" in capsys.readouterr().err
    assert main(["eval", "--merge", str(tmp_path / "missing.json")]) == 2
    assert "cannot read an evaluation result" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "give the dataset with --run RUN or --config CONFIG" in capsys.readouterr().err


def test_segment_eval_shards_merge_into_the_unsharded_result(tmp_path, clean_env):
    import shutil

    from test_segmentation import TINY, tiny_voc

    voc = tmp_path / "voc"
    ids = tiny_voc(voc, n=N_IMAGES)
    masks = tmp_path / "pseudo"
    masks.mkdir()
    for i in ids:
        shutil.copy(voc / "SegmentationClassAug" / f"{i}.png", masks / f"{i}.png")
    run = tmp_path / "run"
    assert main(["segment", "train", "--config", "segment_demo", "--out", str(run), f"data.root={voc}", *TINY,
                 f"segment.masks_dir={masks}", "train.epochs=1"]) == 0
    assert main(["segment", "eval", "--run", str(run)]) == 0
    as_launched(clean_env, 0, 2, slurm=True)
    assert main(["segment", "eval", "--run", str(run), "--shard", "auto"]) == 0
    as_launched(clean_env, 1, 2)
    assert main(["segment", "eval", "--run", str(run), "--shard", "auto"]) == 0
    shards = [run / "eval.shard-0-of-2.json", run / "eval.shard-1-of-2.json"]
    assert main(["eval", "--merge", *map(str, shards), "--out", str(tmp_path / "merged.json")]) == 0
    whole = json.loads((run / "eval.json").read_text())
    assert json.loads((tmp_path / "merged.json").read_text()) == whole
    assert whole["images"] == N_IMAGES and whole["split"] == "val" and "inference" in whole


SHARD_PROBE = """
import sys
from tagseg.cli import parse_args
from tagseg.runner.launch import resolve_shard
for argv in (['pseudo', '--run', 'r', '--shard', '1/4'], ['refine', '--run', 'r', '--method', 'par', '--shard', '1/4'],
             ['eval', '--pred', 'p', '--run', 'r', '--shard', '1/4'], ['segment', 'eval', '--run', 'r', '--shard', '1/4']):
    assert parse_args(argv).shard == (1, 4), argv
assert parse_args(['pseudo', '--run', 'r', '--shard', 'auto']).shard == 'auto'
shard, launch = resolve_shard('auto')
assert shard == (2, 3) and launch.source == 'torchrun', (shard, launch)
print(sorted(m for m in ('torch', 'timm', 'triton') if m in sys.modules))
"""


def test_parsing_and_resolving_a_shard_imports_no_torch():
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    env = {**{k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}, "PYTHONPATH": str(REPO_ROOT / "src"),
           "RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}
    out = subprocess.run([sys.executable, "-c", SHARD_PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
