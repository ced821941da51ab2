"""Record PPC golden values from the official code (usr922/wseg, the PPC paper's repository).

The contrast block of ``contrast_train.py`` (lines 179-392: from the resize of the source
view to ``loss_nce``) is inline in the training loop, so this recorder executes exactly that
line range of the pinned checkout in a namespace holding the network outputs it reads
(``f_proj1``, ``cam_rv1_down``, ``f_proj2``, ``cam_rv2_down``, ``label``, ``args``).
CPU stand-ins: ``Tensor.cuda`` returns the tensor. The block draws from Python's ``random``;
the recorder seeds it and logs every ``random.sample`` draw with its source line, so that the
hard-pixel halves actually used can be replayed in tagseg's test.

    python benchmarks/golden/record_wseg.py --official /path/to/wseg --out tests/golden/wseg.json
"""

from __future__ import annotations

import argparse
import random
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

REPO = "usr922/wseg"
COMMIT = "e96b961038e4171c5a49a0378111b47374dc5219"
FILE, FIRST, LAST = "contrast_train.py", 179, 392
# Labels of the recorded cases: image 0 holds classes 3 and 15, image 1 class 8 (background always).
LABELS = [[0, 3, 15], [0, 8]]


def _label_value(classes: list[list[int]]) -> list:
    out = np.zeros((len(classes), 21, 1, 1), dtype=np.float32)
    for b, cs in enumerate(classes):
        out[b, cs] = 1.0
    return out.tolist()


def cases() -> list[dict]:
    """Input specs of the recorded cases (N=2; view 2 on a 16x16 grid as in the official code)."""
    def specs(seed: int, grid1: int) -> dict:
        return {
            "f_proj1": {"seed": seed, "shape": [2, 128, grid1, grid1], "dist": "uniform"},
            "cam_rv1_down": {"seed": seed + 1, "shape": [2, 21, grid1, grid1], "dist": "normal"},
            "f_proj2": {"seed": seed + 2, "shape": [2, 128, 16, 16], "dist": "uniform"},
            "cam_rv2_down": {"seed": seed + 3, "shape": [2, 21, 16, 16], "dist": "normal"},
            "label": {"value": _label_value(LABELS)},
        }
    return [
        {"name": "grid16_seed0", "inputs": specs(0, 16), "python_random_seed": 0,
         "notes": "both views on the 16x16 grid: the resize of the source view is the identity"},
        {"name": "view1_28_seed10", "inputs": specs(10, 28), "python_random_seed": 10,
         "notes": "source view on a 28x28 grid, resized (align_corners=True) to the target's 16x16"},
    ]


def run_block(code, arrays: dict, py_seed: int) -> tuple[dict, list, dict]:
    """Execute the official block; (outputs, logged random.sample draws, input gradients)."""
    f1 = torch.from_numpy(arrays["f_proj1"]).requires_grad_(True)
    f2 = torch.from_numpy(arrays["f_proj2"]).requires_grad_(True)
    ns = {
        "torch": torch, "F": F, "np": np, "random": random,
        "args": types.SimpleNamespace(bg_threshold=0.20),
        "f_proj1": f1, "f_proj2": f2,
        "cam_rv1_down": torch.from_numpy(arrays["cam_rv1_down"]),
        "cam_rv2_down": torch.from_numpy(arrays["cam_rv2_down"]),
        "label": torch.from_numpy(arrays["label"]),
    }
    draws = []
    real_sample = random.sample

    def logged_sample(population, k):
        result = real_sample(population, k)
        draws.append({"line": sys._getframe(1).f_lineno, "n": len(population), "k": k, "result": list(result)})
        return result

    real_cuda = torch.Tensor.cuda
    random.seed(py_seed)
    random.sample = logged_sample
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        exec(code, ns)
    finally:
        random.sample = real_sample
        torch.Tensor.cuda = real_cuda
    loss = ns["loss_nce"]
    loss.sum().backward()
    item = lambda t: float(t.detach().reshape(-1)[0])  # noqa: E731 (intra losses are (1,) tensors)
    outputs = {
        "loss_nce": item(loss),
        "loss_cross_nce": item(ns["loss_cross_nce"]),
        "loss_cross_nce2": item(ns["loss_cross_nce2"]),
        "loss_intra_nce": item(ns["loss_intra_nce"]),
        "loss_nce1": item(ns["loss_nce1"]), "loss_nce2": item(ns["loss_nce2"]),
        "loss_cross_nce2_1": item(ns["loss_cross_nce2_1"]), "loss_cross_nce2_2": item(ns["loss_cross_nce2_2"]),
        "loss_intra_nce1": item(ns["loss_intra_nce1"]), "loss_intra_nce2": item(ns["loss_intra_nce2"]),
        "pseudo_label1": ns["pseudo_label1"].tolist(), "pseudo_label2": ns["pseudo_label2"].tolist(),
        "prototypes1_sum": ns["prototypes1"].sum(dim=1).tolist(),
        "prototypes2_sum": ns["prototypes2"].sum(dim=1).tolist(),
    }
    grads = {"f_proj1": _common.inputs.summarise(f1.grad.numpy()),
             "f_proj2": _common.inputs.summarise(f2.grad.numpy())}
    return outputs, draws, grads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, help="checkout of usr922/wseg at the pinned commit")
    ap.add_argument("--out", required=True, help="golden JSON to write (tests/golden/wseg.json)")
    args = ap.parse_args()
    root = _common.check_checkout(args.official, COMMIT)
    text = _common.file_lines(root, FILE, FIRST, LAST)
    # Keep the official line numbers (for the draw log) and drop the loop's indentation.
    code = compile("\n" * (FIRST - 1) + textwrap.dedent(text), str(root / FILE), "exec")
    torch.set_num_threads(1)
    recorded = []
    for case in cases():
        arrays, specs = _common.make_inputs(case["inputs"])
        outputs, draws, grads = run_block(code, arrays, case["python_random_seed"])
        # Hard-pixel sampling's random halves are the draws whose population is one class's pixels;
        # the per-pixel `random.sample(range(21), 10)` draws are computed and never used.
        used = [d for d in draws if d["line"] not in (291, 344)]
        recorded.append({
            "name": case["name"], "notes": case["notes"], "inputs": specs,
            "params": {"bg_threshold": 0.20, "temperature": 0.1, "python_random_seed": case["python_random_seed"]},
            "outputs": outputs, "grads": grads,
            "random_pixel_draws": [{"line": d["line"], "n": d["n"], "result": d["result"]} for d in used],
        })
        print(f"{case['name']}: loss_nce {outputs['loss_nce']:.6f} = cross {outputs['loss_cross_nce']:.6f}"
              f" + cross-CAM {outputs['loss_cross_nce2']:.6f} + intra {outputs['loss_intra_nce']:.6f}")
    _common.write_golden(args.out, {
        "source": {"repo": REPO, "commit": COMMIT,
                   "files": [{"path": FILE, "lines": f"{FIRST}-{LAST}", "what": "contrast block (PPC)"},
                             {"path": "network/resnet38_contrast.py", "lines": "30-61",
                              "what": "Dropout2d(0.5) -> fc_proj -> ReLU producing f_proj"}]},
        "recorder": "benchmarks/golden/record_wseg.py",
        "torch": torch.__version__, "numpy": np.__version__,
        "cases": recorded,
    })


if __name__ == "__main__":
    main()
