"""Record golden numbers from the official IRN code (jiwoon-ahn/irn): ``misc/indexing.py``'s
``PathIndex`` and ``propagate_to_edge``, on fixed inputs.

    git clone https://github.com/jiwoon-ahn/irn /tmp/irn && git -C /tmp/irn checkout a2ece0034d0a5a9635e4e131cd4fa6e2a779d316
    python benchmarks/golden/record_irn.py --official /tmp/irn --out tests/golden/irn.json

The official functions call ``.cuda()``; without a GPU that call is stubbed to return the tensor
itself. Nothing of the official code is copied.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

import _common

PINNED = "a2ece0034d0a5a9635e4e131cd4fa6e2a779d316"
FILES = {"misc/indexing.py": "PathIndex 6-87, propagate_to_edge 146-168"}


def _stub_cuda() -> None:
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    root = _common.check_checkout(args.official, PINNED)
    sys.path.insert(0, str(root))
    _stub_cuda()
    from misc import indexing  # the official module

    cases = []
    pi = indexing.PathIndex(radius=5, default_size=(10, 14))
    cases.append({"name": "path_index_r5_10x14", "inputs": {}, "params": {"radius": 5, "size": [10, 14]},
                  "outputs": {"search_dst": pi.search_dst.tolist(), "src_indices": pi.src_indices.tolist(),
                              "dst_indices": pi.dst_indices.tolist(),
                              "path_indices": [p.tolist() for p in pi.path_indices]}})
    pi10 = indexing.PathIndex(radius=10, default_size=(24, 30))
    cases.append({"name": "path_index_r10_24x30", "inputs": {}, "params": {"radius": 10, "size": [24, 30]},
                  "outputs": {"search_dst": pi10.search_dst.tolist(), "src_indices": pi10.src_indices.tolist(),
                              "path_shapes": [list(p.shape) for p in pi10.path_indices],
                              "path_sums": [int(p.sum()) for p in pi10.path_indices],
                              "dst_sum": int(pi10.dst_indices.sum())},
                  "notes": "training radius of IRN; large, so summarised"})

    for name, (c, h, w), beta, exp_times in (("propagate_3x9x11", (3, 9, 11), 10, 8),
                                            ("propagate_2x16x13_beta8_t4", (2, 16, 13), 8, 4)):
        specs = {"x": {"seed": 11 + h, "shape": [c, h, w], "dist": "uniform"},
                 "edge": {"seed": 23 + h, "shape": [1, h, w], "dist": "uniform", "scale": 0.6}}
        arrays, recorded = _common.make_inputs(specs)
        x, edge = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["edge"])
        with torch.no_grad():
            rw = indexing.propagate_to_edge(x, edge, radius=5, beta=beta, exp_times=exp_times)
            rw64 = indexing.propagate_to_edge(x.double(), edge.double(), radius=5, beta=beta, exp_times=exp_times)
        cases.append({"name": name, "inputs": recorded,
                      "params": {"radius": 5, "beta": beta, "exp_times": exp_times},
                      "outputs": {"rw": rw.reshape(c, h, w).tolist(), "rw_float64": rw64.reshape(c, h, w).tolist()},
                      "notes": "rw: the official float32 run; rw_float64: the same code on the inputs cast to "
                               "float64 (float32 squaring exp_times times leaves ~1e-5 relative rounding)"})

    _common.write_golden(args.out, {
        "source": {"repo": "jiwoon-ahn/irn", "commit": PINNED, "files": FILES},
        "recorder": "benchmarks/golden/record_irn.py",
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "cases": cases})


if __name__ == "__main__":
    main()
