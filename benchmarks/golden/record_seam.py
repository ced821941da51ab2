"""Record SEAM golden values from the official code (YudeWang/SEAM).

The losses are inline in ``train_SEAM.py``'s training loop, so this recorder executes that
file's helper definitions (lines 16-30: ``adaptive_min_pooling_loss``, ``max_onehot``) and the
loss block (lines 104-142: from building view 2 to ``loss``) of the pinned checkout in a
namespace holding the batch and a stand-in ``model`` that returns fixed network outputs, first
for view 1 then for view 2. ``visualization.max_norm`` is executed from its definition
(``tool/visualization.py`` lines 54-83) because that module imports OpenCV and pydensecrf at
the top, which the loss never uses. The PCM seed (``network/resnet38_SEAM.py`` lines 35-40)
and ``Net.PCM`` (lines 52-63) are executed the same way. CPU stand-in: ``Tensor.cuda`` returns
the tensor.

    python benchmarks/golden/record_seam.py --official /path/to/SEAM --out tests/golden/seam.json
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

REPO = "YudeWang/SEAM"
COMMIT = "3212261b9d008581576b8b5429e32413d892c10b"
TRAIN, HELPERS, LOSSES = "train_SEAM.py", (16, 30), (104, 142)
VIS, MAX_NORM = "tool/visualization.py", (54, 83)
NET, SEED, PCM = "network/resnet38_SEAM.py", (35, 40), (52, 63)
LABELS = [[3, 15], [8]]  # foreground classes (1-based) of image 0 and image 1


def _label_value(classes: list[list[int]]) -> list:
    out = np.zeros((len(classes), 20), dtype=np.float32)
    for b, cs in enumerate(classes):
        out[b, [c - 1 for c in cs]] = 1.0
    return out.tolist()


def _code(root: Path, rel: str, lines: tuple[int, int]):
    """Compile official lines keeping their line numbers; the block's indentation is removed
    (comment lines written at column 0 inside the block become blank lines)."""
    text = _common.file_lines(root, rel, *lines).splitlines(keepends=True)
    first = next(t for t in text if t.strip())
    indent = first[:len(first) - len(first.lstrip())]
    body = "".join(t[len(indent):] if t.startswith(indent) else "\n" for t in text)
    return compile("\n" * (lines[0] - 1) + body, str(root / rel), "exec")


def loss_cases() -> list[dict]:
    """View 1 of 40x40 px (view 2: 12x12 by the official 0.3), and 64x48 (19x14)."""
    def specs(seed: int, h: int, w: int) -> dict:
        h2, w2 = int(h * 0.3), int(w * 0.3)
        return {
            "img1": {"seed": seed, "shape": [2, 3, h, w], "dist": "normal"},
            "cam1": {"seed": seed + 1, "shape": [2, 21, h, w], "dist": "normal", "scale": 2.0},
            "cam_rv1": {"seed": seed + 2, "shape": [2, 21, h, w], "dist": "uniform", "offset": -0.1},
            "cam2": {"seed": seed + 3, "shape": [2, 21, h2, w2], "dist": "normal", "scale": 2.0},
            "cam_rv2": {"seed": seed + 4, "shape": [2, 21, h2, w2], "dist": "uniform", "offset": -0.1},
            "label": {"value": _label_value(LABELS)},
        }
    return [{"name": "square40_seed0", "inputs": specs(0, 40, 40)},
            {"name": "rect64x48_seed20", "inputs": specs(20, 64, 48)}]


def pcm_cases() -> list[dict]:
    return [{"name": "pcm_seed30", "inputs": {
        "cam": {"seed": 30, "shape": [2, 21, 6, 6], "dist": "normal"},
        "f": {"seed": 31, "shape": [2, 195, 6, 6], "dist": "normal"},
        "f9_weight": {"seed": 32, "shape": [192, 195, 1, 1], "dist": "normal", "scale": 0.1},
    }}]


def run_losses(root: Path, arrays: dict) -> tuple[dict, dict]:
    ns: dict = {"torch": torch, "F": F, "np": np}
    exec(_code(root, TRAIN, HELPERS), ns)
    vis: dict = {"torch": torch, "F": F, "np": np}
    exec(_code(root, VIS, MAX_NORM), vis)
    ns["visualization"] = types.SimpleNamespace(max_norm=vis["max_norm"])
    leaves = {k: torch.from_numpy(arrays[k]).requires_grad_(True) for k in ("cam1", "cam_rv1", "cam2", "cam_rv2")}
    outputs = iter([(leaves["cam1"], leaves["cam_rv1"]), (leaves["cam2"], leaves["cam_rv2"])])
    ns["model"] = lambda img: next(outputs)
    ns["pack"] = (None, torch.from_numpy(arrays["img1"]), torch.from_numpy(arrays["label"]))
    real_cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        exec(_code(root, TRAIN, LOSSES), ns)
    finally:
        torch.Tensor.cuda = real_cuda
    loss = ns["loss"]
    loss.backward()
    names = ("loss_cls1", "loss_cls2", "loss_rvmin1", "loss_rvmin2", "loss_er", "loss_ecr1", "loss_ecr2",
             "loss_ecr", "loss_cls")
    out = {k: float(ns[k]) for k in names}
    out["loss"] = float(loss)
    out["view2_size"] = list(ns["img2"].shape[-2:])
    grads = {k: _common.inputs.summarise(v.grad.numpy()) for k, v in leaves.items()}
    return out, grads


def run_pcm(root: Path, arrays: dict) -> tuple[dict, dict]:
    ns: dict = {"torch": torch, "F": F, "np": np}
    cam = torch.from_numpy(arrays["cam"])
    n, c, h, w = cam.shape
    ns.update(cam=cam, n=n, c=c, h=h, w=w)
    exec(_code(root, NET, SEED), ns)  # the no-grad block's body: cam_d_norm
    seed = ns["cam_d_norm"]
    defs: dict = {"torch": torch, "F": F}
    exec(_code(root, NET, PCM), defs)
    f9 = torch.nn.Conv2d(195, 192, 1, bias=False)
    with torch.no_grad():
        f9.weight.copy_(torch.from_numpy(arrays["f9_weight"]))
    f = torch.from_numpy(arrays["f"]).requires_grad_(True)
    rv = defs["PCM"](types.SimpleNamespace(f9=f9), seed, f)
    probe = torch.from_numpy(np.random.default_rng(7).standard_normal(tuple(rv.shape)).astype(np.float32))
    (rv * probe).sum().backward()
    out = {"seed": seed.tolist(), "cam_rv": rv.detach().tolist()}
    grads = {"f": _common.inputs.summarise(f.grad.numpy()),
             "f9_weight": _common.inputs.summarise(f9.weight.grad.numpy())}
    return out, grads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, help="checkout of YudeWang/SEAM at the pinned commit")
    ap.add_argument("--out", required=True, help="golden JSON to write (tests/golden/seam.json)")
    args = ap.parse_args()
    root = _common.check_checkout(args.official, COMMIT)
    torch.set_num_threads(1)
    recorded = []
    for case in loss_cases():
        arrays, specs = _common.make_inputs(case["inputs"])
        outputs, grads = run_losses(root, arrays)
        recorded.append({"name": case["name"], "inputs": specs, "params": {"scale_factor": 0.3, "ecr_fraction": 0.2},
                         "outputs": outputs, "grads": grads,
                         "notes": "grads of loss = loss_cls + loss_er + loss_ecr w.r.t. the four network outputs"})
        print(f"{case['name']}: loss {outputs['loss']:.6f} (er {outputs['loss_er']:.6f}, ecr {outputs['loss_ecr']:.6f})")
    for case in pcm_cases():
        arrays, specs = _common.make_inputs(case["inputs"])
        outputs, grads = run_pcm(root, arrays)
        recorded.append({"name": case["name"], "inputs": specs, "params": {"probe_seed": 7}, "outputs": outputs,
                         "grads": grads, "notes": "PCM seed from raw maps, then Net.PCM with the given f9 weight; "
                                                  "grads of sum(cam_rv * N(0,1) probe from numpy seed 7)"})
        print(f"{case['name']}: cam_rv sum {float(np.sum(outputs['cam_rv'])):.6f}")
    _common.write_golden(args.out, {
        "source": {"repo": REPO, "commit": COMMIT, "files": [
            {"path": TRAIN, "lines": f"{HELPERS[0]}-{HELPERS[1]}", "what": "adaptive_min_pooling_loss, max_onehot"},
            {"path": TRAIN, "lines": f"{LOSSES[0]}-{LOSSES[1]}", "what": "two views and the SEAM losses"},
            {"path": VIS, "lines": f"{MAX_NORM[0]}-{MAX_NORM[1]}", "what": "max_norm"},
            {"path": NET, "lines": f"{SEED[0]}-{SEED[1]}", "what": "PCM seed (cam_d_norm)"},
            {"path": NET, "lines": f"{PCM[0]}-{PCM[1]}", "what": "Net.PCM"}]},
        "recorder": "benchmarks/golden/record_seam.py",
        "torch": torch.__version__, "numpy": np.__version__,
        "cases": recorded,
    })


if __name__ == "__main__":
    main()
