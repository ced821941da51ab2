"""Files are untrusted: no code runs from a checkpoint, cls_labels.npy, model file or config;
unreadable checkpoints fall back; non-finite weights are never saved; outputs are reproducible."""

from __future__ import annotations

import io
import os
import pickle
import random
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fixtures import make_voc
from tagseg.cli import main
from tagseg.config import load_config
from tagseg.data.voc import load_cls_labels
from tagseg.errors import ConfigError, DataError, TagsegError, TrainingError
from tagseg.segment.config import load_segment_config
from tagseg.engine.checkpoint import (
    CheckpointReadError, canonical_safetensors, decode_state, encode_state, list_checkpoints, load_checkpoint,
    load_latest_checkpoint, read_model_file, rng_state, save_checkpoint, save_final_model, set_rng_state,
)
from tagseg.classify.trainer import Trainer
from tagseg.utils.safe_npy import RestrictedUnpickler, load_npy

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.dataset=voc", "data.train_split=train", "data.pseudo_split=train", "data.image_size=64",
    "data.num_workers=0", "model.encoder=test_resnet", "model.pretrained=false", "model.lstm_hidden=8",
    "method.et_crop_size=32", "method.pce_threshold=0.3", "train.batch_size=2", "train.epochs=2",
    "train.warmup_epochs=1", "train.unfreeze_blocks=1", "pseudo.image_size=64", "seed=7", "train.cpu_threads=1",
]


class Boom:
    """Unpickling this object runs ``touch marker`` (a stand-in for any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def crafted_state_pt(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "optimizer": {}, "rng": [Boom(marker)]}, path)


def crafted_npy(path: Path, marker: Path) -> None:
    arr = np.empty((), dtype=object)
    arr[()] = {2007000032: Boom(marker)}
    np.save(path, arr, allow_pickle=True)


def test_crafted_payloads_are_live(tmp_path):
    """The crafted files below really run code when unpickled the old way (so 'no marker' means something)."""
    crafted_state_pt(tmp_path / "state.pt", tmp_path / "m1")
    torch.load(tmp_path / "state.pt", weights_only=False)
    crafted_npy(tmp_path / "c.npy", tmp_path / "m2")
    np.load(tmp_path / "c.npy", allow_pickle=True)
    assert (tmp_path / "m1").exists() and (tmp_path / "m2").exists()


# ----------------------------------------------------------------------------- a tiny trained run

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-epoch run (checkpoints epoch_0001 and epoch_0002, model.safetensors) and its data."""
    base = tmp_path_factory.mktemp("trust")
    make_voc(base / "voc", n=5)
    cfg = load_config("tkpcl_voc", [f"data.root={base / 'voc'}", *TINY])
    Trainer(cfg, base / "run", show_progress=False).fit()
    return base, cfg


def _copy_run(trained, dest: Path) -> Path:
    shutil.copytree(trained[0] / "run", dest)
    return dest


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*.safetensors"))}


def test_two_identical_runs_write_identical_bytes(trained, tmp_path):
    base, cfg = trained
    Trainer(cfg, tmp_path / "again", show_progress=False).fit()
    a, b = _files(base / "run"), _files(tmp_path / "again")
    assert sorted(a) == ["checkpoints/epoch_0001/model.safetensors", "checkpoints/epoch_0001/state.safetensors",
                         "checkpoints/epoch_0002/model.safetensors", "checkpoints/epoch_0002/state.safetensors",
                         "model.safetensors"]
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], name


