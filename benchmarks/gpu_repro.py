"""One-GPU reproduction of the whole pipeline on the VOC subset, both families, one command.

Two steps:

    # 1. re-encode the subset small enough to travel with a working tree (into an ignored folder)
    python benchmarks/gpu_repro.py shrink --voc ../shared/data/voc12-subset --out .data/voc12-small
    # 2. train, pseudo-label, (refine), segment and score the CAM family and TKP-PCL; write a table
    python benchmarks/gpu_repro.py run --data .data/voc12-small --work runs/gpu_repro --device cuda

``shrink`` writes every image with its longer side at most ``--side`` px (JPEG, ``--quality``),
its mask resized with nearest neighbour (PNG, palette kept), the split lists and the image-level
labels as ``cls_labels.json`` (from the subset's ``cls_labels.npy``), and prints the folder's size.

``run`` calls the ``tagseg`` command line for each family (``cam``: CAM baseline on ``cam_voc``;
``tkpcl``: top-K + PCE on ``tkpcl_voc``; both on EfficientNet-Lite0 with the packaged ImageNet
weights, ``model.weights=lite``, since a lent GPU machine has no internet):

    train  ->  pseudo (train_aug, + dense CRF)  ->  eval of the pseudo-masks on train_aug
           ->  refine (IRN; PAR with --tiny) -> eval  ->  segment train on the refined masks -> segment eval on val

plus DeepLab on the ground truth (the ceiling). Each step is skipped when its output exists, so an
interrupted run continues. The table goes to ``<work>/results.md`` with every command's wall time.

**Refinement step**: ``tagseg refine --method irn`` (the published pipeline's random walk; ``--tiny``
uses the training-free PAR to stay short), scored on train_aug; DeepLab trains on its masks.

DeepLab follows the ``segment_voc_cpu`` recipe (AdamW 2e-4, head ×10, backbone BatchNorm
training, ASPP rates scaled to the crop) at 321-px crops. The 10-minute budget on one H100 has not
been timed yet: the first GPU run should report its step times and trim epochs if needed.

``--tiny`` shrinks every setting to a smoke test (a few images, one epoch, small sizes) for CPUs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # benchmarks/cli_steps.py
from cli_steps import Steps  # noqa: E402

SPLITS = ("train_aug", "val")


# ----------------------------------------------------------------------------------------- shrink


def shrink(src: Path, out: Path, side: int = 320, quality: int = 90, max_images: int = 0) -> int:
    """Re-encode the VOC subset at ``src`` into ``out`` (longer side <= ``side``); returns bytes written.
    ``max_images``: the first N ids of each split (0 = all)."""
    sys.path.insert(0, str(REPO / "src"))
    from tagseg.data.classes import VOC_CLASSES
    from tagseg.data.image_labels import write_image_labels
    from tagseg.data.voc import load_cls_labels
    from tagseg.utils.io import write_text
    from tagseg.utils.safe_paths import check_id

    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    table = load_cls_labels(src / "cls_labels.npy")
    labels: dict[str, list[int]] = {}
    for split in SPLITS:
        ids = (src / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        ids = ids[:max_images] if max_images else ids
        for i in ids:
            check_id(i, f"{split}.txt")
            with Image.open(src / "JPEGImages" / f"{i}.jpg") as im:
                im = im.convert("RGB")
                w, h = im.size
                scale = min(1.0, side / max(w, h))
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
                im.resize(size, Image.BICUBIC).save(out / "JPEGImages" / f"{i}.jpg", quality=quality)
            with Image.open(src / "SegmentationClassAug" / f"{i}.png") as m:
                small = m.resize(size, Image.NEAREST)
                small.save(out / "SegmentationClassAug" / f"{i}.png", optimize=True)
            labels[i] = [int(k) for k in np.flatnonzero(table[i][1:]) + 1]
        write_text(out / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(ids) + "\n")
    write_image_labels(out / "cls_labels.json", VOC_CLASSES, labels)
    write_text(out / "README.md", f"VOC subset re-encoded by benchmarks/gpu_repro.py shrink: longer side <= {side} px, "
                                  f"JPEG quality {quality}, masks nearest-neighbour. Not for committing.\n")
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


# -------------------------------------------------------------------------------------------- run


def settings(tiny: bool) -> dict:
    if tiny:
        return {"max_images": 4, "size": 64, "cam_epochs": 1, "patch_epochs": 1, "batch": 2, "seg_epochs": 1,
                "crop": 64, "seg_batch": 2, "workers": 0, "refine": "par"}
    return {"max_images": 0, "size": 320, "cam_epochs": 5, "patch_epochs": 5, "batch": 16, "seg_epochs": 20,
            "crop": 321, "seg_batch": 16, "workers": 4, "refine": "irn"}


def family_overrides(family: str, data: Path, s: dict, device: str) -> tuple[str, list[str]]:
    common = [f"data.root={data}", "data.dataset=voc", "data.train_split=train_aug", "data.pseudo_split=train_aug",
              f"data.max_images={s['max_images']}", f"data.num_workers={s['workers']}", f"device={device}",
              "model.encoder=tf_efficientnet_lite0", "model.weights=lite", "model.pretrained=false",
              f"data.image_size={s['size']}", f"pseudo.image_size={s['size']}", f"train.batch_size={s['batch']}"]
    if family == "cam":
        return "cam_voc", [*common, f"train.epochs={s['cam_epochs']}", "train.warmup_epochs=1"]
    return "tkpcl_voc", [*common, f"train.epochs={s['patch_epochs']}", f"train.warmup_epochs={s['patch_epochs']}",
                         "method.pooling=topk", "method.pce_weight=0.01", "model.cnn_grid=dilated",
                         f"method.et_crop_size={max(16, s['size'] // 3 // 16 * 16)}"]


def segment_overrides(data: Path, masks: str, s: dict, device: str) -> list[str]:
    sys.path.insert(0, str(REPO / "src"))
    from tagseg.segment.models import rates_for_crop

    rates = ",".join(str(r) for r in rates_for_crop("deeplabv3plus", 16, s["crop"]))
    return [f"data.root={data}", "data.dataset=voc", "data.train_split=train_aug", "data.val_split=val",
            f"data.max_images={s['max_images']}", f"data.num_workers={s['workers']}", f"device={device}",
            f"segment.masks_dir={masks}", "model.head=deeplabv3plus", "model.encoder=tf_efficientnet_lite0",
            "model.weights=lite", "model.pretrained=false", "model.output_stride=16", f"model.aspp_rates=[{rates}]",
            f"train.epochs={s['seg_epochs']}", f"train.batch_size={s['seg_batch']}", "train.optimizer=adamw",
            "train.lr=2e-4", "train.head_lr_mult=10", "train.weight_decay=1e-4", "train.freeze_backbone_bn=false", f"augment.crop_size={s['crop']}",
            "inference.scales=[1.0]", "inference.flip=true", "inference.crf=none"]


def refine_step(step: Steps, family: str, run: Path, method: str) -> Path:
    """``tagseg refine`` on train_aug and its score; returns the refined masks' folder."""
    out = run / "refine" / method / "train_aug"
    step(f"{family} refine {method}", out / "masks", "refine", "--run", str(run), "--method", method,
         "--split", "train_aug")
    step(f"{family} eval {method}", out / "eval.json", "eval", "--run", str(run), "--split", "train_aug",
         "--pred", str(out / "masks"), "--out", str(out / "eval.json"))
    return out


