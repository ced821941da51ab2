"""Training loop for the patch-classifier family: one process or DDP under torchrun.

Checkpoints every epoch; ``resume=True`` continues from the newest complete checkpoint with the
same model, optimizer, epoch and RNG state, so an interrupted run ends where an uninterrupted
one would. Rank 0 writes logs (TensorBoard + history.jsonl), checkpoints and the final model.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from tagseg.config import ExperimentConfig, config_to_yaml, to_dict
from tagseg.data.build import build_index
from tagseg.data.views import TrainingViews
from tagseg.errors import TrainingError
from tagseg.families import get_family
from tagseg.training import distributed as D
from tagseg.training.checkpoint import (
    list_checkpoints, load_latest_checkpoint, rng_state, save_checkpoint, save_final_model, set_rng_state,
)
from tagseg.training.phases import apply_phase, phase_for_epoch
from tagseg.utils.io import write_text


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_metadata(cfg: ExperimentConfig, class_names: tuple[str, ...], palette: list[int]) -> dict:
    return {"format": get_family(cfg.model.family).format, "class_names": list(class_names), "palette": palette,
            "config": config_to_yaml(cfg)}


# Settings that may change between an interrupted run and its resumption.
RESUME_MAY_CHANGE = ("train.epochs", "train.cpu_threads", "train.log_every", "train.keep_checkpoints",
                     "data.num_workers", "device", "pseudo")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_resumable(saved: dict, current: dict, where: Path) -> None:
    """Refuse to resume a checkpoint written under another configuration (naming the keys)."""
    a, b = _flatten(saved), _flatten(current)
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)
                    and not any(k == p or k.startswith(p + ".") for p in RESUME_MAY_CHANGE))
    if differ:
        detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in differ[:6])
        raise TrainingError(f"cannot resume {where}: it was written with another configuration ({detail}"
                            f"{', ...' if len(differ) > 6 else ''}); use another --out or the same settings")


def cpu_threads(requested: int, loader_workers: int, processes: int = 1) -> int:
    """Intra-op threads for CPU training: ``requested``, or (0) the cores left after the
    data-loader workers of every process, at least 1. Oversubscribed cores make PyTorch's
    threads spin-wait on each other, which costs far more than it gains."""
    if requested > 0:
        return requested
    cores = os.cpu_count() or 1
    return max(1, cores // max(1, processes) - loader_workers)


def _call_hook(core: torch.nn.Module, name: str, epoch: int) -> None:
    """Optional per-epoch hooks of a model family (e.g. RCA's k-means at the end of an epoch)."""
    hook = getattr(core, name, None)
    if callable(hook):
        hook(epoch)


def truncate_history(path: Path, epochs_done: int) -> None:
    """Drop history records of epochs after the checkpoint being resumed (they are redone)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= epochs_done]
    write_text(path, "".join(line + "\n" for line in keep))


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class Trainer:
    """Train ``cfg`` into ``run_dir`` (config.yaml, checkpoints/, tb/, history.jsonl, model.safetensors)."""

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, resume: bool = False,
                 show_progress: bool = True) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.show_progress = show_progress

    def fit(self, stop_after_epoch: Optional[int] = None) -> Path:
        """Train until ``train.epochs`` (or stop after ``stop_after_epoch`` finished epochs, for
        splitting a run); return the path of the final model (or of the last checkpoint)."""
        cfg = self.cfg
        device_guess = "cuda" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
        info = D.init_distributed(device_guess)
        device = D.resolve_device(cfg.device, info)
        if device.type == "cpu":
            torch.set_num_threads(cpu_threads(cfg.train.cpu_threads, cfg.data.num_workers, info.world_size))
        try:
            return self._fit(info, device, stop_after_epoch)
        finally:
            D.shutdown(info)

    def _fit(self, info: D.DistInfo, device: torch.device, stop_after_epoch: Optional[int]) -> Path:
        cfg, run_dir = self.cfg, self.run_dir
        seed_everything(cfg.seed + info.rank)
        index = build_index(cfg.data, cfg.data.train_split).require_nonempty()
        dataset = TrainingViews(index, cfg.data.image_size, cfg.train.augment, seed=cfg.seed,
                                equivariance=cfg.method.et_weight > 0, crop_prob=cfg.method.et_crop_prob,
                                crop_size=cfg.method.et_crop_size)
        family = get_family(cfg.model.family)
        core = family.build(cfg, index.num_classes).to(device)
        head, enc = core.head_parameters(), list(core.encoder.parameters())
        optimizer = torch.optim.Adam([{"params": head, "name": "head"}, {"params": enc, "name": "encoder"}],
                                     lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        start_epoch = 0
        if self.resume:
            found = load_latest_checkpoint(run_dir, core, check=lambda st: check_resumable(
                st.get("config", {}), to_dict(cfg), run_dir))
            if found:
                ckpt, state = found
                optimizer.load_state_dict(state["optimizer"])
                start_epoch = int(state["epoch"])
                set_rng_state(state["rng"][min(info.rank, len(state["rng"]) - 1)])
                if info.is_main:
                    print(f"resuming from {ckpt} (epoch {start_epoch} of {cfg.train.epochs} done)")
        steps_per_epoch = math.ceil(len(dataset) / (cfg.train.batch_size * info.world_size))
        global_step = start_epoch * steps_per_epoch
        writer = None
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / "config.yaml", config_to_yaml(cfg))
            truncate_history(run_dir / "history.jsonl", start_epoch)
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(run_dir / "tb"), purge_step=global_step + 1 if start_epoch else None)
        if info.enabled:
            sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                         seed=cfg.seed, drop_last=False)
        else:
            sampler = None
        end_epoch = cfg.train.epochs if stop_after_epoch is None else min(cfg.train.epochs, stop_after_epoch)
        use_amp = cfg.train.amp and device.type == "cuda"
        phase_name, model = None, core
        for epoch in range(start_epoch, end_epoch):
            phase = phase_for_epoch(cfg.train, epoch)
            frozen = apply_phase(core, cfg.train, phase)
            for group in optimizer.param_groups:
                group["lr"] = phase.lr
            if phase.name != phase_name:  # the trainable set changed: (re)wrap for DDP
                phase_name = phase.name
                model = DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None) \
                    if info.enabled else core
            dataset.set_epoch(epoch)
            if sampler is not None:
                sampler.set_epoch(epoch)
                loader_sampler = sampler
            else:
                loader_sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
            loader = DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=loader_sampler,
                                num_workers=cfg.data.num_workers, drop_last=False, pin_memory=device.type == "cuda",
                                generator=torch.Generator().manual_seed(cfg.seed + epoch),
                                persistent_workers=False)
            core.train()
            for m in frozen:
                m.eval()
            _call_hook(core, "on_epoch_start", epoch)
            sums: dict[str, float] = {}
            n_batches, t0 = 0, time.time()
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs} [{phase.name}]", unit="batch",
                       disable=not (info.is_main and self.show_progress), leave=False, dynamic_ncols=True)
            for batch in bar:
                batch = _to_device(batch, device)
                amp = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()
                with amp:
                    loss, parts = family.loss(model, core, batch, cfg, epoch)
                if not D.all_true(bool(torch.isfinite(loss)), info, device):
                    detail = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items())
                    raise TrainingError(f"non-finite loss at epoch {epoch + 1}, step {n_batches + 1} ({detail}); "
                                        f"the last good checkpoint is kept in {run_dir / 'checkpoints'}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.train.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(core.parameters(), cfg.train.grad_clip)
                optimizer.step()
                n_batches += 1
                global_step += 1
                parts["total"] = loss.detach()
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                if info.is_main:
                    bar.set_postfix(loss=f"{float(parts['total']):.4f}")
                    if writer is not None and global_step % max(1, cfg.train.log_every) == 0:
                        for k, v in parts.items():
                            writer.add_scalar(f"train_step/{k}", float(v), global_step)
            _call_hook(core, "on_epoch_end", epoch)
            means = {k: v / max(1, n_batches) for k, v in sums.items()}
            means = dict(zip(means, D.mean_over_ranks(torch.tensor(list(means.values()), device=device), info).tolist())) \
                if means else means
            seconds = time.time() - t0
            if info.is_main:
                for k, v in means.items():
                    writer.add_scalar(f"train_epoch/{k}", v, epoch + 1)
                writer.add_scalar("train_epoch/lr", phase.lr, epoch + 1)
                writer.flush()
                record = {"epoch": epoch + 1, "phase": phase.name, "lr": phase.lr, "seconds": round(seconds, 2), **means}
                with open(run_dir / "history.jsonl", "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                if self.show_progress:
                    print(f"epoch {epoch + 1}/{cfg.train.epochs} [{phase.name}] " +
                          " ".join(f"{k}={v:.4f}" for k, v in means.items()) + f" ({seconds:.1f}s)")
            rngs = [rng_state()]
            if info.enabled:
                gathered: list = [None] * info.world_size
                torch.distributed.all_gather_object(gathered, rngs[0])
                rngs = gathered
            if info.is_main:
                save_checkpoint(run_dir, epoch + 1, core,
                                {"epoch": epoch + 1, "optimizer": optimizer.state_dict(), "rng": rngs,
                                 "config": to_dict(cfg)}, keep=cfg.train.keep_checkpoints)
            D.barrier(info)
        if writer is not None:
            writer.close()
        final = run_dir / "model.safetensors"
        if end_epoch == cfg.train.epochs:
            if info.is_main:
                save_final_model(final, core, model_metadata(cfg, index.class_names, index.palette))
            D.barrier(info)
            return final
        return list_checkpoints(run_dir)[-1] if info.is_main else run_dir
