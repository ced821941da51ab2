"""Time `prepare voc` on the VOC subset laid out as the VOC 2012 + SBD downloads (archives).

Usage: python benchmarks/prepare_voc_timing.py SUBSET_DIR WORK_DIR [--workers N]
Prints seconds per phase and per image; the README extrapolates to the full 17,125 + 11,355 files.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from prepare_fakes import layout_subset_as_downloads  # noqa: E402

from tagseg.data.prepare.verify import ListExpectation, list_sha256  # noqa: E402
from tagseg.data.prepare.voc import prepare_voc, verify_voc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("subset")
    ap.add_argument("work")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    subset, work = Path(args.subset), Path(args.work)
    n_train = len((subset / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split())
    n_val = len((subset / "ImageSets" / "Segmentation" / "val.txt").read_text().split())
    voc, sbd, expected = layout_subset_as_downloads(subset, work / "dl", n_train, n_val, archives=True)
    exp = {k: ListExpectation(len(v), list_sha256(v)) for k, v in expected.items()}
    t0 = time.perf_counter()
    result = prepare_voc(voc, sbd, work / "out", workers=args.workers, expected=exp, verify=False)
    t1 = time.perf_counter()
    report = verify_voc(work / "out", exp, workers=args.workers)
    t2 = time.perf_counter()
    report.raise_if_failed()
    again = prepare_voc(voc, sbd, work / "out", workers=args.workers, expected=exp, verify=False)
    t3 = time.perf_counter()
    n = n_train + n_val
    print(f"images {n}, files written {result.written}, workers {args.workers}")
    print(f"archive sizes: VOC tar {voc.stat().st_size / 1e6:.1f} MB, SBD tgz {sbd.stat().st_size / 1e6:.1f} MB")
    print(f"convert + write: {t1 - t0:.1f}s ({1000 * (t1 - t0) / n:.1f} ms/image)")
    print(f"verify: {t2 - t1:.1f}s ({1000 * (t2 - t1) / n:.1f} ms/image)")
    print(f"re-run (all skipped): {t3 - t2:.1f}s, {again.written} written, {again.skipped} skipped")


if __name__ == "__main__":
    main()
