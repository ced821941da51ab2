"""The training loop (the only one): one process, or DDP under ``torchrun``.

Checkpoints every epoch; ``resume=True`` continues from the newest complete checkpoint with the
same weights, optimizer, step, RNG state and selection record, after checking that the config
matches, so an interrupted run ends where an uninterrupted one would. Rank 0 writes the logs
(TensorBoard + history.jsonl), the checkpoints and the final ``model.safetensors`` (the epoch
chosen by the task's ``select_epoch`` hook, else the last one).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler
from tqdm import tqdm

from tagseg.engine import distributed as D
from tagseg.engine import precision as P
from tagseg.engine.checkpoint import (
    list_checkpoints, load_latest_checkpoint, rng_state, save_checkpoint, save_final_model, set_rng_state,
    state_tensors, write_safetensors,
)
from tagseg.engine.resume import check_resumable, truncate_history
from tagseg.engine.sampling import EpochWeightedSampler
from tagseg.engine.task import Task
from tagseg.engine.threads import cpu_threads
from tagseg.errors import TrainingError
from tagseg.runner.manifest import write_manifest
from tagseg.utils.io import output_root, write_text
from tagseg.utils.safe_paths import refuse_links_out

BEST_WEIGHTS = "best.safetensors"  # under <run>/checkpoints/: the weights of the selected epoch so far


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _call_hook(core: torch.nn.Module, name: str, epoch: int) -> None:
    """Optional per-epoch hooks of a model (e.g. RCA's k-means at the end of an epoch)."""
    hook = getattr(core, name, None)
    if callable(hook):
        hook(epoch)


class _EpochRandomSampler(RandomSampler):
    """RandomSampler whose order is a function of (seed, epoch) only (set with ``set_epoch``)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        super().__init__(dataset)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator = torch.Generator().manual_seed(self.seed * 100003 + epoch)


class _WithEpoch(Sampler):
    """Yields (epoch, index): the epoch travels with every index, so persistent data-loader
    workers (whose copy of the dataset never sees ``set_epoch``) draw the right augmentations."""

    def __init__(self, base: Sampler) -> None:
        self.base, self.epoch = base, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, i) for i in self.base)

    def __len__(self) -> int:
        return len(self.base)


class _EpochItems(Dataset):
    """``dataset[(epoch, i)]`` -> ``dataset.set_epoch(epoch)`` (when it changed), then ``dataset[i]``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset, self.epoch = dataset, None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        if epoch != self.epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
            self.epoch = epoch
        return self.dataset[i]


def make_loader(task: Task, info: D.DistInfo, device: torch.device) -> tuple[DataLoader, _WithEpoch]:
    """The run's one DataLoader (workers persist over epochs when there are any; pinned memory
    on CUDA) and its sampler, whose ``set_epoch`` selects the epoch's order and augmentations."""
    dataset = task.dataset
    if task.sample_weights is not None:
        if len(task.sample_weights) != len(dataset):
            raise ValueError(f"{len(task.sample_weights)} sampling weights for {len(dataset)} items")
        base = EpochWeightedSampler(task.sample_weights, task.seed, len(dataset), info.rank, info.world_size)
    elif info.enabled:
        base = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                  seed=task.seed, drop_last=False)
    else:
        base = _EpochRandomSampler(dataset, task.seed)
    sampler = _WithEpoch(base)
    loader = DataLoader(_EpochItems(dataset), batch_size=task.batch_size, sampler=sampler,
                        num_workers=task.num_workers, drop_last=False, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(task.seed),
                        persistent_workers=task.persistent_workers and task.num_workers > 0)
    return loader, sampler