def miou(path: Path) -> float:
    return 100 * json.loads(path.read_text())["miou"]


def run(data: Path, work: Path, device: str, tiny: bool) -> str:
    s = settings(tiny)
    step = Steps()
    rows = []
    for family in ("cam", "tkpcl"):
        config, over = family_overrides(family, data, s, device)
        fam = work / family
        step(f"{family} train", fam / "train" / "model.safetensors", "train", "--config", config,
             "--out", str(fam / "train"), *over)
        pseudo = fam / "train" / "pseudo" / "train_aug"
        step(f"{family} pseudo", pseudo / "crf" / "masks", "pseudo", "--run", str(fam / "train"), "--split", "train_aug",
             "--crf", "torch")
        step(f"{family} eval seed", pseudo / "eval.json", "eval", "--run", str(fam / "train"), "--split", "train_aug",
             "--pred", str(pseudo / "masks"), "--out", str(pseudo / "eval.json"))
        step(f"{family} eval crf", pseudo / "crf" / "eval.json", "eval", "--run", str(fam / "train"), "--split",
             "train_aug", "--pred", str(pseudo / "crf" / "masks"), "--out", str(pseudo / "crf" / "eval.json"))
        refined = refine_step(step, family, fam / "train", s["refine"])
        step(f"{family} segment", fam / "seg" / "model.safetensors", "segment", "train", "--config", "segment_voc",
             "--out", str(fam / "seg"), *segment_overrides(data, str(refined / "masks"), s, device))
        step(f"{family} segment eval", fam / "seg" / "eval.json", "segment", "eval", "--run", str(fam / "seg"),
             "--split", "val")
        rows.append((family, miou(pseudo / "eval.json"), miou(pseudo / "crf" / "eval.json"), miou(refined / "eval.json"),
                     miou(fam / "seg" / "eval.json")))
    step("gt segment", work / "gt" / "model.safetensors", "segment", "train", "--config", "segment_voc",
         "--out", str(work / "gt"), *segment_overrides(data, "gt", s, device))
    step("gt segment eval", work / "gt" / "eval.json", "segment", "eval", "--run", str(work / "gt"), "--split", "val")
    ceiling = miou(work / "gt" / "eval.json")
    lines = [f"| family | seed (train_aug) | +CRF (train_aug) | refined, {s['refine']} (train_aug) "
             f"| DeepLab on refined (val) | vs ceiling |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {f} | {a:.1f} | {b:.1f} | {r:.1f} | {d:.1f} | {d / ceiling if ceiling else float('nan'):.2f} |"
              for f, a, b, r, d in rows]
    lines += [f"| ground truth (ceiling) | – | – | – | {ceiling:.1f} | 1.00 |", "",
              f"Settings: {json.dumps(s)}; device {device}; data {data}.", "", *step.table()]
    text = "\n".join(lines) + "\n"
    sys.path.insert(0, str(REPO / "src"))
    from tagseg.utils.io import write_text

    write_text(work / "results.md", text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("shrink", help="re-encode the VOC subset into a small folder")
    a.add_argument("--voc", type=Path, required=True)
    a.add_argument("--out", type=Path, default=REPO / ".data" / "voc12-small")
    a.add_argument("--side", type=int, default=320)
    a.add_argument("--quality", type=int, default=90)
    a.add_argument("--max-images", type=int, default=0, help="first N ids of each split (0 = all)")
    b = sub.add_parser("run", help="the whole pipeline, both families, and the results table")
    b.add_argument("--data", type=Path, default=REPO / ".data" / "voc12-small")
    b.add_argument("--work", type=Path, default=REPO / "runs" / "gpu_repro")
    b.add_argument("--device", default="cuda")
    b.add_argument("--tiny", action="store_true", help="smoke-test settings (a few images, 1 epoch)")
    args = p.parse_args(argv)
    if args.cmd == "shrink":
        if args.out.exists() and any(args.out.iterdir()):
            sys.exit(f"{args.out} is not empty: remove it first or choose another --out")
        size = shrink(args.voc, args.out, args.side, args.quality, args.max_images)
        print(f"{args.out}: {size / 2 ** 20:.1f} MiB")
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    print(run(args.data.resolve(), args.work.resolve(), args.device, args.tiny))
    return 0


if __name__ == "__main__":
    sys.exit(main())
