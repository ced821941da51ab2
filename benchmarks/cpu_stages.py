"""Per-stage CPU throughput on the VOC subset, one thread: the measured inputs of docs/SCALING.md.

    python benchmarks/cpu_stages.py --voc-root DATA [--threads 1] [--out benchmarks/results/cpu_stages.md]

Stages (each short; about 2-3 minutes in all with one thread):
- decode: JPEG read + RGB conversion (tagseg's reader), images/s;
- train: one TKP-PCL step (ViT-B/16 at 384 px, random init, every block trained, fp32) on a
  batch of 2 real images, images/s (one warm-up step excluded);
- pseudo: the patch classifier's merged probabilities of one real image at 960 px (no flip; a
  flip doubles the forward passes), images/s;
- CRF: the torch CRF and pydensecrf2 on the same images and probabilities, ms/image;
- eval: confusion matrix + contour F of a mask against its ground truth, images/s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from crf import noisy_probs  # noqa: E402
from gpu_check import CRF_PRESETS, dense_crf, image_seed, pydensecrf_available  # noqa: E402

from tagseg.config import load_config  # noqa: E402
from tagseg.engine.distributed import DistInfo  # noqa: E402
from tagseg.engine.loop import seed_everything  # noqa: E402
from tagseg.metrics.contour import ContourFAccumulator  # noqa: E402
from tagseg.metrics.miou import ConfusionMatrix  # noqa: E402
from tagseg.methods.families import get_family  # noqa: E402
from tagseg.inference.patch import patch_merged_probabilities  # noqa: E402
from tagseg.classify.trainer import classifier_task  # noqa: E402
from tagseg.utils.io import read_image  # noqa: E402


def ids_with_masks(root: Path, n: int) -> list[str]:
    return sorted(p.stem for p in (root / "SegmentationClassAug").glob("*.png"))[:n]


def gt_mask(root: Path, image_id: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(root / "SegmentationClassAug" / f"{image_id}.png"))


def decode(root: Path, ids: list[str]) -> float:
    t0 = time.perf_counter()
    for i in ids:
        read_image(root / "JPEGImages" / f"{i}.jpg")
    return len(ids) / (time.perf_counter() - t0)


def train(root: Path, batch: int = 2) -> tuple[float, float, float]:
    """(images/s, seconds per step, FLOPs per image) of the TKP-PCL step at 384 px on ``batch``
    real images; the first (warm-up) step is the one whose FLOPs are counted."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = load_config("tkpcl_voc", [f"data.root={root}", "data.train_split=train_aug", f"data.max_images={batch}",
                                    "data.num_workers=0", "model.pretrained=false", "train.warmup_epochs=0",
                                    "train.unfreeze_blocks=-1"])
    seed_everything(0)
    task = classifier_task(cfg)(DistInfo(), torch.device("cpu"))
    task.schedule.epoch_start(0, 0, task.optimizer)
    items = [task.dataset[i] for i in range(batch)]
    data = {k: torch.stack([it[k] for it in items]) for k in items[0] if torch.is_tensor(items[0][k])}
    times = []
    counter = FlopCounterMode(display=False)
    for step in range(2):
        t0 = time.perf_counter()
        with counter if step == 0 else contextlib.nullcontext():
            loss, _ = task.loss(task.model, task.model, data, 0)
            task.optimizer.zero_grad()
            loss.backward()
        task.optimizer.step()
        times.append(time.perf_counter() - t0)
    return batch / times[-1], times[-1], counter.get_total_flops() / batch


def train_items(root: Path, n: int = 20) -> float:
    """Training items/s of the data pipeline: decode, resize to 384, colour jitter, flips, view B."""
    cfg = load_config("tkpcl_voc", [f"data.root={root}", "data.train_split=train_aug", f"data.max_images={n}",
                                    "data.num_workers=0", "model.pretrained=false"])
    from tagseg.data.build import build_index
    from tagseg.data.views import TrainingViews

    index = build_index(cfg.data, cfg.data.train_split)
    views = TrainingViews(index, cfg.data.image_size, cfg.train.augment, seed=0, equivariance=True,
                          crop_prob=cfg.method.et_crop_prob, crop_size=cfg.method.et_crop_size,
                          crop_corners=cfg.method.et_crop_corners, align_corners=cfg.method.et_align_corners,
                          patch_size=get_family(cfg.model.family).patch_size)
    t0 = time.perf_counter()
    for i in range(len(views)):
        views[i]
    return len(views) / (time.perf_counter() - t0)


