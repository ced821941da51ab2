"""Record dense-CRF golden outputs from the official ViT-PCM CRF (deepplants/ViT-PCM @ 1fea66f, ``crf.py``).

The official ``DenseCRF`` wraps pydensecrf (``unary_from_softmax``, a Gaussian and a bilateral
Potts kernel, ``inference(iter_max)``). This recorder runs that class from a checkout at the pinned
commit on fixed inputs, with each of tagseg's CRF presets as its parameters, and writes the refined
probabilities; ``tests/golden/test_crf_golden.py`` compares tagseg's two backends with them and
needs only the JSON. Needs the ``pydensecrf`` module (tagseg's optional ``pydensecrf2``) and numpy;
fetches nothing:

    git clone https://github.com/deepplants/ViT-PCM && git -C ViT-PCM checkout 1fea66f
    python benchmarks/golden/record_vit_pcm_crf.py --official ViT-PCM --out tests/golden/vit_pcm_crf.json

Inputs (golden conventions): the image is ``floor(256 * u)`` of a uniform draw, coarse colour blocks
repeated ``factor`` times plus a fine uniform draw weighted ``fine``, clipped to 0..255; the
probabilities are a softmax over K of repeated coarse normal scores plus a fine normal field.
The refined probabilities are stored exactly and compactly, as base64 of their little-endian float32 bytes.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO, COMMIT, FILE = "deepplants/ViT-PCM", "1fea66f02c86022b70ae7a8b62355cc67b977cfb", "crf.py"
# tagseg's presets in the official argument order (iter_max, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std)
PRESETS = {
    "patch": (10, 3, 1, 4, 67, 3),  # the official configs' CRF section (voc12.yaml / coco14.yaml)
    "cam": (10, 3, 3, 10, 80, 13),
    "segmentation": (1, 3, 3, 10, 32, 13),
}


def checksum(array: np.ndarray) -> str:
    a = np.ascontiguousarray(array)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode() + a.tobytes()).hexdigest()


def spec(seed: int, shape: list[int], dist: str) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(tuple(shape)) if dist == "normal" else rng.random(tuple(shape))).astype(np.float32)
    return x, {"seed": seed, "shape": shape, "dist": dist, "scale": 1.0, "sha256": checksum(x)}


def make_inputs(seed: int, k: int, coarse: tuple[int, int], factor: int, absent: list[int]) -> tuple[dict, dict]:
    h, w = coarse[0] * factor, coarse[1] * factor
    colours, s_col = spec(seed, [coarse[0], coarse[1], 3], "uniform")
    noise, s_noise = spec(seed + 1, [h, w, 3], "uniform")
    img = np.kron(colours, np.ones((factor, factor, 1), np.float32)) * np.float32(200.0) + noise * np.float32(55.0)
    image = np.clip(np.floor(img), 0, 255).astype(np.uint8)
    scores_c, s_sc = spec(seed + 2, [k, coarse[0], coarse[1]], "normal")
    scores_f, s_sf = spec(seed + 3, [k, h, w], "normal")
    scores = (np.kron(scores_c, np.ones((1, factor, factor), np.float32)) * np.float32(2.0)
              + scores_f * np.float32(0.5))
    e = np.exp(scores - scores.max(axis=0, keepdims=True))
    probs = (e / e.sum(axis=0, keepdims=True)).astype(np.float32)
    if absent:  # label-merged maps: absent classes exactly 0, the rest renormalised
        probs[absent] = 0.0
        probs = (probs / probs.sum(axis=0, keepdims=True)).astype(np.float32)
    arrays = {"image": image, "probs": probs}
    recorded = {"colours": s_col, "noise": s_noise, "scores_coarse": s_sc, "scores_fine": s_sf,
                "derive": {"k": k, "factor": factor, "absent": absent,
                           "image_sha256": checksum(image), "probs_sha256": checksum(probs)}}
    return arrays, recorded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, required=True, help="checkout of deepplants/ViT-PCM at the pinned commit")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    root = args.official.resolve()
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    if head != COMMIT:
        raise SystemExit(f"{root}: HEAD is {head}, not the pinned {COMMIT}")
    if subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--", FILE]).returncode:
        raise SystemExit(f"{root}: {FILE} is modified; record from an unmodified checkout")
    module_spec = importlib.util.spec_from_file_location("official_crf", root / FILE)
    official = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(official)

    cases = []
    for name, seed, k, coarse, factor, absent in (("softmax", 1, 4, (4, 5), 8, []),
                                                  ("label_merged", 11, 5, (3, 4), 10, [2, 4])):
        arrays, recorded = make_inputs(seed, k, coarse, factor, absent)
        for preset, p in PRESETS.items():
            crf = official.DenseCRF(*p)
            q = np.asarray(crf(arrays["image"], arrays["probs"]), dtype=np.float32)
            cases.append({
                "name": f"{name}_{preset}", "inputs": recorded,
                "params": {"preset": preset, "iter_max": p[0], "pos_w": p[1], "pos_xy_std": p[2],
                           "bi_w": p[3], "bi_xy_std": p[4], "bi_rgb_std": p[5]},
                "notes": "official DenseCRF(*params)(image (H, W, 3) uint8, probmap (K, H, W)) -> Q (K, H, W)",
                "outputs": {"q_shape": list(q.shape), "q_float32_le_base64": base64.b64encode(
                    np.ascontiguousarray(q, dtype="<f4").tobytes()).decode("ascii"), "q_sha256": checksum(q)},
            })
    import pydensecrf

    record = {
        "source": {"repo": REPO, "commit": COMMIT, "files": [FILE]},
        "recorder": "benchmarks/golden/record_vit_pcm_crf.py",
        "environment": {"python": sys.version.split()[0], "numpy": np.__version__,
                        "pydensecrf": getattr(pydensecrf, "__version__", "pydensecrf2")},
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: " + ", ".join(c["name"] for c in cases))


if __name__ == "__main__":
    main()
