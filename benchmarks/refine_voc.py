"""Refinement on the VOC subset: seed / +CRF / PAR / PSA / IRN pseudo-mask mIoU on `train_aug` and
`val`, every threshold chosen on `val`, cached and resumable.

One run of the CAM family (``--family cam``: EfficientNet-Lite0, `cam_voc` + the overrides below) or of
TKP-PCL (``--family tkpcl``: `tkpcl_voc`, its class probabilities as seeds) is trained into
``<work>/<family>-seed<s>``; then, on the first ``--images`` ids of each split:

1. the seed's background threshold is swept on `val` (CAM maps only; `tagseg eval --sweep-bg` logic)
   and used on both splits; seed and dense-CRF masks are written by the pseudo stage and scored;
2. PAR (training-free) is run and scored;
3. IRN and PSA heads are trained on the labels of the first ``--head-images`` `train_aug` images,
   the walk's background threshold (IRN) / α (PSA) swept on `val` from one walk per image (the walk
   does not depend on either), the best used on `train_aug` through the refine stage.

Every step's result is a JSON file under the work folder; a later call reuses it (``--only`` picks
steps). The table goes to ``--out``. ``--irn-labels FG:BG`` trains IRN on other label thresholds,
kept apart under ``<work>/<family>-seed<s>/irn-labels<FG>_<BG>``. ``--cam-model FILE`` refines the
seeds of a network trained elsewhere (e.g. by benchmarks/classifier_fit.py) instead of training one:
the file is copied into the work folder once and its sha256 recorded in ``bench/cam_model.json``.

The budget of benchmarks/results/refine_voc.md::

    A="--voc DATA --work runs/refine_voc --train-images 200 --images 50 --head-images 100 --size 160 \
       --epochs 2 --head-epochs 20 --psa-epochs 2 --head-batch 8 --irn-crop 192 --psa-crop 192 --threads 1"
    python benchmarks/refine_voc.py $A --seed 0 --only seed par irn
    python benchmarks/refine_voc.py $A --family tkpcl --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch

import numpy as np

from tagseg.classify.trainer import Trainer
from tagseg.config import load_config
from tagseg.data.build import build_index
from tagseg.evaluate.bg_sweep import sweep_background_thresholds
from tagseg.evaluate.folder import evaluate_folder
from tagseg.inference.loading import load_trained_model
from tagseg.methods.families import get_family
from tagseg.metrics.miou import ConfusionMatrix, iou_from_matrix
from tagseg.metrics.predict_and_score import predict_and_score
from tagseg.pseudo.generate import generate_pseudo_masks
from tagseg.refine.random_walk import walk_labels
from tagseg.refine.run import refine_dir, refine_run, train_refine_net
from tagseg.refine.seeds import seeds_of
from tagseg.refine.stage import irn_walk, psa_walk
from tagseg.refine.train import load_refine_net
from tagseg.runner import RunOptions
from tagseg.utils.io import read_image, write_json, write_text

BG = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55)
# the walk averages scores within regions and the result is divided by its maximum, so its best
# background threshold lies above the seed's: the grid reaches 0.85
IRN_BG = (0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85)
PSA_ALPHA = (4.0, 6.0, 8.0, 16.0)
STEPS = ("seed", "par", "irn", "psa")
FAMILIES = {"cam": "cam_voc", "tkpcl": "tkpcl_voc"}


def cam_config(args, seed: int, split_images: int | None = None, extra=()):
    family = getattr(args, "family", "cam")
    if family == "tkpcl":  # L_ET's crop a third of the training size, as benchmarks/addons_voc.py
        fam = [f"method.et_crop_size={max(16, args.size // 3 // 16 * 16)}"]
    else:
        fam = ["pseudo.crf_preset=cam"]
        if getattr(args, "cam_recipe", "pinned") == "pinned":
            # the CAM recipe the cached rows were measured with: cam_voc before it shipped fixed
            # BatchNorm statistics and a learnt class prior (benchmarks/results/classifier_fit.md)
            fam += ["model.bn=adapt", "cam.class_prior=none"]
    over = [f"data.root={args.voc}", "data.dataset=voc", "data.train_split=train_aug", "data.pseudo_split=train_aug",
            "data.num_workers=0", f"train.cpu_threads={args.threads}", "model.weights=lite",
            "model.encoder=tf_efficientnet_lite0", f"data.image_size={args.size}", f"train.epochs={args.epochs}",
            "train.warmup_epochs=1", "train.unfreeze_blocks=3", "train.batch_size=8", f"pseudo.image_size={args.size}",
            "pseudo.scales=[1.0]", "pseudo.flip=false", "pseudo.crf=pydensecrf", *fam,
            "device=cpu", f"seed={seed}", f"name=refine-voc-{family}{seed}",
            f"refine.irn.crop_size={args.irn_crop}", f"refine.irn.epochs={args.head_epochs}",
            f"refine.irn.batch_size={args.head_batch}", f"refine.psa.crop_size={args.psa_crop}",
            f"refine.psa.epochs={getattr(args, 'psa_epochs', None) or args.head_epochs}",
            f"refine.psa.batch_size={args.head_batch}",
            "refine.crf=pydensecrf"]
    if getattr(args, "irn_labels", None):
        fg, bg = args.irn_labels.split(":")
        over += [f"refine.irn.fg_thres={fg}", f"refine.irn.bg_thres={bg}"]
    if split_images:
        over.append(f"data.max_images={split_images}")
    return load_config(FAMILIES[family], [*over, *extra])


def adopt_model(source: Path, work: Path) -> dict:
    """Copy the trained network ``source`` into ``work`` (once, atomically) and record where it came
    from; refuses a work folder that already holds another network."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    record_path = work / "bench" / "cam_model.json"
    target = work / "model.safetensors"
    if target.is_file():
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        if record.get("sha256") != digest:
            raise SystemExit(f"{work} already holds another network than {source}: use another --work")
        return record
    record = {"source": str(source), "sha256": digest}
    write_json(record_path, record)  # first: a copy interrupted after it is redone by the next call
    tmp = work / ".model.safetensors.tmp"
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return record


