"""Time `prepare coco` on a generated COCO-like folder (no real COCO data is needed).

Usage: python benchmarks/prepare_coco_timing.py WORK_DIR [--images 1000] [--workers 2]
Images are 640x480 JPEGs with 7 polygon instances each (COCO 2014 averages about 7.3 instances per
image) and one crowd RLE in every tenth image. Prints seconds per image for writing and verifying;
the README extrapolates to COCO's 122,218 kept images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from prepare_fakes import rle_uncompressed  # noqa: E402

from tagseg.data.coco import COCO_CATEGORIES  # noqa: E402
from tagseg.data.prepare.coco import prepare_coco, verify_coco  # noqa: E402
from tagseg.data.prepare.verify import ListExpectation  # noqa: E402


def make(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    h, w = 480, 640
    photo = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    cats = [{"id": c, "name": name} for c, name in COCO_CATEGORIES]
    for split, count in (("train", n - n // 3), ("val", n // 3)):
        (root / f"{split}2014").mkdir(parents=True)
        images, anns = [], []
        for k in range(count):
            name = f"COCO_{split}2014_{k:012d}.jpg"
            Image.fromarray(photo).save(root / f"{split}2014" / name, quality=90)
            images.append({"id": k, "file_name": name, "height": h, "width": w})
            for j in range(7):
                cx, cy, r = rng.uniform(50, w - 50), rng.uniform(50, h - 50), rng.uniform(10, 120)
                t = np.sort(rng.uniform(0, 2 * np.pi, 24))
                poly = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).clip(0, [w - 1, h - 1]).ravel()
                anns.append({"id": len(anns) + 1, "image_id": k, "category_id": COCO_CATEGORIES[rng.integers(80)][0],
                             "iscrowd": 0, "segmentation": [poly.round(2).tolist()]})
            if k % 10 == 0:
                m = np.zeros((h, w), dtype=bool)
                m[100:300, 200:400] = True
                anns.append({"id": len(anns) + 1, "image_id": k, "category_id": 1, "iscrowd": 1,
                             "segmentation": rle_uncompressed(m)})
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}2014.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    work = Path(args.work)
    make(work / "coco", args.images)
    n_train, n_val = args.images - args.images // 3, args.images // 3
    exp = {"train": ListExpectation(n_train), "val": ListExpectation(n_val)}
    t0 = time.perf_counter()
    result = prepare_coco(work / "coco", work / "out", workers=args.workers, expected=exp, verify=False)
    t1 = time.perf_counter()
    verify_coco(work / "out", exp, workers=args.workers).raise_if_failed()
    t2 = time.perf_counter()
    n = args.images
    print(f"images {n}, written {result.written}, workers {args.workers}")
    print(f"masks + image links: {t1 - t0:.1f}s ({1000 * (t1 - t0) / n:.1f} ms/image)")
    print(f"verify: {t2 - t1:.1f}s ({1000 * (t2 - t1) / n:.1f} ms/image)")


if __name__ == "__main__":
    main()
