"""Training loop of the segmentation network: one process or DDP under torchrun.

Cross-entropy on pseudo-masks (255 ignored), SGD with momentum (or AdamW), poly learning rate
per iteration, the head at ``head_lr_mult`` × lr. Checkpoints every epoch; ``resume=True``
continues from the newest complete checkpoint with the same weights, optimizer, step and RNG
state, so an interrupted run ends where an uninterrupted one would. Rank 0 writes the logs
(TensorBoard + history.jsonl), the checkpoints and the final ``model.safetensors``.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from tagseg.config import config_to_yaml, to_dict
from tagseg.data.build import build_index
from tagseg.data.classes import IGNORE_INDEX
from tagseg.errors import TrainingError
from tagseg.segmentation.config import SegmentExperimentConfig, SegTrainConfig
from tagseg.segmentation.data import SegmentationTrainSet, resolve_mask_paths
from tagseg.segmentation.inference import model_metadata
from tagseg.segmentation.models import SegmentationNet, build_segmenter
from tagseg.training import distributed as D
from tagseg.training.checkpoint import (
    list_checkpoints, load_latest_checkpoint, rng_state, save_checkpoint, save_final_model, set_rng_state,
)
from tagseg.training.trainer import seed_everything, truncate_history
from tagseg.utils.io import write_text


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    """DeepLab's poly schedule: base_lr · (1 − step/total_steps)^power (step clipped to [0, total])."""
    if total_steps <= 0:
        return base_lr
    frac = min(max(step, 0), total_steps) / total_steps
    return base_lr * (1.0 - frac) ** power


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy over the pixels whose target is not ``ignore_index``.

    logits (B, K, H, W), target int64 (B, H, W). A batch without any valid pixel gives 0
    (still attached to the graph, so backward works) instead of NaN.
    """
    valid = target != ignore_index
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return total / valid.sum().clamp(min=1)


def build_optimizer(model: SegmentationNet, cfg: SegTrainConfig) -> torch.optim.Optimizer:
    """Two parameter groups, backbone (lr) and head (head_lr_mult · lr); SGD+momentum or AdamW."""
    groups = [{"params": model.backbone_parameters(), "name": "backbone", "lr_mult": 1.0},
              {"params": model.head_parameters(), "name": "head", "lr_mult": cfg.head_lr_mult}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def freeze_batchnorm(module: nn.Module) -> list[nn.Module]:
    """Fix the BatchNorm layers of ``module`` (no statistics updates, no affine gradients)."""
    frozen = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    return frozen


class SegmentationTrainer:
    """Train ``cfg`` into ``run_dir`` (config.yaml, checkpoints/, tb/, history.jsonl, model.safetensors)."""

    def __init__(self, cfg: SegmentExperimentConfig, run_dir: str | Path, resume: bool = False,
                 show_progress: bool = True) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.show_progress = show_progress

    def fit(self, stop_after_epoch: Optional[int] = None) -> Path:
        """Train until ``train.epochs`` (or stop after ``stop_after_epoch`` finished epochs);
        return the path of the final model (or of the last checkpoint)."""
        cfg = self.cfg
        cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
        info = D.init_distributed("cuda" if cuda else "cpu")
        device = D.resolve_device(cfg.device, info)
        try:
            return self._fit(info, device, stop_after_epoch)
        finally:
            D.shutdown(info)

    def _fit(self, info: D.DistInfo, device: torch.device, stop_after_epoch: Optional[int]) -> Path:
        cfg, run_dir, tcfg = self.cfg, self.run_dir, self.cfg.train
        seed_everything(cfg.seed + info.rank)
        index = build_index(cfg.data, cfg.data.train_split).require_nonempty()
        masks = resolve_mask_paths(index, cfg.segment.masks_dir)
        core = build_segmenter(cfg.model, index.num_classes, cfg.augment.crop_size)
        pad_value = core.backbone.mean.flatten().tolist()
        dataset = SegmentationTrainSet(index, masks, cfg.augment, pad_value=pad_value, seed=cfg.seed)
        if info.enabled and device.type == "cuda":
            core = nn.SyncBatchNorm.convert_sync_batchnorm(core)
        frozen_bn = freeze_batchnorm(core.backbone) if tcfg.freeze_backbone_bn else []
        core = core.to(device)
        optimizer = build_optimizer(core, tcfg)
        steps_per_epoch = math.ceil(len(dataset) / (tcfg.batch_size * info.world_size))
        total_steps = steps_per_epoch * tcfg.epochs
        start_epoch = 0
        if self.resume:
            found = load_latest_checkpoint(run_dir, core)
            if found:
                ckpt, state = found
                optimizer.load_state_dict(state["optimizer"])
                start_epoch = int(state["epoch"])
                set_rng_state(state["rng"][min(info.rank, len(state["rng"]) - 1)])
                if info.is_main:
                    print(f"resuming from {ckpt} (epoch {start_epoch} of {tcfg.epochs} done)")
        global_step = start_epoch * steps_per_epoch
        writer = None
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / "config.yaml", config_to_yaml(cfg))
            truncate_history(run_dir / "history.jsonl", start_epoch)
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(run_dir / "tb"), purge_step=global_step + 1 if start_epoch else None)
        model: nn.Module = core
        if info.enabled:
            model = DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None)
        sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                     seed=cfg.seed, drop_last=False) if info.enabled else None
        end_epoch = tcfg.epochs if stop_after_epoch is None else min(tcfg.epochs, stop_after_epoch)
        use_amp = tcfg.amp and device.type == "cuda"
        for epoch in range(start_epoch, end_epoch):
            dataset.set_epoch(epoch)
            if sampler is not None:
                sampler.set_epoch(epoch)
                loader_sampler = sampler
            else:
                loader_sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
            loader = DataLoader(dataset, batch_size=tcfg.batch_size, sampler=loader_sampler,
                                num_workers=cfg.data.num_workers, drop_last=False, pin_memory=device.type == "cuda",
                                generator=torch.Generator().manual_seed(cfg.seed + epoch))
            core.train()
            for m in frozen_bn:
                m.eval()
            loss_sum, n_batches, t0 = 0.0, 0, time.time()
            lr = poly_lr(tcfg.lr, global_step, total_steps, tcfg.poly_power)
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tcfg.epochs}", unit="batch",
                       disable=not (info.is_main and self.show_progress), leave=False, dynamic_ncols=True)
            for batch in bar:
                images = batch["image"].to(device, non_blocking=True)
                target = batch["mask"].to(device, non_blocking=True)
                lr = poly_lr(tcfg.lr, global_step, total_steps, tcfg.poly_power)
                set_lr(optimizer, lr)
                amp = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()
                with amp:
                    logits = model(images)
                loss = segmentation_loss(logits, target)
                if not D.all_true(bool(torch.isfinite(loss)), info, device):
                    raise TrainingError(f"non-finite loss at epoch {epoch + 1}, step {n_batches + 1}; "
                                        f"the last good checkpoint is kept in {run_dir / 'checkpoints'}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if tcfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(core.parameters(), tcfg.grad_clip)
                optimizer.step()
                n_batches += 1
                global_step += 1
                loss_value = float(loss.detach())
                loss_sum += loss_value
                if info.is_main:
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                    if writer is not None and global_step % max(1, tcfg.log_every) == 0:
                        writer.add_scalar("train_step/loss", loss_value, global_step)
                        writer.add_scalar("train_step/lr", lr, global_step)
            mean_loss = float(D.mean_over_ranks(torch.tensor([loss_sum / max(1, n_batches)], device=device), info)[0])
            seconds = time.time() - t0
            if info.is_main:
                writer.add_scalar("train_epoch/loss", mean_loss, epoch + 1)
                writer.add_scalar("train_epoch/lr_last", lr, epoch + 1)
                writer.flush()
                record = {"epoch": epoch + 1, "step": global_step, "lr_last": lr, "loss": mean_loss,
                          "seconds": round(seconds, 2)}
                with open(run_dir / "history.jsonl", "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                if self.show_progress:
                    print(f"epoch {epoch + 1}/{tcfg.epochs} loss={mean_loss:.4f} lr={lr:.3g} ({seconds:.1f}s)")
            rngs = [rng_state()]
            if info.enabled:
                gathered: list = [None] * info.world_size
                torch.distributed.all_gather_object(gathered, rngs[0])
                rngs = gathered
            if info.is_main:
                save_checkpoint(run_dir, epoch + 1, core,
                                {"epoch": epoch + 1, "step": global_step, "optimizer": optimizer.state_dict(),
                                 "rng": rngs, "config": to_dict(cfg)}, keep=tcfg.keep_checkpoints)
            D.barrier(info)
        if writer is not None:
            writer.close()
        final = run_dir / "model.safetensors"
        if end_epoch == tcfg.epochs:
            if info.is_main:
                save_final_model(final, core, model_metadata(cfg, index.class_names, index.palette))
            D.barrier(info)
            return final
        return list_checkpoints(run_dir)[-1] if info.is_main else run_dir
