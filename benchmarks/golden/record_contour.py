"""Record contour-F golden numbers from the two official implementations tagseg's contour F follows.

* ``--source davis``: the DAVIS toolkit (davisvideochallenge/davis @ a44a351,
  ``python/lib/davis/measures/f_boundary.py``): ``seg2bmap`` boundary maps and the per-image
  ``db_eval_boundary`` F on binary masks -> ``tests/golden/davis.json``.
* ``--source hfpl_contour``: HFPL's evaluation (arvijj/hfpl @ 1038a68, ``contour_fscore.py``, run by
  its ``run_voc.sh``): ``f_matches`` per image and class, and the script's own dataset mean F, run
  end to end on label PNGs written to a temporary folder -> ``tests/golden/hfpl_contour.json``.

Needs numpy, scikit-image, OpenCV and Pillow (and pandas, which HFPL's script imports) in the
recording environment, and a checkout at the pinned commit; fetches nothing:

    git clone https://github.com/arvijj/hfpl && git -C hfpl checkout 1038a68
    python benchmarks/golden/record_contour.py --source hfpl_contour --official hfpl \\
        --out tests/golden/hfpl_contour.json

Both official files use ``np.bool``, which numpy >= 1.24 removed: the recorder restores that alias
(``bool``) before running them; nothing else is changed.

Label maps are derived from seeded normal draws (golden conventions): K coarse score maps upsampled
by repetition plus a fine full-resolution field, argmax over K; ground-truth void pixels (255)
where a uniform draw is below ``void``. ``tests/golden/test_contour_golden.py`` derives them the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PINNED = {
    "davis": ("davisvideochallenge/davis", "a44a3512d8e99e91c44f8d8d2a08d5dbc032ddec",
              "python/lib/davis/measures/f_boundary.py"),
    "hfpl_contour": ("arvijj/hfpl", "1038a68f160c96ab746a7ef117b7ccad138b1397", "contour_fscore.py"),
}


def checksum(array: np.ndarray) -> str:
    a = np.ascontiguousarray(array)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode() + a.tobytes()).hexdigest()


def spec(seed: int, shape: list[int], dist: str = "normal") -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(tuple(shape)) if dist == "normal" else rng.random(tuple(shape))).astype(np.float32)
    return x, {"seed": seed, "shape": shape, "dist": dist, "scale": 1.0, "sha256": checksum(x)}


def label_map(seed: int, classes: int, coarse: tuple[int, int], factor: int, fine: float = 0.6,
              void: float = 0.0) -> tuple[np.ndarray, dict]:
    """(H, W) uint8 labels 0..classes-1 (255 where void) and the specs that make them."""
    c, s_c = spec(seed, [classes, coarse[0], coarse[1]])
    f, s_f = spec(seed + 1, [classes, coarse[0] * factor, coarse[1] * factor])
    scores = np.kron(c, np.ones((1, factor, factor), np.float32)) + np.float32(fine) * f
    labels = scores.argmax(axis=0).astype(np.uint8)
    specs = {"coarse": s_c, "fine": s_f}
    if void > 0:
        v, s_v = spec(seed + 2, list(labels.shape), "uniform")
        labels[v < void] = 255
        specs["void"] = s_v
    derive = {"classes": classes, "factor": factor, "fine_weight": fine, "void_below": void,
              "sha256": checksum(labels)}
    return labels, {"specs": specs, "derive": derive}


def check_checkout(root: Path, commit: str, rel: str) -> None:
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    if head != commit:
        raise SystemExit(f"{root}: HEAD is {head}, not the pinned {commit}")
    if subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--", rel]).returncode:
        raise SystemExit(f"{root}: {rel} is modified; record from an unmodified checkout")


def load(path: Path, name: str):
    if not hasattr(np, "bool"):
        np.bool = bool  # the alias the official files use (removed in numpy 1.24)
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def record_davis(mod) -> list[dict]:
    cases = []
    for i, (shape, coarse, factor) in enumerate([((40, 56), (5, 7), 8), ((33, 47), (33, 47), 1), ((64, 64), (4, 4), 16)]):
        labels, lab = label_map(10 + 10 * i, 3, coarse, factor)
        labels = labels[: shape[0], : shape[1]]
        lab["derive"]["crop"] = list(shape)
        lab["derive"]["sha256"] = checksum(labels)
        fg, gt = labels == 1, labels == 2
        bmap = mod.seg2bmap(fg)
        f_value = float(mod.db_eval_boundary(fg.astype(np.uint8), (labels >= 1).astype(np.uint8)))
        cases.append({
            "name": f"seg2bmap_{i}", "inputs": {"labels": lab}, "params": {"fg": "labels == 1",
                                                                          "gt": "labels >= 1"},
            "outputs": {"bmap_fg_indices": np.flatnonzero(bmap).tolist(),
                        "bmap_gt2_indices": np.flatnonzero(mod.seg2bmap(gt)).tolist(),
                        "db_eval_boundary_F": f_value},
        })
    empty = np.zeros((30, 30), np.uint8)
    square = empty.copy()
    square[5:20, 8:25] = 1
    cases.append({"name": "edge_cases", "inputs": {}, "params": {"shape": [30, 30], "square": [5, 20, 8, 25]},
                  "outputs": {"F_empty_pred": float(mod.db_eval_boundary(empty, square)),
                              "F_empty_gt": float(mod.db_eval_boundary(square, empty)),
                              "F_both_empty": float(mod.db_eval_boundary(empty, empty)),
                              "F_same": float(mod.db_eval_boundary(square, square))}})
    return cases


def record_hfpl(mod, script: Path) -> list[dict]:
    cases = []
    for name, num_fg, images, drop_class in (("all_classes", 4, 4, None), ("class_4_absent", 4, 3, 4)):
        inputs, per_image = {}, []
        with tempfile.TemporaryDirectory() as tmp:
            pred_dir, gt_dir = Path(tmp, "pred"), Path(tmp, "gt")
            pred_dir.mkdir()
            gt_dir.mkdir()
            ids = []
            for i in range(images):
                seed = 100 + 20 * i + (0 if drop_class is None else 500)
                gt, s_gt = label_map(seed, num_fg + 1, (4 + i, 5), 12, void=0.02)
                pred, s_pred = label_map(seed + 7, num_fg + 1, (4 + i, 5), 12)
                if drop_class is not None:
                    gt[gt == drop_class] = 0
                    pred[pred == drop_class] = 0
                    s_gt["derive"]["to_background"] = s_pred["derive"]["to_background"] = drop_class
                    s_gt["derive"]["sha256"], s_pred["derive"]["sha256"] = checksum(gt), checksum(pred)
                image_id = f"img{i}"
                ids.append(image_id)
                inputs[f"{image_id}_gt"], inputs[f"{image_id}_pred"] = s_gt, s_pred
                from PIL import Image

                Image.fromarray(gt).save(gt_dir / f"{image_id}.png")
                Image.fromarray(pred).save(pred_dir / f"{image_id}.png")
                g_all = gt.copy()
                g_all[g_all == 255] = 0  # as the script does before its per-class loop
                for c in range(1, num_fg + 1):
                    g = np.where(g_all == c, c, 0).astype(np.uint8)
                    p = np.where(pred == c, c, 0).astype(np.uint8)
                    fgm, gtm, nfg, ngt = mod.f_matches(g, p, bound_th=0.008)
                    per_image.append({"image": image_id, "class": c, "fg_matches": int(fgm), "gt_matches": int(gtm),
                                      "n_fg": int(nfg), "n_gt": int(ngt)})
            Path(tmp, "list.txt").write_text("\n".join(ids) + "\n")
            argv = [str(script), "--pred_path", str(pred_dir), "--img_list", str(Path(tmp, "list.txt")),
                    "--gt_path", str(gt_dir), "--num_classes", str(num_fg), "--no-verbose"]
            out = io.StringIO()
            old = sys.argv
            try:
                sys.argv = argv
                with contextlib.redirect_stdout(out):
                    mod.main()
            finally:
                sys.argv = old
        printed = out.getvalue().strip().splitlines()[-1]
        mean_f = float(printed.split(":")[1].strip().rstrip("%")) / 100.0
        cases.append({
            "name": name, "inputs": inputs,
            "params": {"num_classes": num_fg, "bound_th": 0.008, "ids": ids},
            "notes": "f_matches(gt_c, pred_c) per image and foreground class (the script passes the ground "
                     "truth as its first argument: its 'fg' counts are the ground truth's); mean_F is the "
                     "script's printed 'mean F-score' (3 decimals of a percent)",
            "outputs": {"f_matches": per_image, "mean_F_printed": printed, "mean_F": mean_f},
        })
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=sorted(PINNED), required=True)
    ap.add_argument("--official", type=Path, required=True, help="checkout at the pinned commit")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    repo, commit, rel = PINNED[args.source]
    root = args.official.resolve()
    check_checkout(root, commit, rel)
    mod = load(root / rel, f"official_{args.source}")
    cases = record_davis(mod) if args.source == "davis" else record_hfpl(mod, root / rel)
    import skimage

    record = {
        "source": {"repo": repo, "commit": commit, "files": [rel]},
        "recorder": "benchmarks/golden/record_contour.py",
        "environment": {"python": sys.version.split()[0], "numpy": np.__version__, "skimage": skimage.__version__},
        "cases": cases,
    }
    if args.source == "hfpl_contour":
        import cv2

        record["environment"]["opencv"] = cv2.__version__
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: " + ", ".join(c["name"] for c in cases))


if __name__ == "__main__":
    main()
