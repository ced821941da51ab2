"""Record golden numbers from ToCo's pixel-adaptive refinement (rulixiang/ToCo): ``model/PAR.py``
and its two-threshold use on seeds, ``utils/camutils.py`` ``refine_cams_with_bkg_v2``.

    git clone https://github.com/rulixiang/ToCo /tmp/toco && git -C /tmp/toco checkout e13514d9a89a6c0b4131392a465fcf368a562b4e
    python benchmarks/golden/record_toco.py --official /tmp/toco --out tests/golden/toco.json

(only ``model/`` and ``utils/`` are needed: ``git sparse-checkout set model utils`` is enough.)
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

import _common

PINNED = "e13514d9a89a6c0b4131392a465fcf368a562b4e"
FILES = {"model/PAR.py": "PAR 26-93", "utils/camutils.py": "refine_cams_with_bkg_v2 145-185, _refine_cams 187-194"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    root = _common.check_checkout(args.official, PINNED)
    sys.path.insert(0, str(root))
    from model.PAR import PAR  # the official module
    from utils import camutils

    cases = []
    for name, dilations, num_iter, (h, w), (mh, mw) in (
            ("par_default_20x24", [1, 2, 4, 8, 12, 24], 10, (20, 24), (10, 12)),
            ("par_small_13x17", [1, 2], 3, (13, 17), (13, 17))):
        specs = {"image": {"seed": 1 + h, "shape": [1, 3, h, w], "dist": "uniform", "scale": 255.0},
                 "masks": {"seed": 2 + h, "shape": [1, 3, mh, mw], "dist": "uniform"}}
        arrays, recorded = _common.make_inputs(specs)
        with torch.no_grad():
            out = PAR(dilations=dilations, num_iter=num_iter)(torch.from_numpy(arrays["image"]),
                                                              torch.from_numpy(arrays["masks"]))
        cases.append({"name": name, "inputs": recorded, "params": {"dilations": dilations, "num_iter": num_iter},
                      "outputs": {"refined": out[0].tolist()}})

    # two thresholds on seeds: 3 present classes of 20, high 0.7 / low 0.25 (VOC defaults)
    h, w = 32, 40
    specs = {"image": {"seed": 5, "shape": [1, 3, h, w], "dist": "uniform", "scale": 255.0},
             "cams": {"seed": 6, "shape": [1, 20, h, w], "dist": "uniform"}}
    arrays, recorded = _common.make_inputs(specs)
    cls_labels = torch.zeros(1, 20)
    present = [2, 7, 14]
    cls_labels[0, present] = 1
    cams = torch.from_numpy(arrays["cams"]) * cls_labels[..., None, None]
    with torch.no_grad():
        label = camutils.refine_cams_with_bkg_v2(
            PAR(dilations=[1, 2, 4, 8, 12, 24], num_iter=10), torch.from_numpy(arrays["image"]), cams=cams,
            cls_labels=cls_labels, high_thre=0.7, low_thre=0.25, ignore_index=255, img_box=[[0, h, 0, w]],
            down_scale=2)
    cases.append({"name": "refine_cams_with_bkg_v2", "inputs": recorded,
                  "params": {"present": present, "high_thre": 0.7, "low_thre": 0.25, "down_scale": 2},
                  "outputs": {"label": label[0].long().tolist()},
                  "notes": "labels: 0 background, c + 1 for class index c, 255 unsure"})

    _common.write_golden(args.out, {
        "source": {"repo": "rulixiang/ToCo", "commit": PINNED, "files": FILES},
        "recorder": "benchmarks/golden/record_toco.py",
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "cases": cases})


if __name__ == "__main__":
    main()
