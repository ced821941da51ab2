"""The whole pipeline on VOC through the command line, one family and one seed per call, on a
CPU budget: tags -> tag classifier -> seed -> + dense CRF -> PAR-refined -> DeepLab v3+ trained on
the refined masks -> val mIoU, and the same DeepLab on the ground truth (the ceiling).

    python benchmarks/pipeline_voc.py --voc ../shared/data/voc12-subset --family cam --seed 0 --work runs/pipeline

Every step is a ``tagseg`` command (printed with its wall time):

1. ``tagseg train``: the family's CPU recipe (:data:`RECIPES`), or ``--run`` names a trained run.
2. CAM and SEAM only: ``tagseg eval --sweep-bg`` on the first ``--choose-images`` val images picks the
   background threshold (never on the images scored for the table's ``train_aug`` column).
3. ``tagseg pseudo`` (+ dense CRF) and ``tagseg refine --method par`` on val and train_aug, each
   split's three mask folders scored by one ``tagseg eval``.
4. ``tagseg segment train --config segment_voc_cpu`` on the refined train_aug masks (or PAR's
   confident labels with ``--masks confident``), ``tagseg segment eval`` on val.
5. The same DeepLab on the ground truth, shared by every family and seed under ``--work``
   (``--ceiling`` names another segment run folder).

Outputs under ``<work>/<name>/`` (``--name``, default ``<family>-seed<s>``): ``run/`` (unless
``--run``), ``pseudo/<split>/``, ``refine/par/<split>/``, ``eval_<split>.json``, ``seg/`` (or
``seg-confident/``), ``results.md`` and ``results.json``. Finished steps are skipped and the
per-image stages resume, so an interrupted call continues where it stopped; ``--until`` stops after
a step (``refine``: the pseudo-mask rows without the 90-minute DeepLab runs; ``seed``: the seed row
alone, no CRF or refinement, scored into ``eval_<split>_seed.json``, e.g. for the pooling ordering).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/cli_steps.py
from cli_steps import REPO, Steps  # noqa: E402

sys.path.insert(0, str(REPO / "src"))  # the steps run this checkout's tagseg; its file helpers too
from tagseg.utils.io import write_json, write_text  # noqa: E402

SPLITS = ("val", "train_aug")  # val first: the CAM threshold is chosen there
BG_SWEEP = "0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5,0.6"
STAGES = ("train", "seed", "refine", "segment")

# The families' CPU recipes (EfficientNet-Lite0 with the packaged ImageNet weights):
# - cam: cam_voc as shipped (fixed BatchNorm, learnt class prior), 160 px, 3 epochs (1 warm-up with the
#   backbone frozen, 2 fine-tuning the last 2 block groups), batch 16; pseudo-masks at 256 px, one scale,
#   no flip (benchmarks/results/classifier_fit.md, the 1,000-image networks; cam_voc's own pseudo
#   settings are the papers' 4 scales + flip, 8 forwards per image).
# - tkpcl: top-K + PCE + L_ET, the 320 px recipe of reference_voc.md (20 x 20 patch grid): 2 epochs
#   (1 warm-up, 1 fine-tuning the last 3 block groups), batch 8, L_ET crops 96 px; pseudo-masks at 320 px,
#   one scale (tkpcl_voc's default).
# - seam: SEAM (model.family=seam: two views, PCM, ER + ECR) on the cam recipe, as addons_voc.py places it;
#   the official SEAM has no class-prior term (cam.class_prior=none), so only the fixed BatchNorm of cam_voc
#   remains; --train-set cam.class_prior=tags adds tagseg's (docs/CHOICES.md).
CAM_TRAIN = ["data.image_size=160", "train.epochs=3", "train.warmup_epochs=1", "train.warmup_lr=1e-3",
             "train.lr=1e-4", "train.unfreeze_blocks=2", "train.batch_size=16"]
CAM_PSEUDO = ["pseudo.image_size=256", "pseudo.scales=[1.0]", "pseudo.flip=false"]
RECIPES: dict[str, dict] = {
    "cam": {"config": "cam_voc", "pseudo": CAM_PSEUDO, "train": CAM_TRAIN, "bg_sweep": True},
    "seam": {"config": "cam_voc", "pseudo": CAM_PSEUDO, "bg_sweep": True,
             "train": [*CAM_TRAIN, "model.family=seam", "cam.class_prior=none"]},
    "tkpcl": {"config": "tkpcl_voc", "pseudo": ["pseudo.image_size=320"],
              "train": ["model.cnn_grid=dilated", "model.cnn_features=last_block", "data.image_size=320",
                        "train.epochs=2", "train.warmup_epochs=1", "train.unfreeze_blocks=3",
                        "method.et_crop_size=96", "train.batch_size=8"]},
}


def train_overrides(family: str, voc: Path, seed: int, workers: int) -> list[str]:
    return [f"data.root={voc}", "data.dataset=voc", "data.train_split=train_aug", "data.pseudo_split=train_aug",
            "data.val_split=val", f"data.num_workers={workers}", "model.encoder=tf_efficientnet_lite0",
            "model.weights=lite", "model.pretrained=false", "device=cpu", f"seed={seed}", *RECIPES[family]["train"]]


def segment_overrides(voc: Path, masks: str, seed: int) -> list[str]:
    return [f"data.root={voc}", f"segment.masks_dir={masks}", "data.num_workers=1", "device=cpu", f"seed={seed}"]


def miou_of(path: Path) -> dict[str, float]:
    """``{folder: mIoU %}`` of a side-by-side ``tagseg eval`` file, or ``{"": mIoU}`` of a single one."""
    doc = json.loads(path.read_text())
    if "per_run" in doc:
        return {name: 100 * r["miou"] for name, r in zip(doc["runs"], doc["per_run"])}
    return {"": 100 * doc["miou"]}


def chosen_background(sweep: Path) -> float:
    return float(json.loads(sweep.read_text())["best"]["threshold"])


def run_pipeline(args: argparse.Namespace) -> dict:
    voc, work = args.voc.resolve(), args.work.resolve()
    out = work / (args.name or f"{args.family}-seed{args.seed}")
    out.mkdir(parents=True, exist_ok=True)
    recipe = RECIPES[args.family]
    run = args.run.resolve() if args.run else out / "run"
    step = Steps(quiet=not args.verbose)
    threads = ["--threads", str(args.threads)]
    if not args.run:
        step("train", run / "model.safetensors", "train", "--config", recipe["config"], "--out", str(run), "--resume",
             *threads, *train_overrides(args.family, voc, args.seed, args.workers), *args.train_set)
    if not (run / "model.safetensors").is_file():
        sys.exit(f"{run} has no model.safetensors: train it first (or give --run a finished run)")
    result: dict = {"family": args.family, "seed": args.seed, "run": str(run), "voc": str(voc)}
    if args.until == "train":
        return finish(out, result, step)
    pseudo = [f"data.root={voc}", *recipe["pseudo"], *args.pseudo_set]
    if recipe.get("bg_sweep"):
        sweep = out / "bg_sweep_val.json"
        step("background sweep (val)", sweep, "eval", "--run", str(run), "--split", "val", "--sweep-bg", BG_SWEEP,
             "--out", str(sweep), *threads, *pseudo, f"data.max_images={args.choose_images}")
        result["bg_threshold"] = chosen_background(sweep)
        pseudo.append(f"pseudo.bg_threshold={result['bg_threshold']}")
    per_image = ["--workers", str(args.per_image_workers), "--threads", "1"]
    seed_only = args.until == "seed"  # the seed row alone: no CRF, no refinement
    for split in SPLITS:
        seed_dir, par_dir = out / "pseudo" / split, out / "refine" / "par" / split
        step(f"pseudo {split}", None, "pseudo", "--run", str(run), "--split", split, "--out", str(seed_dir),
             "--crf", "none" if seed_only else args.crf, *per_image, *pseudo)
        folders = {"seed": seed_dir / "masks"}
        if not seed_only:
            step(f"refine par {split}", None, "refine", "--run", str(run), "--method", "par", "--split", split,
                 "--out", str(par_dir), *per_image, *pseudo)
            folders.update(crf=seed_dir / "crf" / "masks", par=par_dir / "masks")
        scores = out / f"eval_{split}{'_seed' if seed_only else ''}.json"
        step(f"eval {split}", scores, "eval", "--run", str(run), "--split", split,
             "--pred", *map(str, folders.values()), "--out", str(scores), *threads, f"data.root={voc}")
        by_folder = miou_of(scores)
        result[split] = {key: by_folder[str(f)] if len(folders) > 1 else by_folder[""] for key, f in folders.items()}
    if args.until in ("seed", "refine"):
        return finish(out, result, step)
    confident = args.masks == "confident"
    masks = out / "refine" / "par" / "train_aug" / ("confident" if confident else "masks")
    seg = out / ("seg-confident" if confident else "seg")
    ceiling = args.ceiling.resolve() if args.ceiling else work / "ceiling"
    for name, folder, target in (("DeepLab on refined", seg, str(masks)), ("DeepLab on ground truth", ceiling, "gt")):
        step(f"{name}: train", folder / "model.safetensors", "segment", "train", "--config", "segment_voc_cpu",
             "--out", str(folder), "--resume", *threads, *segment_overrides(voc, target, args.seed), *args.segment_set)
        step(f"{name}: eval val", folder / "eval_val.json", "segment", "eval", "--run", str(folder), "--split", "val",
             "--out", str(folder / "eval_val.json"), *threads, f"data.root={voc}")
    result["deeplab"] = miou_of(seg / "eval_val.json")[""]
    result["ceiling"] = miou_of(ceiling / "eval_val.json")[""]
    result["training_masks"] = str(masks)
    return finish(out, result, step)


def finish(out: Path, result: dict, step: Steps) -> dict:
    """Write results.json / results.md; a step reused from an earlier call keeps that call's time."""
    earlier = {}
    if (out / "results.json").is_file():
        earlier = json.loads((out / "results.json").read_text()).get("seconds", {})
    for name, seconds in step.times.items():
        if seconds == 0.0 and earlier.get(name):
            step.times[name] = earlier[name]
    result["seconds"] = {k: round(v, 1) for k, v in step.times.items()}
    write_json(out / "results.json", result)
    write_text(out / "results.md", table(result) + "\n\n" + "\n".join(step.table()) + "\n")
    return result