def fit(build: Callable[[D.DistInfo, torch.device], Task], run_dir: str | Path, *, seed: int,
        device: str = "auto", resume: bool = False, show_progress: bool = True,
        stop_after_epoch: Optional[int] = None, threads: Optional[tuple[int, int]] = None) -> Path:
    """Train the task ``build(dist_info, device)`` returns into ``run_dir``.

    seed: the RNGs are seeded with seed + rank before ``build`` runs; device: auto | cpu | cuda |
    cuda:N; stop_after_epoch: stop after that many finished epochs (splitting a run); threads:
    (requested, data-loader workers) for :func:`cpu_threads` on CPU, None = leave torch's setting.
    Returns the final model file (or the last checkpoint when stopped early).
    """
    run_dir = Path(run_dir)
    refuse_links_out(run_dir)  # before any work: a pre-planted link would be written through
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    info = D.init_distributed("cuda" if cuda else "cpu")
    dev = D.resolve_device(device, info)
    if dev.type == "cpu" and threads is not None:
        torch.set_num_threads(cpu_threads(threads[0], threads[1], info.world_size))
    try:
        seed_everything(seed + info.rank)
        task = build(info, dev)
        with output_root(run_dir):
            return _run(task, run_dir, info, dev, resume, show_progress, stop_after_epoch)
    finally:
        D.shutdown(info)


