"""``tagseg prepare voc|coco``: from the downloaded archives to a checked dataset tree."""

from __future__ import annotations

import argparse
from pathlib import Path

from tagseg.errors import TagsegError

VOC_EPILOG = (
    "Where to get the inputs (tagseg never downloads them): VOCtrainval_11-May-2012.tar from the PASCAL VOC "
    "2012 challenge page, and benchmark.tgz from the Semantic Boundaries Dataset (SBD) page of the Berkeley "
    "vision group. Pass the archives as downloaded, or their extracted folders. The result is checked: "
    "10,582 / 1,464 / 1,449 ids in train_aug / train / val, train_aug and val disjoint, every id with an image "
    "and a mask of the same size, mask values 0..20 or 255, and the lists equal to the standard ones (sha256)."
)
COCO_EPILOG = (
    "Where to get the inputs (tagseg never downloads them): train2014.zip, val2014.zip and "
    "annotations_trainval2014.zip from the COCO dataset's download page; put the three zips in one folder "
    "(read in place), or unzip them there (train2014/, val2014/, annotations/). Mask settings as key=value: crowd=ignore|background|class "
    "(default ignore: 255), overlap=smaller|order (default smaller: the smaller instance wins), "
    "labels_include_crowd=true|false, images=link|copy|symlink. The result is checked: 82,081 / 40,137 "
    "ids in train / val (sha256 of the standard lists), val_part when present, images and masks."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register ``prepare`` with its subcommands ``voc`` and ``coco``."""
    p = subparsers.add_parser("prepare", help="build VOC 2012 + SBD or COCO 2014 from the downloaded archives, "
                                              "and verify it")
    sub = p.add_subparsers(dest="prepare_command", required=True)

    v = sub.add_parser("voc", help="VOC 2012 + SBD -> SegmentationClassAug, train_aug/train/val lists, labels",
                       description="Build PASCAL VOC 2012 + SBD (SegmentationClassAug) and verify it.",
                       epilog=VOC_EPILOG)
    v.add_argument("--voc", help="VOCtrainval_11-May-2012.tar or its extracted VOC2012 folder")
    v.add_argument("--sbd", help="SBD's benchmark.tgz or its extracted benchmark_RELEASE folder")
    v.add_argument("--out", required=True, help="output folder (the data.root of the voc configs)")
    v.add_argument("--labels-from", choices=["auto", "xml", "masks"], default="auto",
                   help="image-level labels from VOC's annotation XML (auto: XML where present, else the mask)")
    v.add_argument("--write-cls-labels-npy", action="store_true",
                   help="also write the field's cls_labels.npy (a pickled dict) for other tools")
    _common(v)

    c = sub.add_parser("coco", help="COCO 2014 -> 81-class semantic masks, train/val/val_part lists, labels",
                       description="Build COCO 2014 semantic masks and lists, and verify them.", epilog=COCO_EPILOG)
    c.add_argument("--coco", help="folder with train2014/, val2014/ and annotations/instances_{train,val}2014.json, "
                                  "or with the downloads train2014.zip, val2014.zip, annotations_trainval2014.zip")
    c.add_argument("--out", required=True, help="output folder (the data.root of the coco configs)")
    c.add_argument("--keep-unannotated", action="store_true",
                   help="keep images without annotations as pure background (lists then differ from the standard)")
    c.add_argument("--val-part", help="a val_part list (one id per line); default: derived, the first 5,000 "
                   "ids of the sorted standard val list")
    c.add_argument("overrides", nargs="*", metavar="key=value", help="mask settings, e.g. crowd=background")
    _common(c)
    p.set_defaults(handler=cmd_prepare)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=0, help="CPU processes (default 0: all cores)")
    p.add_argument("--check-only", action="store_true", help="only verify an existing --out tree")
    p.add_argument("--custom", action="store_true",
                   help="a partial or custom set in the dataset's layout: verify its structure (lists, overlaps, "
                        "every image with a mask of its size, labels), not the standard lists' counts and checksums")
    p.add_argument("--max-file-mb", type=float, metavar="MB",
                   help="largest image / mask / list file taken from a source (default 64); a decompression-bomb "
                        "guard checked before anything is written")
    p.add_argument("--max-archive-gb", type=float, metavar="GB",
                   help="largest total taken from one archive (default 64)")
    p.add_argument("--max-annotation-mb", type=float, metavar="MB",
                   help="largest annotation JSON read (default 512)")


def _print_report(report, seconds: float) -> None:
    print(report.summary())
    print(f"verified in {seconds:.1f}s: OK")


def cmd_prepare(args: argparse.Namespace) -> int:
    """Run ``tagseg prepare voc`` or ``tagseg prepare coco``."""
    import time

    if not 0 <= args.workers <= 1024:
        raise TagsegError(f"--workers must be 0..1024 (0: all cores), got {args.workers}")
    from tagseg.data.prepare.archives import ExtractionLimits

    limits = ExtractionLimits.from_options(args.max_file_mb, args.max_archive_gb, args.max_annotation_mb)
    out = Path(args.out)
    start = time.perf_counter()
    if args.prepare_command == "voc":
        from tagseg.data.prepare.voc import WHERE_TO_GET, custom_expectations, prepare_voc, verify_voc

        if args.check_only:
            report = verify_voc(out, custom_expectations(out) if args.custom else None, workers=args.workers)
            report.raise_if_failed()
            _print_report(report, time.perf_counter() - start)
            return 0
        if not args.voc or not (args.sbd or args.custom):
            raise TagsegError(f"give --voc and --sbd (--voc alone with --custom), or --check-only. {WHERE_TO_GET}")
        result = prepare_voc(args.voc, args.sbd, out, workers=args.workers, labels_from=args.labels_from,
                             write_cls_labels_npy=args.write_cls_labels_npy, limits=limits, custom=args.custom)
    else:
        from tagseg.config import load_config
        from tagseg.data.prepare.coco import (WHERE_TO_GET, CocoMaskConfig, coco_expectations, prepare_coco,
                                              validate_mask_config, verify_coco)

        overrides = [*args.overrides, *(["keep_unannotated=true"] if args.keep_unannotated else [])]
        cfg = load_config(None, overrides, schema_class=CocoMaskConfig, validate=validate_mask_config)
        expected = coco_expectations(cfg, custom=args.custom)
        if args.check_only:
            report = verify_coco(out, expected, workers=args.workers)
            report.raise_if_failed()
            _print_report(report, time.perf_counter() - start)
            return 0
        if not args.coco:
            raise TagsegError(f"give --coco (or --check-only). {WHERE_TO_GET}")
        result = prepare_coco(args.coco, out, cfg, workers=args.workers, val_part=args.val_part, limits=limits,
                              expected=expected, custom=args.custom)
    for note in result.notes:
        print(f"note: {note}")
    print(f"{result.written} files written, {result.skipped} already there -> {out}")
    _print_report(result.report, result.seconds)
    return 0