def cached(path: Path, fn, images: int):
    """``fn()``'s result, computed once into ``path``; ``images`` (--images) is recorded with it and a
    cached result of another ``--images`` is refused (files from before the record are trusted)."""
    if path.is_file():
        result = json.loads(path.read_text())
        if result.get("images_per_split", images) != images:
            raise SystemExit(f"{path} was computed with --images {result['images_per_split']}, not {images}: "
                             "use another --work")
        return result
    t0 = time.time()
    result = fn()
    result["seconds"] = round(time.time() - t0, 1)
    result["images_per_split"] = images
    write_json(path, result)
    return result


def score(folder: Path, index) -> dict:
    s = evaluate_folder(folder, index, progress=False, contour=False)
    return {"miou": s["miou"], "images": s["images"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voc", required=True)
    ap.add_argument("--work", type=Path, default=Path("runs/refine_voc"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--images", type=int, default=300, help="first N ids of each split are refined and scored")
    ap.add_argument("--train-images", type=int, default=None, help="CAM training images (default: all)")
    ap.add_argument("--head-images", type=int, default=300, help="train_aug images the IRN / PSA heads learn from")
    ap.add_argument("--head-epochs", type=int, default=3)
    ap.add_argument("--psa-epochs", type=int, default=None, help="AffinityNet's epochs (default: --head-epochs)")
    ap.add_argument("--head-batch", type=int, default=8)
    ap.add_argument("--irn-crop", type=int, default=256)
    ap.add_argument("--psa-crop", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--family", choices=sorted(FAMILIES), default="cam",
                    help="cam: the CAM family (cam_voc); tkpcl: TKP-PCL (tkpcl_voc, class probabilities as seeds)")
    ap.add_argument("--cam-recipe", choices=("pinned", "shipped"), default="pinned",
                    help="CAM family: pinned = BatchNorm adapted, no class prior (the recipe of the cached rows); "
                         "shipped = cam_voc as shipped (fixed BatchNorm + class prior); use its own --work")
    ap.add_argument("--irn-labels", default=None, metavar="FG:BG",
                    help="IRN's label thresholds refine.irn.fg_thres:bg_thres (default: the official 0.30:0.05)")
    ap.add_argument("--cam-model", type=Path, default=None,
                    help="refine the seeds of this trained network (a model.safetensors) instead of training one")
    ap.add_argument("--only", nargs="*", choices=STEPS, default=list(STEPS))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = args.work / f"{args.family}-seed{args.seed}"
    cfg = cam_config(args, args.seed, args.train_images)
    if args.cam_model is not None:
        print(f"network: {adopt_model(args.cam_model, work)}", flush=True)
    if not (work / "model.safetensors").is_file():
        Trainer(cfg, work, resume=(work / "checkpoints").is_dir(), show_progress=False).fit()
    model, _, info = load_trained_model(work / "model.safetensors")
    family = info["family"]
    cam_maps = get_family(family).cam_maps
    res: dict = {}

    # 1. seed threshold on val (CAM maps only; the patch family's masks are an argmax), seed and CRF masks
    val_cfg = cam_config(args, args.seed, args.images)
    val_index = build_index(val_cfg.data, "val")
    bg = None
    if cam_maps:
        sweep = cached(work / "bench" / "seed_bg_sweep_val.json", lambda: {
            "best": sweep_background_thresholds(model, val_index, val_cfg.pseudo, BG, progress=False,
                                                contour=False)["best"]}, args.images)
        bg = sweep["best"]["threshold"]
        print(f"seed background threshold (val): {bg}", flush=True)
    bg_over = [f"pseudo.bg_threshold={bg}"] if bg is not None else []
    for split in ("val", "train_aug"):
        scfg = cam_config(args, args.seed, args.images, bg_over)
        index = build_index(scfg.data, split)
        out = work / "bench" / "pseudo" / split
        if "seed" in args.only:
            def seed_and_crf():
                generate_pseudo_masks(model, index, out, scfg.pseudo, RunOptions(progress=False), family=family)
                return {"seed": score(out / "masks", index), "crf": score(out / "crf" / "masks", index)}
            res[f"seed-{split}"] = cached(work / "bench" / f"seed_crf_{split}.json", seed_and_crf, args.images)
            print(split, res[f"seed-{split}"], flush=True)
        if "par" in args.only:
            def par_run():
                _, masks = refine_run(model, scfg, work, "par", family, split, progress=False,
                                      out=work / "bench" / "par" / split)
                return score(masks, index)
            res[f"par-{split}"] = cached(work / "bench" / f"par_{split}.json", par_run, args.images)
            print(split, "par", res[f"par-{split}"], flush=True)

    # 3. IRN / PSA: heads trained on the first --head-images train_aug images; the walk's background
    # threshold (IRN) / alpha (PSA) chosen on val from one walk per image (the walk does not depend on it)
    for method, key, grid in (("irn", "refine.irn.bg_thres_walk", IRN_BG), ("psa", "refine.psa.walk_alpha", PSA_ALPHA)):
        if method not in args.only:
            continue
        # IRN with other label thresholds than the official ones keeps its head and results apart
        tag = f"-labels{args.irn_labels.replace(':', '_')}" if method == "irn" and args.irn_labels else ""
        hrun = work / f"{method}{tag}" if tag else work
        head_cfg = cam_config(args, args.seed, args.head_images, bg_over)
        t0 = time.time()
        if not (refine_dir(hrun, method) / "model.safetensors").is_file():
            train_refine_net(model, head_cfg, hrun, method, family, "cpu", resume=True, progress=False)
            write_json(work / "bench" / f"{method}{tag}_head_seconds.json", {"seconds": round(time.time() - t0, 1)})
        vcfg = cam_config(args, args.seed, args.images, bg_over)
        choice = cached(work / "bench" / f"{method}{tag}_choice_val.json",
                        lambda: choose_walk_setting(model, vcfg, hrun, method, family, key, grid), args.images)
        res[f"{method}-choice"] = choice
        res[f"{method}-val"] = {"miou": max(choice["scores"].values())}

        def train_split():
            tcfg = cam_config(args, args.seed, args.images, [*bg_over, f"{key}={choice['best']}"])
            _, masks = refine_run(model, tcfg, hrun, method, family, "train_aug", progress=False,
                                  out=work / "bench" / f"{method}{tag}" / "train_aug")
            return score(masks, build_index(tcfg.data, "train_aug"))
        res[f"{method}-train_aug"] = cached(work / "bench" / f"{method}{tag}_train_aug.json", train_split, args.images)
        print(method, res[f"{method}-val"], res[f"{method}-train_aug"], flush=True)

    write_json(work / "bench" / "summary.json", res)
    if args.out:
        write_text(args.out, table(res, args, bg))
    print(table(res, args, bg))
    return 0


@torch.no_grad()
def choose_walk_setting(model, cfg, work: Path, method: str, family: str, key: str, grid) -> dict:
    """mIoU on ``cfg``'s val images for every value of ``grid`` (IRN: the walk's background threshold;
    PSA: the background's α), from one walk per image; the best value (ties: the first)."""
    net = load_refine_net(model, cfg, refine_dir(work, method) / "model.safetensors", method, "cpu")
    index = build_index(cfg.data, "val")
    k = index.num_classes
    cms = {v: ConfusionMatrix(k) for v in grid}

    def predict(rec, gt: np.ndarray) -> dict:
        image = read_image(rec.image_path)
        seeds = seeds_of(model, image, rec.labels, cfg.pseudo, family)
        if not len(seeds.keys):
            return {v: np.zeros(gt.shape, np.uint8) for v in grid}
        if method == "irn":
            up = irn_walk(net, image, seeds, cfg.refine, "cpu")
            return {v: walk_labels(up, seeds.keys, v).numpy().astype(np.uint8) for v in grid}
        bgs, fg = psa_walk(net, image, seeds, cfg.refine, "cpu", grid)
        keys = torch.from_numpy(np.concatenate([[0], seeds.keys]))
        return {v: keys[torch.cat([bgs[i:i + 1], fg]).argmax(0)].numpy().astype(np.uint8) for i, v in enumerate(grid)}

    predict_and_score(index.records, predict, cms, k)
    scores = {str(v): float(np.nanmean(iou_from_matrix(cm.matrix))) for v, cm in cms.items()}
    best = max(scores, key=scores.get)
    return {"key": key, "scores": scores, "best": float(best)}


def table(res: dict, args, bg: float) -> str:
    def cell(key, sub=None):
        r = res.get(key)
        if r is None:
            return "not run"
        r = r[sub] if sub else r
        return f"{100 * r['miou']:.1f}"
    rows = [("seed (CAM, bg chosen on val)", "seed-train_aug", "seed-val", "seed"),
            ("+ dense CRF", "seed-train_aug", "seed-val", "crf"),
            ("PAR", "par-train_aug", "par-val", None),
            ("PSA (AffinityNet)", "psa-train_aug", "psa-val", None),
            ("IRN", "irn-train_aug", "irn-val", None)]

    def images(split: str) -> str:  # what the cells scored: --images caps a split, it does not fill it
        entries = [r for key, r in res.items() if key.endswith(split) and isinstance(r, dict)]
        entries += [v for r in entries for v in r.values() if isinstance(v, dict)]  # seed / crf inside seed-<split>
        n = {r.get("images") for r in entries} - {None}
        return f"{max(n)} images" if n else f"first {args.images}"
    lines = [f"| mask | train_aug ({images('-train_aug')}) | val ({images('-val')}) |", "|---|---|---|"]
    for name, tr, va, sub in rows:
        lines.append(f"| {name} | {cell(tr, sub)} | {cell(va, sub)} |")
    return "\n".join(lines) + f"\n\nseed background threshold (val): {bg}\n"


if __name__ == "__main__":
    raise SystemExit(main())