def pseudo(root: Path, image_id: str) -> tuple[float, float]:
    """(images/s, forward FLOPs per image) at 960 px without flip; FLOPs from a second, counted call."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = load_config("tkpcl_voc", ["model.pretrained=false", "pseudo.flip=false"])
    seed_everything(0)
    model = get_family(cfg.model.family).build(cfg, 21).eval()
    image = torch.from_numpy(read_image(root / "JPEGImages" / f"{image_id}.jpg").copy()).permute(2, 0, 1).float() / 255
    labels = torch.zeros(21)
    labels[0] = 1
    gt = gt_mask(root, image_id)
    labels[torch.from_numpy(np.unique(gt[gt != 255]).astype(np.int64))] = 1
    t0 = time.perf_counter()
    with torch.no_grad():
        patch_merged_probabilities(model, image, labels, cfg.pseudo)
    seconds = time.perf_counter() - t0
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        patch_merged_probabilities(model, image, labels, cfg.pseudo)
    return 1 / seconds, counter.get_total_flops()


def crf(root: Path, ids: list[str]) -> tuple[float, float | None]:
    params = CRF_PRESETS["patch"]
    t_torch = t_ref = 0.0
    for i in ids:
        image, gt = read_image(root / "JPEGImages" / f"{i}.jpg"), gt_mask(root, i)
        probs = noisy_probs(gt, image_seed(i))
        t0 = time.perf_counter()
        dense_crf(image, probs, params, backend="torch")
        t_torch += time.perf_counter() - t0
        if pydensecrf_available():
            t0 = time.perf_counter()
            dense_crf(image, probs, params, backend="pydensecrf")
            t_ref += time.perf_counter() - t0
    n = len(ids)
    return 1000 * t_torch / n, (1000 * t_ref / n if pydensecrf_available() else None)


def evaluate(root: Path, ids: list[str]) -> float:
    masks = [gt_mask(root, i) for i in ids]
    preds = [np.roll(m, 7, axis=1) for m in masks]  # a plausible, imperfect prediction
    confusion, contour = ConfusionMatrix(21), ContourFAccumulator(21)
    t0 = time.perf_counter()
    for p, g in zip(preds, masks):
        confusion.update(np.where(p == 255, 0, p), g)
        contour.update(np.where(p == 255, 0, p), g)
    return len(ids) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voc-root", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = args.voc_root
    ids = ids_with_masks(root, 100)
    rows = []
    t_all = time.perf_counter()
    rows.append(("decode (JPEG -> RGB array)", f"{decode(root, ids):.1f} img/s", f"{len(ids)} images"))
    rows.append(("train data: decode + resize 384 + augment + view B", f"{train_items(root):.1f} img/s",
                 "20 images (one data-loader worker's rate)"))
    ips, step, flops = train(root)
    rows.append(("train: TKP-PCL step, ViT-B/16 384 px, fp32", f"{ips:.3f} img/s",
                 f"batch 2, {step:.1f} s/step (second step); {flops / 1e9:.0f} GFLOP/img (fwd + bwd, counted)"))
    ips, flops = pseudo(root, ids[0])
    rows.append(("pseudo: ViT-B/16 at 960 px, no flip", f"{ips:.3f} img/s",
                 f"1 image; {flops / 1e9:.0f} GFLOP/img forward (counted); flip doubles the forward passes"))
    ms_torch, ms_ref = crf(root, ids[:5])
    rows.append(("CRF torch (CPU) / pydensecrf2", f"{ms_torch:.0f} / {ms_ref:.0f} ms/img" if ms_ref
                 else f"{ms_torch:.0f} ms/img / n/a", "5 images, preset patch, full size"))
    rows.append(("eval: confusion + contour F", f"{evaluate(root, ids):.1f} img/s", f"{len(ids)} images"))
    text = "\n".join([
        f"# CPU stages ({platform.machine()}, {args.threads} thread(s), torch {torch.__version__})", "",
        f"{time.perf_counter() - t_all:.0f} s in all, on a 2-core machine shared with other jobs (the "
        "throughputs are lower bounds).", "", "| stage | throughput | notes |", "| --- | --- | --- |",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows]]) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
