"""Add-ons (PPC, HFPL, RCA) on the CAM family and on TKP-PCL, on real VOC images.

Backbone: ImageNet-pretrained EfficientNet-Lite0 (``model.encoder=tf_efficientnet_lite0
model.weights=lite``). Each variant is trained on the first ``--max-images`` images of the VOC
subset's ``train_aug`` list (image-level labels only) and its pseudo-masks for those same images
are scored against the ground-truth masks: mIoU, contour F and J&F (METHODS.md §6), mean ± std
over seeds. Variants:

    cam              CAM baseline (GAP + soft-margin loss), lite0 dilated to stride 16
    cam+ppc          + pixel-to-prototype contrast
    cam+isl          + importance sampling loss
    cam+isl+fsl      + importance sampling + feature similarity loss
    cam+rca          + regional contrast and aggregation (pseudo-masks from the aggregation head)
    seam             SEAM (model.family=seam) on the same recipe as cam: two views, PCM, ER + ECR;
                     pseudo-masks from the PCM-revised maps
    seam+ppc         + PPC as usr922/wseg places it (prototypes from each view's revised maps)
    seam+isl / seam+fsl   + HFPL's ISL / FSL as arvijj/hfpl places them on SEAM
    tkpcl            TKP-PCL (top-K + PCE + L_ET), lite0 cut at stride 16
    tkpcl+ppc / tkpcl+isl / tkpcl+rca   the add-ons that apply to the patch family

Schedule (sized for about an hour on 2 CPU cores with the defaults): ``--epochs`` epochs, the
first with the backbone frozen (lr 1e-3), then the last ``--unfreeze`` block groups of the
backbone at lr 1e-4. The backbone must train for PPC and RCA's contrast to matter on the CAM
family: their gradients reach the CAM head only through the backbone features. CAM
pseudo-masks use the default background threshold 0.25; the best threshold of a sweep is also
reported, labelled as chosen on the ground truth. Every run's metrics are cached as JSON under
--work, so an interrupted benchmark resumes (a half-trained run resumes from its checkpoint).

    python benchmarks/addons_voc.py --voc ../shared/data/voc12-subset
    # SEAM rows: background threshold also chosen on 50 val images, PAR-refined masks
    A="--voc ../shared/data/voc12-subset --work runs/addons_voc_seam --max-images 200 --epochs 2 --val-images 50"
    python benchmarks/addons_voc.py $A --variants cam seam seam+ppc seam+isl seam+fsl --refine par
    # AffinityNet (SEAM-family preset) on a reduced head schedule: the walk chosen on val with one
    # run's head, then the same head schedule and walk for every run
    H="--psa-images 50 --psa-crop 192 --psa-epochs 3"
    python benchmarks/addons_voc.py $A --variants seam --seeds 0 --psa-sweep $H
    python benchmarks/addons_voc.py $A --variants cam seam seam+ppc seam+isl seam+fsl --refine psa $H --psa-walk 0.5 8 4
    # the seed masks scored again after a change of the threshold sweep (refined scores kept)
    python benchmarks/addons_voc.py $A --variants cam seam seam+ppc seam+isl seam+fsl --rescore
    # a quick trial of the whole pipeline
    python benchmarks/addons_voc.py --voc ../shared/data/voc12-subset --max-images 8 --seeds 0 \\
        --epochs 1 --size 64 --infer-size 64 --batch 4 --variants cam cam+rca tkpcl+isl --work /tmp/addons_trial
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tagseg.config import load_config, resolve_psa
from tagseg.data.build import build_index
from tagseg.metrics.predict_and_score import predict_and_score
from tagseg.data.views import image_to_tensor
from tagseg.metrics.scorer import Scorer
from tagseg.inference.cam import normalised_cams
from tagseg.inference.loading import load_trained_model
from tagseg.inference.pseudo import merged_probs_for
from tagseg.methods.cam_objective import cam_pseudo_mask
from tagseg.methods.families import get_family
from tagseg.classify.trainer import Trainer
from tagseg.utils.io import read_image, read_mask, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/seed_stats.py
from seed_stats import mean_std  # noqa: E402

# The CAM recipe every cached row was measured with: cam_voc before it shipped fixed BatchNorm
# statistics and a learnt class prior (benchmarks/results/classifier_fit.md). SEAM has no prior term.
RECIPE = ["model.bn=adapt", "cam.class_prior=none"]

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "cam": ("cam_voc", []),
    "cam+ppc": ("cam_voc", ["addons.ppc.enabled=true"]),
    "cam+isl": ("cam_voc", ["addons.hfpl.isl=true"]),
    "cam+isl+fsl": ("cam_voc", ["addons.hfpl.isl=true", "addons.hfpl.fsl=true"]),
    "cam+rca": ("cam_voc", ["addons.rca.enabled=true"]),
    "seam": ("cam_voc", ["model.family=seam"]),
    "seam+ppc": ("cam_voc", ["model.family=seam", "addons.ppc.enabled=true"]),
    "seam+isl": ("cam_voc", ["model.family=seam", "addons.hfpl.isl=true"]),
    "seam+fsl": ("cam_voc", ["model.family=seam", "addons.hfpl.fsl=true"]),
    "tkpcl": ("tkpcl_voc", []),
    "tkpcl+ppc": ("tkpcl_voc", ["addons.ppc.enabled=true"]),
    "tkpcl+isl": ("tkpcl_voc", ["addons.hfpl.isl=true"]),
    "tkpcl+rca": ("tkpcl_voc", ["addons.rca.enabled=true"]),
}
LABELS = {
    "cam": "CAM baseline", "cam+ppc": "CAM + PPC", "cam+isl": "CAM + ISL", "cam+isl+fsl": "CAM + ISL + FSL",
    "cam+rca": "CAM + RCA", "tkpcl": "TKP-PCL", "tkpcl+ppc": "TKP-PCL + PPC", "tkpcl+isl": "TKP-PCL + ISL",
    "tkpcl+rca": "TKP-PCL + RCA (contrast)", "seam": "SEAM", "seam+ppc": "SEAM + PPC", "seam+isl": "SEAM + ISL",
    "seam+fsl": "SEAM + FSL",
}
BG_DEFAULT = 0.25
# wide enough that no variant's val choice sits at an end (SEAM's revised maps prefer 0.5-0.6)
BG_SWEEP = tuple(round(0.05 * i, 2) for i in range(2, 17))  # 0.1, 0.15, ..., 0.8
# AffinityNet's walk settings swept on val (--psa-sweep): background exponent x 2^logt steps, beta 8
PSA_WALK_ALPHAS = (0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 16.0)
PSA_WALK_LOGTS = (4, 6, 8)
PSA_WALK_BETA = 8.0


def base_overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"data.root={args.voc}", "data.dataset=voc", "data.train_split=train_aug", "data.pseudo_split=train_aug",
        f"data.image_size={args.size}", f"data.num_workers={args.workers}", f"data.max_images={args.max_images}",
        "model.encoder=tf_efficientnet_lite0", "model.weights=lite", "model.pretrained=false",
        f"train.epochs={args.epochs}", f"train.warmup_epochs={min(1, args.epochs)}", "train.warmup_lr=1e-3",
        "train.lr=1e-4", f"train.unfreeze_blocks={args.unfreeze}", f"train.batch_size={args.batch}",
        f"pseudo.image_size={args.infer_size}", "pseudo.scales=[1.0]", f"pseudo.flip={str(args.flip).lower()}",
        f"pseudo.bg_threshold={BG_DEFAULT}",
    ]


def family_overrides(config: str, args: argparse.Namespace, name: str = "") -> list[str]:
    if config == "tkpcl_voc":
        return [f"method.et_crop_size={max(16, args.size // 3 // 16 * 16)}"]
    if name.startswith("seam"):  # PPC's second view is SEAM's own (0.3 of the crop, snapped to 16 px)
        return [f"addons.ppc.view2_size={max(16, int(args.size * 0.3) // 16 * 16)}"]
    return []


@torch.no_grad()
def score_run(model_path: Path, args: argparse.Namespace) -> dict:
    """Pseudo-mask scores on the training images (and the CAM background sweep)."""
    model, cfg, info = load_trained_model(model_path)
    cfg.data.root, cfg.data.max_images = str(args.voc), args.max_images  # the run's root may be relative
    index = build_index(cfg.data, "train_aug")
    k = index.num_classes
    main = Scorer(k, index.class_names, per_image=False)
    cam_family = get_family(info["family"]).cam_maps
    sweep = {thr: Scorer(k, index.class_names, contour=False, per_image=False) for thr in BG_SWEEP} if cam_family else {}
    merged_probs = merged_probs_for(info["family"])

    def predict(rec, gt: np.ndarray) -> dict:
        image = image_to_tensor(read_image(rec.image_path))
        if cam_family:
            fg = normalised_cams(model, image, rec.labels, cfg.pseudo)
            return {"main": cam_pseudo_mask(fg, BG_DEFAULT).numpy().astype(np.uint8),
                    **{thr: cam_pseudo_mask(fg, thr).numpy().astype(np.uint8) for thr in sweep}}
        return {"main": merged_probs(model, image, rec.labels, cfg.pseudo).argmax(0).numpy().astype(np.uint8)}

    predict_and_score(index.records, predict, {"main": main, **sweep}, k)
    out = {"train_aug": main.brief(), "images": len(index)}
    if sweep:
        rows = {thr: acc.summary()["miou"] for thr, acc in sweep.items()}
        best = max(rows, key=lambda t: (rows[t], -t))
        out["bg_sweep"] = {"miou": {str(t): v for t, v in rows.items()}, "best_threshold": best,
                           "best_miou": rows[best], "label": "best threshold chosen on the ground truth"}
    if cam_family and args.val_images:
        out["val_choice"] = val_threshold(model, cfg, args, sweep)
    return out


@torch.no_grad()
def val_threshold(model, cfg, args: argparse.Namespace, train_sweep: dict) -> dict:
    """The background threshold chosen on the first ``--val-images`` val images (best val mIoU,
    ties to the lower threshold) and the train_aug mIoU at that threshold."""
    cfg.data.max_images = args.val_images
    index = build_index(cfg.data, "val")
    val = {thr: Scorer(index.num_classes, index.class_names, contour=False, per_image=False) for thr in BG_SWEEP}

    def predict(rec, gt: np.ndarray) -> dict:
        fg = normalised_cams(model, image_to_tensor(read_image(rec.image_path)), rec.labels, cfg.pseudo)
        return {thr: cam_pseudo_mask(fg, thr).numpy().astype(np.uint8) for thr in val}

    predict_and_score(index.records, predict, val, index.num_classes)
    rows = {thr: acc.summary()["miou"] for thr, acc in val.items()}
    best = max(rows, key=lambda t: (rows[t], -t))
    return {"val_images": len(index), "threshold": best, "val_miou": rows[best],
            "train_aug_miou": train_sweep[best].summary()["miou"]}


def psa_settings(args: argparse.Namespace) -> dict:
    """The AffinityNet settings of this invocation: the SEAM-family preset with the head schedule and
    walk given on the command line (keys left None keep the preset's)."""
    return {"preset": "seam", "images": args.psa_images or args.max_images, "crop_size": args.psa_crop,
            "epochs": args.psa_epochs, "batch_size": args.psa_batch,
            "walk_alpha": args.psa_walk[0] if args.psa_walk else None,
            "beta": args.psa_walk[1] if args.psa_walk else None,
            "logt": int(args.psa_walk[2]) if args.psa_walk else None}


def _configure_psa(cfg, settings: dict) -> None:
    p = cfg.refine.psa
    p.preset, p.crop_size, p.epochs, p.batch_size = (settings["preset"], settings["crop_size"], settings["epochs"],
                                                     settings["batch_size"])
    p.walk_alpha, p.beta, p.logt = settings["walk_alpha"], settings["beta"], settings["logt"]


HEAD_KEYS = ("preset", "images", "crop_size", "epochs", "batch_size")


def psa_head(model, cfg, run_dir: Path, family: str, settings: dict) -> tuple[Path, float]:
    """The run's AffinityNet head (labels of the first ``images`` train_aug images, then training),
    trained unless ``<run>/refine/psa`` already holds one with the same head settings; returns its
    model file and the seconds spent here."""
    from tagseg.refine.run import refine_dir, train_refine_net

    head = {k: settings[k] for k in HEAD_KEYS}
    out = refine_dir(run_dir, "psa")
    recorded = out / "head.json"
    if (out / "model.safetensors").is_file():
        if not recorded.is_file() or json.loads(recorded.read_text()) != head:
            raise SystemExit(f"{out} holds an AffinityNet head trained with other settings than {head}; "
                             f"use another --work")
        return out / "model.safetensors", 0.0
    t0 = time.time()
    train_cfg = copy.deepcopy(cfg)
    train_cfg.data.max_images = settings["images"]
    path = train_refine_net(model, train_cfg, run_dir, "psa", family, "cpu", resume=True, progress=False)
    write_json(recorded, head)
    return path, time.time() - t0


def refine_and_score(run_dir: Path, model_path: Path, args: argparse.Namespace) -> dict | None:
    """CAM-family runs: the refine stage's masks of the same train_aug images (``--refine``; PSA with
    the SEAM-family preset and this invocation's head schedule and walk), scored against the ground
    truth. Records the settings and the seconds spent."""
    from tagseg.refine.run import refine_run

    model, cfg, info = load_trained_model(model_path)
    if not get_family(info["family"]).cam_maps:
        return None
    cfg.data.root, cfg.data.max_images = str(args.voc), args.max_images
    t0 = time.time()
    entry: dict = {"method": args.refine}
    if args.refine == "psa":
        settings = psa_settings(args)
        _configure_psa(cfg, settings)
        _, head_seconds = psa_head(model, cfg, run_dir, info["family"], settings)
        entry["head_seconds"] = round(head_seconds, 1)
        entry["settings"] = settings
        walk = {k: settings[k] for k in ("walk_alpha", "beta", "logt")}
        walk_file = run_dir / "refine" / "psa" / "train_aug" / "walk.json"  # masks already there are reused
        if walk_file.parent.is_dir() and (not walk_file.is_file() or json.loads(walk_file.read_text()) != walk):
            raise SystemExit(f"{walk_file.parent} holds masks of another walk than {walk}; use another --work")
        write_json(walk_file, walk)
    t1 = time.time()
    _, masks = refine_run(model, cfg, run_dir, args.refine, info["family"], "train_aug", progress=False)
    entry["mask_seconds"] = round(time.time() - t1, 1)
    entry["seconds"] = round(time.time() - t0, 1)
    index = build_index(cfg.data, "train_aug")
    acc = Scorer(index.num_classes, index.class_names, per_image=False)
    predict_and_score(index.records, lambda rec, gt: read_mask(masks / f"{rec.id}.png", index.num_classes), acc,
                      index.num_classes)
    entry["train_aug"] = acc.brief()
    return entry


def refined_entries(metrics: dict) -> dict[str, dict]:
    """method -> refined-mask record of one run (records written before several methods were kept
    have one, under ``refined``)."""
    out = dict(metrics.get("refined_by") or {})
    legacy = metrics.get("refined")
    if legacy and legacy["method"] not in out:
        out[legacy["method"]] = legacy
    return out


def psa_walk_sweep(run_dir: Path, model_path: Path, args: argparse.Namespace) -> dict:
    """val mIoU of AffinityNet's walk over PSA_WALK_ALPHAS x PSA_WALK_LOGTS (beta PSA_WALK_BETA) on
    the first ``--psa-sweep-images`` val images, with this run's head (trained here if missing);
    the best setting (ties to the earlier one in the grid)."""
    from tagseg.refine.seeds import seeds_of
    from tagseg.refine.stage import psa_affinity, psa_walk_mask
    from tagseg.refine.train import load_refine_net

    model, cfg, info = load_trained_model(model_path)
    cfg.data.root = str(args.voc)
    settings = psa_settings(args)
    _configure_psa(cfg, settings)
    t0 = time.time()
    head_path, head_seconds = psa_head(model, cfg, run_dir, info["family"], settings)
    net = load_refine_net(model, cfg, head_path, "psa", "cpu")
    model.eval()
    cfg.data.max_images = args.psa_sweep_images
    index = build_index(cfg.data, "val")
    grid = [(a, PSA_WALK_BETA, t) for a in PSA_WALK_ALPHAS for t in PSA_WALK_LOGTS]
    accs = {g: Scorer(index.num_classes, index.class_names, contour=False, per_image=False) for g in grid}
    settings_grid = []
    for a, b, t in grid:
        cfg.refine.psa.walk_alpha, cfg.refine.psa.beta, cfg.refine.psa.logt = a, b, t
        settings_grid.append(resolve_psa(cfg.refine.psa))

    def predict(rec, gt: np.ndarray) -> dict:
        image = read_image(rec.image_path)
        seeds = seeds_of(model, image, rec.labels, cfg.pseudo, info["family"])
        if not len(seeds.keys):
            return {g: np.zeros(image.shape[:2], np.uint8) for g in grid}
        aff, aff_grid = psa_affinity(net, image, settings_grid[0].radius, "cpu")  # once for every walk
        return {g: psa_walk_mask(aff, aff_grid, seeds, sg, image.shape[:2]) for g, sg in zip(grid, settings_grid)}

    with torch.no_grad():
        predict_and_score(index.records, predict, accs, index.num_classes)
    rows = {g: accs[g].summary()["miou"] for g in grid}
    best = max(grid, key=lambda g: (rows[g], -grid.index(g)))
    return {"val_images": len(index), "head": {k: settings[k] for k in HEAD_KEYS}, "head_seconds": round(head_seconds, 1),
            "seconds": round(time.time() - t0, 1),
            "miou": {f"alpha={a:g} beta={b:g} logt={t}": v for (a, b, t), v in rows.items()},
            "best": {"walk_alpha": best[0], "beta": best[1], "logt": best[2], "val_miou": rows[best]}}


def run_one(name: str, seed: int, args: argparse.Namespace) -> dict:
    """Train (unless cached) and score one variant at one seed; returns its record."""
    run_dir = args.work / f"{name}-seed{seed}"
    result_path = run_dir / "addons.json"
    if result_path.is_file():
        record = json.loads(result_path.read_text())
        if args.cached_only:
            return record
        model_path = run_dir / "model.safetensors"
        if args.rescore:  # the seed masks scored again (e.g. with a wider threshold sweep); refined kept
            t0 = time.time()
            kept = {k: v for k, v in record["metrics"].items() if k in ("refined", "refined_by")}
            record["metrics"] = {**score_run(model_path, args), **kept}
            record["rescore_seconds"] = round(time.time() - t0, 1)
            write_json(result_path, record)
        if args.psa_sweep:
            record["psa_sweep"] = psa_walk_sweep(run_dir, model_path, args)
            write_json(result_path, record)
        elif args.refine != "none":
            done = refined_entries(record["metrics"]).get(args.refine)
            if done and args.refine == "psa" and done.get("settings") != psa_settings(args):
                raise SystemExit(f"{run_dir}: its AffinityNet masks were made with {done.get('settings')}, "
                                 f"not {psa_settings(args)}; use another --work")
            if not done:  # a run cached before --refine was asked: refine it now
                entry = refine_and_score(run_dir, model_path, args)
                record["metrics"].setdefault("refined_by", {})[args.refine] = entry
                write_json(result_path, record)
        return record
    config, overrides = VARIANTS[name]
    cfg = load_config(config, [*base_overrides(args), *RECIPE, *family_overrides(config, args, name), *overrides,
                               f"seed={seed}", f"name={name}"])
    t0 = time.time()
    model_path = Trainer(cfg, run_dir, resume=True, show_progress=False).fit()
    t_train = time.time() - t0
    metrics = score_run(model_path, args)
    if args.refine != "none" and not args.psa_sweep:
        metrics["refined_by"] = {args.refine: refine_and_score(run_dir, model_path, args)}
    record = {"name": name, "seed": seed, "config": config, "overrides": overrides,
              "train_seconds": round(t_train, 1), "score_seconds": round(time.time() - t0 - t_train, 1),
              "metrics": metrics}
    write_json(result_path, record)
    return record


def table(rows: list[tuple[str, list[dict]]]) -> str:
    methods = [m for m in ("par", "psa", "irn") if any(m in refined_entries(r["metrics"]) for _, rs in rows for r in rs)]
    names = {"par": "PAR", "psa": "AffinityNet", "irn": "IRN"}
    head = ("| variant | seeds | mIoU | contour F | J&F | mIoU, best bg threshold (chosen on the GT) "
            "| mIoU, bg threshold chosen on val |" + "".join(f" {names[m]}-refined mIoU |" for m in methods) + "\n"
            "|---|---|---|---|---|---|---|" + "---|" * len(methods))
    lines = [head]
    for label, recs in rows:
        m = [r["metrics"]["train_aug"] for r in recs]
        sweep = [r["metrics"].get("bg_sweep") for r in recs]
        best = "-" if sweep[0] is None else mean_std([s["best_miou"] for s in sweep]) + " (thr " + ", ".join(
            f"{s['best_threshold']:g}" for s in sweep) + ")"
        refined = ""
        for method in methods:
            ref = [refined_entries(r["metrics"]).get(method) for r in recs]
            done = [v["train_aug"]["miou"] for v in ref if v]
            refined += " - |" if not done else f" {mean_std(done)}{'' if len(done) == len(recs) else f' ({len(done)} seeds)'} |"
        val = [r["metrics"].get("val_choice") for r in recs]
        on_val = "-" if any(v is None for v in val) else mean_std([v["train_aug_miou"] for v in val]) + " (thr " + ", ".join(
            f"{v['threshold']:g}" for v in val) + ")"
        lines.append(f"| {label} | {len(recs)} | {mean_std([x['miou'] for x in m])} | {mean_std([x['contour_f'] for x in m])} "
                     f"| {mean_std([x['j_and_f'] for x in m])} | {best} | {on_val} |{refined}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voc", type=Path, default=Path("../shared/data/voc12-subset"))
    p.add_argument("--work", type=Path, default=Path("runs/addons_voc"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/addons_voc.md"))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3, help="the first one with the backbone frozen")
    p.add_argument("--unfreeze", type=int, default=2, help="backbone block groups trained after the first epoch")
    p.add_argument("--size", type=int, default=160, help="training input size (px; multiple of 32)")
    p.add_argument("--infer-size", type=int, default=256, help="pseudo-mask inference size (px)")
    p.add_argument("--flip", action="store_true", help="average pseudo-mask inference with the flipped image")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    p.add_argument("--max-images", type=int, default=400, help="first N train_aug images (0 = all 1000)")
    p.add_argument("--val-images", type=int, default=0,
                   help="CAM/SEAM runs: also choose the background threshold on the first N val images "
                        "(0 = off) and report train_aug mIoU at it")
    p.add_argument("--refine", choices=("none", "psa", "irn", "par"), default="none",
                   help="CAM/SEAM runs: also refine the masks of the same images (tagseg refine) and score them")
    p.add_argument("--psa-images", type=int, default=0,
                   help="--refine psa: train the head on the first N train_aug images (0 = --max-images)")
    p.add_argument("--psa-crop", type=int, default=448, help="--refine psa: the head's training crop (px)")
    p.add_argument("--psa-epochs", type=int, default=8, help="--refine psa: the head's epochs")
    p.add_argument("--psa-batch", type=int, default=8, help="--refine psa: the head's batch size")
    p.add_argument("--psa-walk", type=float, nargs=3, metavar=("ALPHA", "BETA", "LOGT"),
                   help="--refine psa: the walk's background exponent, beta and log2 steps (default: the preset's)")
    p.add_argument("--psa-sweep", action="store_true",
                   help="instead of refining: sweep the AffinityNet walk settings on val (head trained if missing)")
    p.add_argument("--psa-sweep-images", type=int, default=50, help="--psa-sweep: first N val images")
    p.add_argument("--rescore", action="store_true",
                   help="cached runs: score their seed masks again (threshold sweeps included), keep refined scores")
    p.add_argument("--cached-only", action="store_true",
                   help="train nothing: tabulate the runs already scored under --work (missing ones are listed)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    records: dict[str, list[dict]] = {}
    missing = []
    for name in args.variants:
        for seed in args.seeds:
            if args.cached_only and not (args.work / f"{name}-seed{seed}" / "addons.json").is_file():
                missing.append(f"{name} seed {seed}")
                continue
            rec = run_one(name, seed, args)
            records.setdefault(name, []).append(rec)
            m = rec["metrics"]["train_aug"]
            extra = ""
            for method, entry in refined_entries(rec["metrics"]).items():
                extra += f"  {method}={100 * entry['train_aug']['miou']:.1f}"
            if "psa_sweep" in rec:
                b = rec["psa_sweep"]["best"]
                extra += (f"  walk on val: alpha {b['walk_alpha']:g} beta {b['beta']:g} logt {b['logt']} "
                          f"({100 * b['val_miou']:.1f})")
            if "bg_sweep" in rec["metrics"]:
                s = rec["metrics"]["bg_sweep"]
                extra += f"  best-bg({s['best_threshold']:g}, GT-chosen) mIoU={100 * s['best_miou']:.1f}"
            print(f"{name:<12} seed {seed}: mIoU={100 * m['miou']:.1f} F={100 * (m['contour_f'] or 0):.1f} "
                  f"J&F={100 * (m['j_and_f'] or 0):.1f}{extra}  ({rec['train_seconds']}s train, "
                  f"{rec['score_seconds']}s score)", flush=True)
    elapsed = time.time() - t0
    if not records:
        print("no scored run under --work yet")
        return 1
    main_table = table([(LABELS[n], records[n]) for n in args.variants if n in records])
    if missing:
        main_table += "\n\nNot run yet (no scored run under --work): " + ", ".join(missing) + "."
    print(main_table)
    all_recs = [r for rs in records.values() for r in rs]
    run_s = sum(r["train_seconds"] + r["score_seconds"] for r in all_recs)
    cmd = "python benchmarks/addons_voc.py " + " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    hardware = (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                f"{torch.get_num_threads()} threads")
    report = {"command": cmd, "seconds_this_invocation": round(elapsed), "seconds_all_runs": round(run_s),
              "hardware": hardware, "runs": {n: [r["metrics"] for r in rs] for n, rs in records.items()}}
    args.work.mkdir(parents=True, exist_ok=True)
    write_json(args.work / "summary.json", report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        f"# Add-ons on VOC ({next(iter(records.values()))[0]['metrics']['images']} train_aug images, "
        f"pseudo-masks scored on the same images)\n\n"
        f"Command: `{cmd}`\n\nHardware: {hardware}; {round(run_s)} s summed over the runs.\n\n"
        f"Backbone: EfficientNet-Lite0 (ImageNet), {args.epochs} epochs (1 frozen, then the last "
        f"{args.unfreeze} block groups), {args.size} px training, {args.infer_size} px inference"
        f"{' + flip' if args.flip else ''}. CAM masks at background threshold {BG_DEFAULT}; mean ± sample std "
        f"over seeds {args.seeds}.\n\n{main_table}\n")
    print(f"total {elapsed:.0f}s this invocation; {run_s:.0f}s summed over all runs -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
