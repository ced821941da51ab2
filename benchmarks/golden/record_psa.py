"""Record golden numbers from the official AffinityNet code (jiwoon-ahn/psa): the affinity labels
within a radius (``voc12/data.py`` ``ExtractAffinityLabelInRadius``) and the low/high-α CRF
labels they are made from (``infer_cls.py`` ``_crf_with_alpha`` + the label lines of
``VOC12AffDataset.__getitem__``).

    git clone https://github.com/jiwoon-ahn/psa /tmp/psa && git -C /tmp/psa checkout 9493e59bef16687ecb4821387e38e6460857f508
    python benchmarks/golden/record_psa.py --official /tmp/psa --out tests/golden/psa.json

``voc12/data.py`` and ``infer_cls.py`` import modules a current SciPy lacks (``scipy.misc``), so
the pinned line ranges are executed in a namespace holding numpy, torch, PSA's ``tool.imutils``
and the inputs. Needs pydensecrf. Nothing of the official code is copied.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

import numpy as np
import torch

import _common

PINNED = "9493e59bef16687ecb4821387e38e6460857f508"
AFF_LINES = ("voc12/data.py", 123, 173)
CRF_LINES = ("infer_cls.py", 90, 102)
COMBINE_LINES = ("voc12/data.py", 222, 228)
FILES = {"voc12/data.py": "ExtractAffinityLabelInRadius 123-173, label combination 222-228",
         "infer_cls.py": "_crf_with_alpha 90-102", "tool/imutils.py": "crf_inference 200-217"}


def _run(root, where, namespace):
    exec(compile(textwrap.dedent(_common.file_lines(root, *where)), where[0], "exec"), namespace)


def _blocky(spec_name, spec, factor):
    arrays, recorded = _common.make_inputs({spec_name: spec})
    a = arrays[spec_name]
    return np.repeat(np.repeat(a, factor, axis=-2), factor, axis=-1), recorded


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    root = _common.check_checkout(args.official, PINNED)
    sys.path.insert(0, str(root))
    from tool import imutils  # the official module

    cases = []
    # 1. affinity labels within radius 5 on a 12x12 map of labels {0, 1, 2, 255}
    arrays, recorded = _common.make_inputs({"label": {"seed": 3, "shape": [12, 12], "dist": "integers",
                                                      "low": 0, "high": 4}})
    label = arrays["label"].copy()
    label[label == 3] = 255
    ns = {"np": np, "torch": torch}
    _run(root, AFF_LINES, ns)
    bg, fg, neg = ns["ExtractAffinityLabelInRadius"](cropsize=12, radius=5)(label.astype(np.uint8))
    cases.append({"name": "affinity_labels_r5_12x12", "inputs": recorded,
                  "params": {"cropsize": 12, "radius": 5, "value_3_means": 255},
                  "outputs": {"bg_pos": bg.long().tolist(), "fg_pos": fg.long().tolist(), "neg": neg.long().tolist()}})

    # 2. low/high-α CRF labels: a blocky image and two blocky class maps (classes 4 and 11)
    image, rec_img = _blocky("image", {"seed": 7, "shape": [3, 6, 7], "dist": "uniform", "scale": 255.0}, 4)
    cams, rec_cams = _blocky("cams", {"seed": 8, "shape": [2, 6, 7], "dist": "uniform", "scale": 1.6,
                                      "offset": -0.6}, 4)
    cams = np.clip(cams, 0.0, 1.0)
    orig_img = np.ascontiguousarray(image.transpose(1, 2, 0).astype(np.uint8))
    cam_dict = {4: cams[0], 11: cams[1]}
    ns = {"np": np, "imutils": imutils, "orig_img": orig_img}
    _run(root, CRF_LINES, ns)
    crf_la = ns["_crf_with_alpha"](cam_dict, 4)
    crf_ha = ns["_crf_with_alpha"](cam_dict, 32)
    ns = {"np": np, "label": np.transpose(np.array(list(crf_la.values()) + list(crf_ha.values())), (1, 2, 0))}
    _run(root, COMBINE_LINES, ns)
    cases.append({"name": "crf_alpha_labels_24x28", "inputs": {**rec_img, **rec_cams},
                  "params": {"low_alpha": 4, "high_alpha": 32, "keys": [5, 12], "upsample": 4},
                  "outputs": {"label": ns["label"].astype(np.int64).tolist()},
                  "notes": "inputs repeated 4x per axis, cams clipped to [0, 1]; image = uint8 of the (H, W, 3) transpose; the label "
                           "holds channel indices (0 background, 1 and 2 the classes 4 and 11, 0-based)"})

    _common.write_golden(args.out, {
        "source": {"repo": "jiwoon-ahn/psa", "commit": PINNED, "files": FILES},
        "recorder": "benchmarks/golden/record_psa.py",
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "cases": cases})


if __name__ == "__main__":
    main()
