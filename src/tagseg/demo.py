"""``tagseg demo``: synthetic data -> TKP-PCL training -> pseudo-masks -> mIoU vs chance."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from tagseg.data.build import build_index
from tagseg.data.synthetic import generate_dataset
from tagseg.metrics.baselines import chance_baselines
from tagseg.evaluate.folder import evaluate_folder
from tagseg.metrics.miou import format_table
from tagseg.pseudo.generate import generate_pseudo_masks
from tagseg.runner import RunOptions
from tagseg.inference.loading import load_patch_classifier
from tagseg.engine.checkpoint import list_checkpoints
from tagseg.engine.distributed import DistInfo, resolve_device
from tagseg.experiment import load_experiment
from tagseg.classify.trainer import Trainer
from tagseg.utils.io import write_json
from tagseg.utils.runtime import apply_threads


def run_demo(out: Path, overrides: Sequence[str] = (), threads: Optional[int] = None,
             progress: bool = True) -> dict:
    """Run the whole pipeline on the built-in synthetic data; returns the metrics summary.

    threads: CPU threads (default: the cores left after the data-loader workers, as training
    uses); progress: a progress bar in every stage."""
    t0 = time.time()
    # every key checked (add-on sections and the family included) before any data is generated
    cfg = load_experiment("demo", [f"data.root={out / 'data'}", *overrides])
    apply_threads(threads or cfg.train.cpu_threads or None, 1, cfg.data.num_workers)
    device = resolve_device(cfg.device, DistInfo())
    print(f"[1/4] synthetic data -> {cfg.data.root}")
    if cfg.data.dataset == "synthetic":  # generated here to show its progress; build_index reuses it
        generate_dataset(Path(cfg.data.root), num_train=cfg.data.synthetic_train, num_val=cfg.data.synthetic_val,
                         size=cfg.data.synthetic_size, seed=cfg.data.synthetic_seed, progress=progress)
    train_index = build_index(cfg.data, cfg.data.train_split)
    print(f"      {len(train_index)} training images, classes: {', '.join(train_index.class_names[1:])}")
    print(f"[2/4] training {cfg.model.encoder} + HV-BiLSTM, pooling={cfg.method.pooling} (k={cfg.method.topk}), "
          f"PCE λ={cfg.method.pce_weight}, L_ET={cfg.method.et_weight}, {cfg.train.epochs} epochs")
    Trainer(cfg, out, resume=bool(list_checkpoints(out)), show_progress=progress).fit()
    print(f"[3/4] pseudo-masks for '{cfg.data.pseudo_split}'")
    model, _, _ = load_patch_classifier(out / "model.safetensors", device)
    index = build_index(cfg.data, cfg.data.pseudo_split)
    pred_dir = out / "pseudo" / cfg.data.pseudo_split
    with torch.no_grad():
        options = RunOptions(progress=progress, overwrite=True, manifest={
            "run": out, "split": cfg.data.pseudo_split, "config": cfg, "input": cfg.data.root})
        generate_pseudo_masks(model, index, pred_dir, cfg.pseudo, options, device=device)
    print("[4/4] scoring")
    summary = evaluate_folder(pred_dir / "masks", index, progress=progress)
    baselines = chance_baselines(index, seed=cfg.seed)
    write_json(pred_dir / "eval.json", summary)
    print(format_table(summary, title=f"pseudo-masks of {len(index)} '{cfg.data.pseudo_split}' images"))
    print("\nmIoU compared with label-aware guesses that ignore the image content:")
    print(f"{'predictor':<28}{'mIoU':>8}{'pixel acc.':>12}")
    print(f"{'tagseg pseudo-masks':<28}{100 * summary['miou']:>8.1f}{100 * summary['pixel_accuracy']:>12.1f}")
    for name, s in baselines.items():
        print(f"{'chance: ' + name:<28}{100 * s['miou']:>8.1f}{100 * s['pixel_accuracy']:>12.1f}")
    print(f"\ndone in {time.time() - t0:.0f}s; outputs in {out}")
    return summary