def table(r: dict) -> str:
    def cell(split: str, key: str) -> str:
        return f"{r[split][key]:.1f}" if key in r.get(split, {}) else "-"
    bg = f", background {r['bg_threshold']:g} (chosen on val)" if "bg_threshold" in r else ""
    lines = [f"{r['family']} seed {r['seed']}{bg}; run {r['run']}", "",
             "| step | train_aug | val |", "|---|---:|---:|"]
    lines += [f"| {label} | {cell('train_aug', k)} | {cell('val', k)} |"
              for label, k in (("seed", "seed"), ("+ dense CRF", "crf"), ("PAR-refined", "par"))]
    if "deeplab" in r:
        ratio = r["deeplab"] / r["ceiling"] if r["ceiling"] else float("nan")
        lines += [f"| DeepLab v3+ on PAR's {'confident labels' if Path(r['training_masks']).name == 'confident' else 'masks'} | | {r['deeplab']:.1f} ({ratio:.2f} of the ceiling) |",
                  f"| DeepLab v3+ on the ground truth (ceiling) | | {r['ceiling']:.1f} |"]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voc", type=Path, default=Path("../shared/data/voc12-subset"),
                   help="VOC-layout folder (JPEGImages/, SegmentationClassAug/, ImageSets/Segmentation/, labels)")
    p.add_argument("--family", choices=sorted(RECIPES), default="cam")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("runs/pipeline"))
    p.add_argument("--name", help="the folder under --work (default <family>-seed<s>)")
    p.add_argument("--run", type=Path, help="a trained run folder to start from (skips training)")
    p.add_argument("--ceiling", type=Path, help="the ground-truth DeepLab's run folder (default <work>/ceiling)")
    p.add_argument("--masks", choices=("refined", "confident"), default="refined",
                   help="DeepLab's training masks: PAR's full label maps, or its confident labels (255 = unsure)")
    p.add_argument("--choose-images", type=int, default=100, help="CAM, SEAM: first N val images for the background sweep")
    p.add_argument("--crf", default="pydensecrf", choices=("pydensecrf", "torch"), help="dense CRF backend")
    p.add_argument("--until", choices=STAGES, default="segment", help="stop after this stage")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of the training and scoring steps")
    p.add_argument("--workers", type=int, default=1, help="data-loader workers of the tag classifier's training")
    p.add_argument("--per-image-workers", type=int, default=2, help="processes of the pseudo and refine steps")
    p.add_argument("--train-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides after the family's recipe (e.g. train.epochs=6)")
    p.add_argument("--pseudo-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides of the pseudo, refine and sweep steps (e.g. pseudo.image_size=320)")
    p.add_argument("--segment-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides after segment_voc_cpu (e.g. model.encoder=tf_efficientnet_lite2 model.weights=lite)")
    p.add_argument("--verbose", action="store_true", help="stream every step's output")
    args = p.parse_args(argv)
    result = run_pipeline(args)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