def _run(task: Task, run_dir: Path, info: D.DistInfo, device: torch.device, resume: bool, show_progress: bool,
         stop_after_epoch: Optional[int]) -> Path:
    core, optimizer, dataset = task.model, task.optimizer, task.dataset
    precision = P.resolve_precision(task.precision, device, task.amp)
    scaler = P.grad_scaler(precision, device)
    if task.channels_last:
        P.channels_last(core)
    start_epoch, selection = 0, None
    if resume:
        found = load_latest_checkpoint(run_dir, core, check=lambda st: check_resumable(
            st.get("config", {}), task.config, run_dir, task.resume_may_change, task.resume_keys))
        if found:
            ckpt, state = found
            optimizer.load_state_dict(state["optimizer"])
            start_epoch = int(state["epoch"])
            set_rng_state(state["rng"][min(info.rank, len(state["rng"]) - 1)])
            selection = state.get("selection")
            if scaler.is_enabled() and "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            if info.is_main:
                print(f"resuming from {ckpt} (epoch {start_epoch} of {task.epochs} done)")
    steps_per_epoch = math.ceil(len(dataset) / (task.batch_size * info.world_size))
    global_step = start_epoch * steps_per_epoch
    writer = None
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", task.config_yaml)
        truncate_history(run_dir / "history.jsonl", start_epoch)
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / "tb"), purge_step=global_step + 1 if start_epoch else None)
    loader, sampler = make_loader(task, info, device)
    end_epoch = task.epochs if stop_after_epoch is None else min(task.epochs, stop_after_epoch)
    lr_key = task.schedule.lr_key
    wrapped_for, model = object(), core
    for epoch in range(start_epoch, end_epoch):
        plan = task.schedule.epoch_start(epoch, global_step, optimizer)
        if plan.name != wrapped_for:  # the trainable set changed: (re)wrap for DDP
            wrapped_for = plan.name
            model = DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None) \
                if info.enabled else core
            model = P.compiled(model, task.compile)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        core.train()
        for m in plan.frozen:
            m.eval()
        _call_hook(core, "on_epoch_start", epoch)
        sums: dict[str, float] = {}
        n_batches, t0, lr = 0, time.time(), plan.lr
        label = f"epoch {epoch + 1}/{task.epochs}" + (f" [{plan.name}]" if plan.name else "")
        bar = tqdm(loader, desc=label, unit="batch", disable=not (info.is_main and show_progress), leave=False,
                   dynamic_ncols=True)
        for batch in bar:
            batch = _to_device(batch, device)
            if task.channels_last:
                batch = P.batch_channels_last(batch)
            lr = task.schedule.step(global_step, optimizer)
            with P.autocast(precision, device):
                loss, parts = task.loss(model, core, batch, epoch)
            if not D.all_true(bool(torch.isfinite(loss)), info, device):
                detail = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items())
                raise TrainingError(f"non-finite loss at epoch {epoch + 1}, step {n_batches + 1}"
                                    f"{f' ({detail})' if detail else ''}; "
                                    f"the last good checkpoint is kept in {run_dir / 'checkpoints'}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if task.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(core.parameters(), task.grad_clip)
            scaler.step(optimizer)  # skipped by an fp16 scaler when a gradient overflowed
            scaler.update()
            n_batches += 1
            global_step += 1
            parts = {**parts, task.total_name: loss.detach()}
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if info.is_main:
                bar.set_postfix(loss=f"{float(parts[task.total_name]):.4f}", lr=f"{lr:.2e}")
                if writer is not None and global_step % max(1, task.log_every) == 0:
                    for k, v in parts.items():
                        writer.add_scalar(f"train_step/{k}", float(v), global_step)
                    writer.add_scalar("train_step/lr", lr, global_step)
        _call_hook(core, "on_epoch_end", epoch)
        means = {k: v / max(1, n_batches) for k, v in sums.items()}
        means = dict(zip(means, D.mean_over_ranks(torch.tensor(list(means.values()), device=device), info).tolist())) \
            if means else means
        seconds = time.time() - t0
        record = {"epoch": epoch + 1, "step": global_step, **({"phase": plan.name} if plan.name else {}),
                  lr_key: lr, "seconds": round(seconds, 2), **means}
        if task.select_epoch is not None:
            selection = _select(task, core, epoch, selection, run_dir, info)
            if selection is not None and selection.get("epochs", [None])[-1] == epoch + 1:  # scored this epoch
                record["selection_score"] = selection["scores"][-1]
        if info.is_main:
            for k, v in means.items():
                writer.add_scalar(f"train_epoch/{k}", v, epoch + 1)
            writer.add_scalar(f"train_epoch/{lr_key}", lr, epoch + 1)
            writer.flush()
            with open(run_dir / "history.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            if show_progress:
                print(f"{label} " + " ".join(f"{k}={v:.4f}" for k, v in means.items()) +
                      f" {lr_key}={lr:.3g} ({seconds:.1f}s)")
        rngs = [rng_state()]
        if info.enabled:
            gathered: list = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if info.is_main:
            state = {"epoch": epoch + 1, "step": global_step, "optimizer": optimizer.state_dict(), "rng": rngs,
                     "config": task.config}
            if selection is not None:
                state["selection"] = selection
            if scaler.is_enabled():
                state["scaler"] = scaler.state_dict()
            save_checkpoint(run_dir, epoch + 1, core, state, keep=task.keep_checkpoints)
        D.barrier(info)
    if writer is not None:
        writer.close()
    final = run_dir / "model.safetensors"
    if end_epoch == task.epochs:
        if info.is_main:
            meta = {**task.metadata(), "selected_epoch": task.epochs, "selection": "last"}
            if selection is not None:
                meta.update(selected_epoch=selection["best_epoch"], selection="best")
                if selection["best_epoch"] != task.epochs:  # the file holds the chosen epoch's weights
                    core.load_state_dict(load_file(str(run_dir / "checkpoints" / BEST_WEIGHTS)))
                if show_progress:
                    print(f"selected epoch {selection['best_epoch']} (score {selection['best_score']:.4f})")
                write_text(run_dir / "selection.json", json.dumps({
                    "selection": "best", "selected_epoch": selection["best_epoch"],
                    "score": selection["best_score"], "metric": getattr(task.select_epoch, "description", None),
                    "scores": dict(zip(map(str, selection.get("epochs", [])), selection["scores"])),
                    "why": "the highest score among the scored epochs (ties keep the earlier epoch)"}, indent=2) + "\n")
            save_final_model(final, core, meta)
            if task.manifest is not None:  # how this stage's folder was made, once its model exists
                write_manifest(run_dir, task.manifest, {"epochs": task.epochs, "model": final.name,
                                                        "selected_epoch": meta["selected_epoch"]})
        D.barrier(info)
        return final
    return list_checkpoints(run_dir)[-1] if info.is_main else run_dir


def _select(task: Task, core: torch.nn.Module, epoch: int, selection: Optional[dict], run_dir: Path,
            info: D.DistInfo) -> Optional[dict]:
    """Score the epoch just trained with the task's hook; keep the best epoch's weights (rank 0).
    A hook that returns None skips this epoch (e.g. it scores every N epochs); ``epochs`` lists
    the scored ones."""
    raw = task.select_epoch(core, epoch)
    if raw is None:
        return selection
    score = float(raw)
    selection = dict(selection or {"scores": [], "best_epoch": None, "best_score": None})
    selection["scores"] = [*selection["scores"], score]
    selection["epochs"] = [*selection.get("epochs", []), epoch + 1]
    if selection["best_score"] is None or score > selection["best_score"]:
        selection.update(best_epoch=epoch + 1, best_score=score)
        if info.is_main:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            write_safetensors(run_dir / "checkpoints" / BEST_WEIGHTS, state_tensors(core))
    return selection
