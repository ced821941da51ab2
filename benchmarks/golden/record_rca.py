"""Record RCA golden values from the official code (maeve07/RCA, the RCA paper's repository).

``models/rca.py`` computes the region mixup contrast inline in ``RCAModel.forward`` (lines
182-239: softmax region masks, masked pooling, mixup with a random region, the InfoNCE against
the memory queues, the per-image mean summed over images) and updates the bank in
``_dequeue_and_enqueue`` (lines 260-278). The module imports GPU-era plotting and clustering
packages, so this recorder does not import it: it executes exactly those line ranges of the
pinned checkout in a namespace holding what they read (``self`` with ``map_coarse``, ``mid``,
the queues and constants; ``label``, ``batch_num``, ``feat_memory``). CPU stand-in:
``Tensor.cuda`` returns the tensor. The mixup draws (``torch.randperm``, ``np.random.beta``)
come from seeded generators and are logged so that tagseg's test can replay them.

    python benchmarks/golden/record_rca.py --official /path/to/RCA --out tests/golden/rca.json
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

REPO = "maeve07/RCA"
COMMIT = "d410a96472580ff980bf89ea250b2c82aadca795"
FILE = "models/rca.py"
RM_LINES = (182, 239)
BANK_LINES = (260, 278)
AGG_LINES = (125, 135)
AGG_WEIGHTS = {  # official module -> (weight shape, bias shape)
    "Q": ([16, 16, 1, 1], [16]), "K": ([16, 16], [16]), "V": ([16, 16], [16]),
    "aggre": ([16, 16, 1, 1], [16]), "concat_project": ([16, 32, 1, 1], [16]),
}
QUEUE_LEN, DIM, GRID = 6, 16, 8
LABELS = [[3, 15], [8], [3, 8, 12]]  # foreground channels (0-based, 20 classes) of the 3 images


def _label_value(classes: list[list[int]]) -> list:
    out = np.zeros((len(classes), 20), dtype=np.float32)
    for b, cs in enumerate(classes):
        out[b, cs] = 1.0
    return out.tolist()


def _compile(root: Path, first: int, last: int, dedent: bool = True):
    text = _common.file_lines(root, FILE, first, last)
    return compile("\n" * (first - 1) + (textwrap.dedent(text) if dedent else text), str(root / FILE), "exec")


def _queues(arrays: dict) -> dict:
    q = torch.from_numpy(arrays["queues"])  # (20, QUEUE_LEN, DIM)
    return {f"queue{k}": q[k].clone() for k in range(20)}


def record_rm(code, arrays: dict, seed: int) -> tuple[dict, dict, list]:
    mid = torch.from_numpy(arrays["mid"]).requires_grad_(True)
    queues = _queues(arrays)
    me = types.SimpleNamespace(map_coarse=torch.from_numpy(arrays["map_coarse"]), mid=mid, temperature=0.07,
                               queue_len=QUEUE_LEN, alpha=8, **queues)
    label = torch.from_numpy(arrays["label"])
    feat_memory = torch.cat([queues[f"queue{k}"] for k in range(20)], 0)
    ns = {"torch": torch, "F": F, "np": np, "self": me, "label": label, "batch_num": label.shape[0],
          "feat_memory": feat_memory}
    draws: list = []
    real_randperm, real_beta, real_cuda = torch.randperm, np.random.beta, torch.Tensor.cuda

    def randperm(n, *a, **k):
        out = real_randperm(n, *a, **k)
        draws.append({"randperm": out.tolist()})
        return out

    def beta(a, b, *args, **kw):
        out = real_beta(a, b, *args, **kw)
        draws.append({"beta": float(out)})
        return out

    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.randperm, np.random.beta = randperm, beta
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        exec(code, ns)
    finally:
        torch.randperm, np.random.beta, torch.Tensor.cuda = real_randperm, real_beta, real_cuda
    loss = ns["loss_cl_mixup"].mean()
    loss.backward()
    # per region (image i, its j-th label): the partner image, the partner's label and lambda
    regions = []
    for k in range(0, len(draws), 3):
        perm, pick, lam = draws[k]["randperm"], draws[k + 1]["randperm"], draws[k + 2]["beta"]
        regions.append({"mix_perm": perm, "label_perm": pick, "lam": lam})
    return {"loss_cl_mixup": float(loss.detach())}, {"mid": _common.inputs.summarise(mid.grad.numpy())}, regions


def record_bank(code, arrays: dict) -> dict:
    ns: dict = {"torch": torch, "F": F}
    exec(code, ns)  # defines _dequeue_and_enqueue (decorated with torch.no_grad)
    enqueue = ns["_dequeue_and_enqueue"]
    queues = _queues(arrays)
    me = types.SimpleNamespace(momentum=0.99, queue_len=QUEUE_LEN, **queues,
                               **{f"queue_ptr{k}": torch.zeros(1, dtype=torch.long) for k in range(20)})
    x, maps = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["map_coarse"])
    label, probs = torch.from_numpy(arrays["label"]), torch.from_numpy(arrays["probs"])
    for j in range(label.shape[0]):
        enqueue(me, x[j], maps[j], label[j], probs[j])
    return {"queues": torch.stack([getattr(me, f"queue{k}") for k in range(20)]).tolist(),
            "queue_ptr": [int(getattr(me, f"queue_ptr{k}")[0]) for k in range(20)]}


def record_aggregation(code, arrays: dict) -> tuple[dict, dict]:
    """Run the official aggregation (lines 125-135) with modules holding the recorded weights."""
    mods = {"Q": torch.nn.Conv2d(16, 16, 1), "K": torch.nn.Linear(16, 16), "V": torch.nn.Linear(16, 16),
            "aggre": torch.nn.Conv2d(16, 16, 1), "concat_project": torch.nn.Conv2d(32, 16, 1)}
    with torch.no_grad():
        for name, m in mods.items():
            m.weight.copy_(torch.from_numpy(arrays[f"{name}.weight"]))
            m.bias.copy_(torch.from_numpy(arrays[f"{name}.bias"]))
    x = torch.from_numpy(arrays["x"]).requires_grad_(True)
    ns = {"torch": torch, "self": types.SimpleNamespace(cluter_num=10, **mods), "x": x,
          "feat_cluter": torch.from_numpy(arrays["feat_cluter"])}
    exec(code, ns)
    out = ns["x"]
    probe = torch.from_numpy(_common.inputs.generate({"seed": 99, "shape": list(out.shape), "dist": "normal"}))
    (out * probe).sum().backward()
    return ({"x_out": _common.inputs.summarise(out.detach().numpy()), "probe_seed": 99},
            {"x": _common.inputs.summarise(x.grad.numpy()),
             "Q.weight": _common.inputs.summarise(mods["Q"].weight.grad.numpy()),
             "K.weight": _common.inputs.summarise(mods["K"].weight.grad.numpy())})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, help="checkout of maeve07/RCA at the pinned commit")
    ap.add_argument("--out", required=True, help="golden JSON to write (tests/golden/rca.json)")
    args = ap.parse_args()
    root = _common.check_checkout(args.official, COMMIT)
    torch.set_num_threads(1)
    b = len(LABELS)
    rm_specs = {
        "map_coarse": {"seed": 0, "shape": [b, 20, GRID, GRID], "dist": "normal", "scale": 2.0},
        "mid": {"seed": 1, "shape": [b, DIM, GRID, GRID], "dist": "normal"},
        "queues": {"seed": 2, "shape": [20, QUEUE_LEN, DIM], "dist": "normal"},
        "label": {"value": _label_value(LABELS)},
    }
    arrays, specs = _common.make_inputs(rm_specs)
    outputs, grads, regions = record_rm(_compile(root, *RM_LINES), arrays, seed=0)
    print(f"region mixup contrast: {outputs['loss_cl_mixup']:.6f}")
    rm_case = {"name": "region_mixup_seed0", "inputs": specs, "outputs": outputs, "grads": grads,
               "params": {"temperature": 0.07, "alpha": 8, "queue_len": QUEUE_LEN, "torch_seed": 0, "numpy_seed": 0},
               "mixup_draws": regions,
               "notes": "features = mid, masks from softmax over the 20 channels of map_coarse; regions in "
                        "image-then-label order"}
    # bank update: one gated class per image (the official loop re-masks x for a second class of the
    # same image: x = x * mask accumulates, a quirk tagseg does not reproduce)
    bank_specs = {
        "x": {"seed": 3, "shape": [b, DIM, GRID, GRID], "dist": "normal"},
        "map_coarse": {"seed": 4, "shape": [b, 20, GRID, GRID], "dist": "normal", "scale": 2.0},
        "queues": {"seed": 5, "shape": [20, QUEUE_LEN, DIM], "dist": "normal"},
        "label": {"value": _label_value([[3, 15], [3], [3, 8, 12]])},
        "probs": {"value": _label_value([[3], [3], [8]])},  # 1.0 (> 0.7) on the gated class, 0 elsewhere
    }
    arrays, specs = _common.make_inputs(bank_specs)
    bank_out = record_bank(_compile(root, *BANK_LINES), arrays)
    bank_case = {"name": "bank_update_one_class_per_image", "inputs": specs, "outputs": bank_out,
                 "params": {"momentum": 0.99, "score_threshold": 0.7, "queue_len": QUEUE_LEN},
                 "notes": "images processed in order; class 3 is written twice (ring slots 0 and 1)"}
    agg_specs = {"x": {"seed": 6, "shape": [2, 16, GRID, GRID], "dist": "normal"},
                 "feat_cluter": {"seed": 7, "shape": [200, 16], "dist": "normal"}}
    for i, (name, (w_shape, b_shape)) in enumerate(AGG_WEIGHTS.items()):
        agg_specs[f"{name}.weight"] = {"seed": 20 + 2 * i, "shape": w_shape, "dist": "normal", "scale": 0.2}
        agg_specs[f"{name}.bias"] = {"seed": 21 + 2 * i, "shape": b_shape, "dist": "normal", "scale": 0.2}
    arrays, specs = _common.make_inputs(agg_specs)
    agg_out, agg_grads = record_aggregation(_compile(root, *AGG_LINES), arrays)
    agg_case = {"name": "aggregation_official", "inputs": specs, "outputs": agg_out, "grads": agg_grads,
                "params": {"cluster_num": 10, "num_classes": 20},
                "notes": "x (after concat_project) summarised; gradients of sum(x * N(0,1) probe, seed 99)"}
    _common.write_golden(args.out, {
        "source": {"repo": REPO, "commit": COMMIT,
                   "files": [{"path": FILE, "lines": f"{RM_LINES[0]}-{RM_LINES[1]}", "what": "region mixup contrast"},
                             {"path": FILE, "lines": f"{BANK_LINES[0]}-{BANK_LINES[1]}", "what": "memory bank update"},
                             {"path": FILE, "lines": f"{AGG_LINES[0]}-{AGG_LINES[1]}", "what": "prototype aggregation"}]},
        "recorder": "benchmarks/golden/record_rca.py",
        "torch": torch.__version__, "numpy": np.__version__,
        "cases": [rm_case, bank_case, agg_case],
    })


if __name__ == "__main__":
    main()