def test_canonical_header_ignores_metadata_order(tmp_path):
    t = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(2, dtype=torch.int64)}
    outs = []
    for i, meta in enumerate([{"a": "1", "b": "2", "c": "3"}, {"c": "3", "a": "1", "b": "2"}]):
        save_file(t, str(tmp_path / f"{i}.safetensors"), metadata=meta)
        outs.append(canonical_safetensors((tmp_path / f"{i}.safetensors").read_bytes()))
    assert outs[0] == outs[1]
    n = int.from_bytes(outs[0][:8], "little")
    assert n % 8 == 0 and outs[0][8:8 + n].rstrip().startswith(b'{"__metadata__":{"a":"1","b":"2","c":"3"}')
    (tmp_path / "c.safetensors").write_bytes(outs[0])
    back = load_file(str(tmp_path / "c.safetensors"))
    assert torch.equal(back["w"], t["w"]) and torch.equal(back["b"], t["b"])


# ----------------------------------------------------------------------------- state format

def test_state_roundtrip_is_exact_and_pickle_free():
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    np.random.normal()  # a cached gaussian in the numpy state
    opt_state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4)}, 7: {}},
                 "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0, 7], "foreach": None,
                                   "name": "head", "amsgrad": False}]}
    state = {"epoch": 2, "step": 17, "optimizer": opt_state, "rng": [rng_state()],
             "config": {"a": {"b": [1.5, float("nan")]}, "$odd": 1}}
    tensors, meta = encode_state(state)
    assert set(meta) == {"format", "state"} and all(isinstance(v, torch.Tensor) for v in tensors.values())
    back = decode_state(tensors, meta)
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert list(back["optimizer"]["state"]) == [0, 7]
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], opt_state["state"][0]["exp_avg"])
    assert back["config"]["$odd"] == 1 and np.isnan(back["config"]["a"]["b"][1])
    # the RNG states restore the exact same streams
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    set_rng_state(back["rng"][0])
    again = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert expected[:3] == again[:3] and torch.equal(expected[3], again[3])


def test_checkpoint_files_are_safetensors_without_pickle(trained):
    for ckpt in list_checkpoints(trained[0] / "run"):
        assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "state.safetensors"]
        data = (ckpt / "state.safetensors").read_bytes()
        assert b"\x80\x02" not in data[:16] and not data.startswith(b"PK")  # neither a pickle nor a torch zip


# ----------------------------------------------------------------------------- crafted and broken checkpoints

def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def _opt_state(model: nn.Module) -> dict:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    return opt.state_dict()


