"""Record HFPL golden values from the official code (arvijj/hfpl, the HFPL paper's repository).

ISL and FSL are inline in ``train_cam_voc.py`` (lines 143-171: importance sampling of the
logits with ``tool/probutils.sample_probs`` and ``multilabel_soft_margin_loss``, then the
min-max normalised maps, the resized image and ``tool/probutils.feature_similarity_loss``).
This recorder executes exactly that line range of the pinned checkout in a namespace holding
what it reads (``logits1``, ``label``, ``img1``, ``args``, the other loss terms as zeros),
after seeding torch's global generator (the importance sampling draws from it).
CPU stand-ins: ``Tensor.cuda`` returns the tensor; ``cv2`` (imported by ``tool/visualization``
but unused by ``max_norm``) is an empty module when it is not installed.

    python benchmarks/golden/record_hfpl.py --official /path/to/hfpl --out tests/golden/hfpl.json
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

REPO = "arvijj/hfpl"
COMMIT = "1038a68f160c96ab746a7ef117b7ccad138b1397"
FILE, FIRST, LAST = "train_cam_voc.py", 143, 171
LABELS = [[0, 3, 15], [0, 8]]


def _label_value(classes: list[list[int]]) -> list:
    out = np.zeros((len(classes), 21, 1, 1), dtype=np.float32)
    for b, cs in enumerate(classes):
        out[b, cs] = 1.0
    return out.tolist()


def cases() -> list[dict]:
    def specs(seed: int, scale: float, offset: float, grid: int, size: int) -> dict:
        return {
            "logits1": {"seed": seed, "shape": [2, 21, grid, grid], "dist": "normal", "scale": scale, "offset": offset},
            "img1": {"seed": seed + 1, "shape": [2, 3, size, size], "dist": "normal"},
            "label": {"value": _label_value(LABELS)},
        }
    return [
        {"name": "logits_x2_seed0", "inputs": specs(0, 2.0, 0.0, 12, 24), "torch_seed": 0,
         "notes": "maps with zeros after ReLU; image 24 px resized to the 12x12 map"},
        {"name": "logits_x8_seed1", "inputs": specs(1, 8.0, 0.0, 12, 24), "torch_seed": 1,
         "notes": "saturated logits (H3: the clamped BCE on probabilities has no gradient there)"},
        {"name": "all_positive_seed2", "inputs": specs(2, 1.0, 4.0, 10, 33), "torch_seed": 2,
         "notes": "every map positive everywhere (H1: min-max differs from max normalisation); 33 px image"},
    ]


def run_block(code, arrays: dict, torch_seed: int) -> tuple[dict, dict]:
    logits = torch.from_numpy(arrays["logits1"]).requires_grad_(True)
    zero = torch.zeros(())
    ns = {
        "torch": torch, "F": F,
        "args": types.SimpleNamespace(loss_weight=0.2, num_samples=10, fsl=True, fsl_mu=2.5, fsl_sigma=5.0),
        "logits1": logits, "label": torch.from_numpy(arrays["label"]), "img1": torch.from_numpy(arrays["img1"]),
        "loss_cls1": zero, "loss_cls2": zero, "loss_rvmin1": zero, "loss_rvmin2": zero,
    }
    from tool import probutils, visualization  # the official modules, from the checkout on sys.path
    ns.update(probutils=probutils, visualization=visualization)
    real_cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.manual_seed(torch_seed)
    try:
        exec(code, ns)
    finally:
        torch.Tensor.cuda = real_cuda
    isl, fsl = ns["loss_cls_is1"], ns["loss_fs1"]
    g_isl, = torch.autograd.grad(isl, logits, retain_graph=True)
    g_fsl, = torch.autograd.grad(fsl, logits)
    outputs = {"loss_cls_is1": float(isl), "loss_fs1": float(fsl),
               "pred_is1": ns["pred_is1"].detach().tolist()}
    grads = {"isl_logits1": _common.inputs.summarise(g_isl.numpy()),
             "fsl_logits1": _common.inputs.summarise(g_fsl.numpy())}
    return outputs, grads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, help="checkout of arvijj/hfpl at the pinned commit")
    ap.add_argument("--out", required=True, help="golden JSON to write (tests/golden/hfpl.json)")
    args = ap.parse_args()
    root = _common.check_checkout(args.official, COMMIT)
    sys.path.insert(0, str(root))
    try:
        import cv2  # noqa: F401
    except ImportError:
        sys.modules["cv2"] = types.ModuleType("cv2")
    text = _common.file_lines(root, FILE, FIRST, LAST)
    code = compile("\n" * (FIRST - 1) + textwrap.dedent(text), str(root / FILE), "exec")
    torch.set_num_threads(1)
    recorded = []
    for case in cases():
        arrays, specs = _common.make_inputs(case["inputs"])
        outputs, grads = run_block(code, arrays, case["torch_seed"])
        recorded.append({"name": case["name"], "notes": case["notes"], "inputs": specs,
                         "params": {"loss_weight": 0.2, "num_samples": 10, "fsl_mu": 2.5, "fsl_sigma": 5.0,
                                    "torch_seed": case["torch_seed"],
                                    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
                         "outputs": outputs, "grads": grads})
        print(f"{case['name']}: ISL {outputs['loss_cls_is1']:.6f}  FSL {outputs['loss_fs1']:.6g}")
    _common.write_golden(args.out, {
        "source": {"repo": REPO, "commit": COMMIT,
                   "files": [{"path": FILE, "lines": f"{FIRST}-{LAST}", "what": "ISL and FSL of the CAM training step"},
                             {"path": "tool/probutils.py", "lines": "5-66", "what": "sample_probs, feature_similarity_loss"},
                             {"path": "tool/visualization.py", "lines": "54-68", "what": "max_norm (min-max)"}]},
        "recorder": "benchmarks/golden/record_hfpl.py",
        "torch": torch.__version__, "numpy": np.__version__,
        "cases": recorded,
    })


if __name__ == "__main__":
    main()