def test_crafted_state_pt_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "MARKER"
    model = _tiny_model()
    save_checkpoint(tmp_path / "run", 1, model, {"epoch": 1, "optimizer": _opt_state(model), "rng": [rng_state()]})
    ckpt = tmp_path / "run" / "checkpoints" / "epoch_0001"
    (ckpt / "state.safetensors").unlink()
    crafted_state_pt(ckpt / "state.pt", marker)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TagsegError, match=r"older tagseg version .*--out"):
        load_latest_checkpoint(tmp_path / "run", model)
    with pytest.raises(CheckpointReadError, match="never loads"):
        load_checkpoint(ckpt, model)
    assert not marker.exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unreadable_newest_checkpoint_falls_back_with_a_warning(tmp_path, capsys):
    model = _tiny_model()
    run = tmp_path / "run"
    for epoch in (1, 2, 3):
        opt = _opt_state(model)  # (takes a step)
        with torch.no_grad():
            model[0].weight.fill_(float(epoch))
        save_checkpoint(run, epoch, model, {"epoch": epoch, "optimizer": opt, "rng": [rng_state()]}, keep=3)
    ckpts = list_checkpoints(run)
    data = (ckpts[2] / "state.safetensors").read_bytes()
    (ckpts[2] / "state.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    (ckpts[1] / "model.safetensors").write_bytes(b"\0" * 100)  # garbage
    target = _tiny_model()
    path, state = load_latest_checkpoint(run, target)
    assert path == ckpts[0] and state["epoch"] == 1
    assert torch.equal(target[0].weight, torch.full((4, 3), 1.0))
    err = capsys.readouterr().err
    assert "warning: skipping checkpoint epoch_0003" in err and "warning: skipping checkpoint epoch_0002" in err
    # none readable: one clear error naming the folder
    (ckpts[0] / "state.safetensors").write_bytes(b"")
    with pytest.raises(TagsegError, match=r"no usable checkpoint in .*checkpoints \(3 found\)"):
        load_latest_checkpoint(run, _tiny_model())
    assert load_latest_checkpoint(tmp_path / "empty", _tiny_model()) is None


def test_checkpoint_that_does_not_fit_the_model_leaves_it_unchanged(tmp_path):
    model = _tiny_model()
    save_checkpoint(tmp_path / "run", 1, model, {"epoch": 1, "optimizer": _opt_state(model), "rng": [rng_state()]})
    other = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(TagsegError, match="does not fit the model"):
        load_latest_checkpoint(tmp_path / "run", other)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_resume_past_a_truncated_newest_checkpoint_is_still_exact(trained, tmp_path, capsys):
    base, cfg = trained
    run = _copy_run(trained, tmp_path / "run")
    (run / "model.safetensors").unlink()
    newest = run / "checkpoints" / "epoch_0002" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    Trainer(cfg, run, resume=True, show_progress=False).fit()
    assert "skipping checkpoint epoch_0002" in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == (base / "run" / "model.safetensors").read_bytes()


def test_cli_resume_with_a_crafted_state_pt_exits_2_without_running_it(trained, tmp_path, capsys):
    base, _ = trained
    run = tmp_path / "run"
    (run / "checkpoints" / "epoch_0001").mkdir(parents=True)
    shutil.copy(base / "run" / "checkpoints" / "epoch_0001" / "model.safetensors", run / "checkpoints" / "epoch_0001")
    marker = tmp_path / "MARKER"
    crafted_state_pt(run / "checkpoints" / "epoch_0001" / "state.pt", marker)
    code = main(["train", "--config", "tkpcl_voc", "--out", str(run), "--resume", f"data.root={base / 'voc'}", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert err.count("\n") == 1 and err.startswith("tagseg train: error: ") and "older tagseg version" in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- non-finite weights

def test_no_checkpoint_is_written_from_non_finite_weights(tmp_path):
    model = _tiny_model()
    run = tmp_path / "run"
    good = save_checkpoint(run, 1, model, {"epoch": 1, "optimizer": _opt_state(model), "rng": [rng_state()]})
    good_bytes = _files(good)
    with torch.no_grad():
        model[0].bias[2] = float("nan")
    with pytest.raises(TrainingError, match=r"epoch 2: 0\.bias holds NaN/inf.*last good checkpoint is kept"):
        save_checkpoint(run, 2, model, {"epoch": 2, "optimizer": {}, "rng": [rng_state()]})
    with torch.no_grad():
        model[0].bias[2] = 0.0
    opt = _opt_state(model)
    opt["state"][0]["exp_avg"][0, 0] = float("inf")  # poisoned optimizer moments
    with pytest.raises(TrainingError, match=r"epoch 2: state\.optimizer\.state\.0\.exp_avg holds NaN/inf"):
        save_checkpoint(run, 2, model, {"epoch": 2, "optimizer": opt, "rng": [rng_state()]})
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["epoch_0001"]  # no temp folder left
    assert _files(good) == good_bytes
    model[1].running_var[0] = float("inf")
    with pytest.raises(TrainingError, match=r"1\.running_var holds NaN/inf"):
        save_final_model(run / "model.safetensors", model, {"format": "x"})
    assert not (run / "model.safetensors").exists() and list(run.iterdir()) == [run / "checkpoints"]


def test_trainer_stops_before_checkpointing_poisoned_weights(trained, tmp_path, monkeypatch):
    """A finite loss but weights that turned NaN (here: poisoned at the end of epoch 2): training
    stops naming the epoch, and only the good epoch-1 checkpoint exists."""
    from tagseg.models.patch_classifier import PatchClassifierNet

    def poison(self, epoch):
        if epoch == 1:
            with torch.no_grad():
                self.classifier.weight[0, 0] = float("nan")

    monkeypatch.setattr(PatchClassifierNet, "on_epoch_end", poison, raising=False)
    with pytest.raises(TrainingError, match=r"epoch 2: classifier\.weight holds NaN/inf.*last good checkpoint"):
        Trainer(trained[1], tmp_path / "run", show_progress=False).fit()
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["epoch_0001"]
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["epoch_0001"]
    ok = _files(trained[0] / "run")
    assert _files(tmp_path / "run")["checkpoints/epoch_0001/model.safetensors"] == \
        ok["checkpoints/epoch_0001/model.safetensors"]


# ----------------------------------------------------------------------------- cls_labels.npy

def test_subset_cls_labels_load_exactly_as_before(voc_root):
    path = voc_root / "cls_labels.npy"
    ours = load_npy(path).item()
    theirs = np.load(path, allow_pickle=True).item()  # the shared subset's file is trusted here only
    assert len(ours) == len(theirs) == 1300
    assert list(ours) == list(theirs)
    for key in theirs:
        assert type(ours[key]) is type(theirs[key]) and ours[key].dtype == theirs[key].dtype
        assert np.array_equal(ours[key], theirs[key]), key
    table = load_cls_labels(path)
    for key, vec in theirs.items():
        sid = f"{str(int(key))[:4]}_{str(int(key))[4:]}"
        assert np.array_equal(table[sid], np.concatenate([[1.0], vec]).astype(np.float32))


def test_crafted_cls_labels_are_refused(tmp_path):
    marker = tmp_path / "MARKER"
    crafted_npy(tmp_path / "cls_labels.npy", marker)
    with pytest.raises(DataError, match=r"cls_labels\.npy: refusing to unpickle (posix|nt)\.system"):
        load_cls_labels(tmp_path / "cls_labels.npy")
    arr = np.empty((), dtype=object)
    arr[()] = {1: eval}  # a builtin function by reference
    np.save(tmp_path / "b.npy", arr, allow_pickle=True)
    with pytest.raises(DataError, match=r"refusing to unpickle builtins\.eval"):
        load_npy(tmp_path / "b.npy")
    assert not marker.exists()


def test_cli_train_with_crafted_cls_labels_exits_2(tmp_path, capsys):
    make_voc(tmp_path / "voc", n=3)
    marker = tmp_path / "MARKER"
    crafted_npy(tmp_path / "voc" / "cls_labels.npy", marker)
    code = main(["train", "--config", "tkpcl_voc", "--out", str(tmp_path / "run"), f"data.root={tmp_path / 'voc'}",
                 *TINY])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists() and "refusing to unpickle" in err and err.count("\n") == 1


def test_numpy1_module_names_load_too(tmp_path):
    arr = np.empty((), dtype=object)
    arr[()] = {np.int32(2007000032): np.eye(20, dtype=np.float32)[3], 5: np.arange(4, dtype=">i8").reshape(2, 2)}
    data = pickle.dumps(arr, protocol=3)  # GLOBAL opcodes: 'module\nname\n', no length prefix
    assert b"numpy._core.multiarray\n" in data
    old = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    for payload in (data, old):
        back = RestrictedUnpickler(io.BytesIO(payload), Path("x.npy")).load().item()
        assert list(back) == [2007000032, 5] and type(list(back)[0]) is np.int32
        assert np.array_equal(back[2007000032], np.eye(20, dtype=np.float32)[3])
        assert back[5].dtype == np.dtype(">i8") and back[5].tolist() == [[0, 1], [2, 3]]


class ShapeLie:
    """An object array whose state claims 10**9 elements but carries 3 (crashed numpy's own setstate)."""

    def __reduce__(self):
        return _multiarray._reconstruct, (np.ndarray, (0,), b"b"), (1, (10**9,), np.dtype("O"), False, [1, 2, 3])


class BigEmpty:
    def __reduce__(self):
        return _multiarray._reconstruct, (np.ndarray, (10**9,), b"b"), None


class RawNdarray:
    def __reduce__(self):
        return np.ndarray, ((10**9,),)


@pytest.mark.parametrize("payload", [ShapeLie(), BigEmpty(), RawNdarray(), {"a": ShapeLie()}])
def test_malformed_array_states_never_reach_numpy(tmp_path, payload):
    arr = np.empty((), dtype=object)
    arr[()] = payload
    np.save(tmp_path / "c.npy", arr, allow_pickle=True)
    with pytest.raises(DataError, match=r"c\.npy"):
        load_npy(tmp_path / "c.npy")


def test_non_object_npy_is_read_without_pickle(tmp_path):
    np.save(tmp_path / "f.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    assert np.array_equal(load_npy(tmp_path / "f.npy"), np.arange(6, dtype=np.float32).reshape(2, 3))
    with pytest.raises(DataError, match="expected a pickled dict"):
        load_cls_labels(tmp_path / "f.npy")


# ----------------------------------------------------------------------------- fuzz: random and mutated bytes

def _mutants(valid: bytes, rng: random.Random, n: int) -> list[bytes]:
    """n inputs: random bytes, truncations and byte flips of a valid file."""
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))))
        elif kind == 1:
            out.append(valid[: rng.randint(0, len(valid))])
        else:
            data = bytearray(valid)
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(min(len(data), 400) if rng.random() < 0.7 else len(data))  # mostly headers
                data[pos] = rng.getrandbits(8)
            out.append(bytes(data))
    return out


def test_fuzz_cls_labels(tmp_path):
    arr = np.empty((), dtype=object)
    arr[()] = {2007000032 + i: np.eye(20, dtype=np.float32)[i] for i in range(3)}
    np.save(tmp_path / "valid.npy", arr, allow_pickle=True)
    marker = tmp_path / "MARKER"
    for i, data in enumerate(_mutants((tmp_path / "valid.npy").read_bytes(), random.Random(0), 60)):
        path = tmp_path / f"c{i}.npy"
        path.write_bytes(data)
        try:
            table = load_cls_labels(path)
        except TagsegError as exc:
            assert str(path) in str(exc)
        else:
            assert all(v.shape == (21,) for v in table.values())
    assert not marker.exists()


def test_fuzz_checkpoint_state(tmp_path):
    model = _tiny_model()
    ckpt = save_checkpoint(tmp_path / "run", 1, model, {"epoch": 1, "optimizer": _opt_state(model),
                                                         "rng": [rng_state()], "config": {"a": 1}})
    valid = (ckpt / "state.safetensors").read_bytes()
    for i, data in enumerate(_mutants(valid, random.Random(1), 60)):
        (ckpt / "state.safetensors").write_bytes(data)
        try:
            state = load_checkpoint(ckpt, _tiny_model())
        except TagsegError as exc:
            assert "state.safetensors" in str(exc) or "model.safetensors" in str(exc)
        else:
            set_rng_state(state["rng"][0])  # whatever loaded is usable
    (ckpt / "state.safetensors").unlink()
    for i, data in enumerate(_mutants(pickle.dumps({"epoch": 1}), random.Random(2), 30)):
        (ckpt / "state.pt").write_bytes(data)
        with pytest.raises(TagsegError, match="older tagseg"):
            load_checkpoint(ckpt, _tiny_model())


def test_fuzz_model_file(trained, tmp_path):
    from tagseg.inference.loading import load_trained_model

    valid = (trained[0] / "run" / "model.safetensors").read_bytes()
    for i, data in enumerate(_mutants(valid, random.Random(3), 60)):
        path = tmp_path / f"m{i}.safetensors"
        path.write_bytes(data)
        try:
            load_trained_model(path)
        except TagsegError:
            pass


def test_garbage_model_metadata_gives_a_one_line_cli_error(trained, tmp_path, capsys):
    base, _ = trained
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(base / "run" / "config.yaml", run)
    weights, meta = read_model_file(base / "run" / "model.safetensors")
    for bad in ({"class_names": "[1, 2"}, {"config": "model: [unclosed"}, {"config": "train: {lr: .nan}"},
                {"palette": "[300]"}, {"config": "!!python/object:os.system {}"}):
        save_file(weights, str(run / "model.safetensors"), metadata={**meta, **bad})
        assert main(["pseudo", "--run", str(run)]) == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("tagseg pseudo: error: ") and err.count("\n") == 1 and "model.safetensors" in err, err


# ----------------------------------------------------------------------------- configs

@pytest.mark.parametrize("override,match", [
    ("train.lr=nan", r"^train\.lr=nan: must be a finite number$"),
    ("train.lr=inf", r"^train\.lr=inf: must be a finite number"),
    ("train.lr=1e30", r"^train\.lr=1e\+30: a learning rate must be in \(0, 10\]"),
    ("train.lr=-0.1", r"^train\.lr=-0\.1: a learning rate"),
    ("train.warmup_lr=0", r"^train\.warmup_lr=0: a learning rate"),
    ("method.pce_weight=-inf", r"^method\.pce_weight=-inf: must be a finite"),
    ("method.l2_weight=1e300", r"^method\.l2_weight=1e\+300: out of range"),
    ("pseudo.scales=[1.0,nan]", r"^pseudo\.scales\[1\]=nan: must be a finite"),
    ("data.image_size=-64", r"^data\.image_size=-64: must be between 16 and 8192"),
    ("pseudo.image_size=1000000", r"^pseudo\.image_size=1e\+06: must be between"),
    ("train.epochs=-1", r"^train\.epochs=-1: must be between 1"),
    ("data.num_workers=-2", r"^data\.num_workers=-2: must be between 0"),
    ("train.cpu_threads=-1", r"^train\.cpu_threads=-1: must be between 0"),
    ("train.keep_checkpoints=-1", r"^train\.keep_checkpoints=-1"),
    ("seed=-1", r"^seed=-1"),
    ("addons.rca.capacity=100000000000", r"^addons\.rca\.capacity=1e\+11: out of range"),
    ("train.lr=[1", r"^invalid override: .*line"),
])
def test_absurd_numbers_are_refused_naming_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tkpcl_voc", [override])


@pytest.mark.parametrize("override", ["train.lr=nan", "train.momentum=inf", "augment.crop_size=0",
                                      "train.epochs=0", "inference.scales=[inf]", "data.num_workers=-1"])
def test_segmentation_config_gets_the_same_checks(override):
    with pytest.raises(ConfigError, match="^" + override.split("=")[0].replace(".", r"\.").replace("[", r"\[")):
        load_segment_config("segment_demo", [override])


def test_sane_configs_still_load():
    cfg = load_config("tkpcl_voc", ["train.lr=10", "data.num_workers=0", "train.cpu_threads=4", "seed=123"])
    assert cfg.train.lr == 10.0
    load_segment_config("segment_demo", [])


@pytest.mark.parametrize("text", [
    'name: !!python/object/apply:os.system ["touch {marker}"]\n',
    "a: [1\n",
    "- 1\n- 2\n",
    "a: &a [*a]\n",
    "train: {lr: .nan}\n",
])
def test_bad_yaml_through_the_real_cli_is_one_line(tmp_path, text):
    marker = tmp_path / "MARKER"
    (tmp_path / "bad.yaml").write_text(text.replace("{marker}", str(marker)))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tagseg", "train", "--config", str(tmp_path / "bad.yaml")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=3600)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("tagseg train: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "bad.yaml" in proc.stderr or "train.lr" in proc.stderr
    assert not marker.exists()
