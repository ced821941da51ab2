"""The refine stage, image by image, on the per-image runner.

Output folder ``<run>/refine/<method>/<split>/``: ``masks/<id>.png`` (full label maps, the
refined pseudo-masks), for PAR also ``confident/<id>.png`` (ToCo's two-threshold labels, 255 =
unsure), and ``manifest.json``.

- ``par``: PAR on the pseudo stage's class probabilities (the run's background rule) at
  1/down_scale, argmax -> masks; the two-threshold seeds -> confident.
- ``irn``: boundary map of the trained branch (flip-averaged) on the stride grid, seeds resized
  to it and damped by (1 - boundary), the sparse walk, upsampled, divided by the maximum,
  background threshold, argmax.
- ``psa``: affinities of the trained head on its grid, seeds with PSA's background
  (1 - max)^α averaged onto it, the sparse walk, upsampled, argmax.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tagseg.config import TRAINED_REFINE_METHODS, ExperimentConfig, PSAConfig, RefineConfig, resolve_psa
from tagseg.data.records import DatasetIndex, ImageRecord
from tagseg.data.views import image_to_tensor
from tagseg.errors import ConfigError
from tagseg.refine.heads import grid_feature_affinity
from tagseg.refine.pairs import pairs_in_grid, search_offsets
from tagseg.refine.par import par, par_kernel, par_seed_labels
from tagseg.refine.random_walk import propagate_to_boundary, random_walk, walk_labels
from tagseg.refine.seeds import Seeds, seeds_of
from tagseg.runner import ManifestInfo, OutputLayout, RunStats, WorkerStep, file_sha256, run_per_image
from tagseg.utils.io import read_image, save_mask_png


def refine_layout(out_dir: str | Path, method: str) -> OutputLayout:
    files = {"masks": ("masks", "{id}.png")}
    if method == "par":
        files["confident"] = ("confident", "{id}.png")
    return OutputLayout(Path(out_dir), files)


def par_masks(image: np.ndarray, seeds: Seeds, cfg: RefineConfig) -> tuple[np.ndarray, np.ndarray]:
    """(mask, confident) uint8 (H, W) of one image with PAR; only background and the image's
    classes are propagated (the others are 0 in the pseudo stage's probabilities)."""
    p = cfg.par
    h, w = image.shape[:2]
    if not len(seeds.keys):
        return np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    small = (max(1, h // p.down_scale), max(1, w // p.down_scale))
    img = image_to_tensor(image)[None] * 255.0
    img_small = F.interpolate(img, size=small, mode="bilinear", align_corners=False)
    all_keys = np.concatenate([[0], seeds.keys])
    probs = F.interpolate(seeds.probs[torch.from_numpy(all_keys)][None].float(), size=small, mode="bilinear",
                          align_corners=False)
    kernel = par_kernel(img_small, p.dilations, p.w1, p.w2)
    refined = par(img_small, probs, p.dilations, p.num_iter, p.w1, p.w2, kernel)
    refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)[0]
    mask = all_keys[refined.argmax(0).numpy()].astype(np.uint8)
    confident = par_seed_labels(image, seeds.scores, seeds.keys, p.high_thres, p.low_thres, p.down_scale,
                                p.dilations, p.num_iter, p.w1, p.w2, kernel)
    return mask, confident


def grid_scores(scores: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Scores (C, H, W) averaged onto the walk's grid (h, w): (C, h, w)."""
    t = torch.from_numpy(scores)[None]
    return F.adaptive_avg_pool2d(t, grid)[0] if t.shape[1] else t.new_zeros((0,) + grid)


def upsample_walk(walked: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Walked scores (C, h, w) back to the image (C, H, W), bilinear."""
    return F.interpolate(walked[None], size=size, mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def irn_walk(net: nn.Module, image: np.ndarray, seeds: Seeds, cfg: RefineConfig, device) -> torch.Tensor:
    """IRN's walked scores (C, H, W) of the image's classes at image size, before the background
    threshold: boundary map of the trained branch (flip-averaged) on the stride grid, seeds averaged
    onto it and damped by (1 - boundary), the sparse walk, bilinear upsampling."""
    c = cfg.irn
    h, w = image.shape[:2]
    boundary = net.boundary_probs(image_to_tensor(image).to(device), flip=c.flip).cpu()  # (h4, w4)
    x = grid_scores(seeds.scores, tuple(boundary.shape))
    return upsample_walk(propagate_to_boundary(x, boundary, c.radius, c.beta, c.exp_times), (h, w))


@torch.no_grad()
def irn_mask(net: nn.Module, image: np.ndarray, seeds: Seeds, cfg: RefineConfig, device) -> np.ndarray:
    """IRN's semantic mask of one image with a trained :class:`~tagseg.refine.train.BoundaryNet`."""
    if not len(seeds.keys):
        return np.zeros(image.shape[:2], np.uint8)
    up = irn_walk(net, image, seeds, cfg, device)
    return walk_labels(up, seeds.keys, cfg.irn.bg_thres_walk).numpy().astype(np.uint8)


@torch.no_grad()
def psa_affinity(net: nn.Module, image: np.ndarray, radius: int, device) -> tuple[torch.Tensor, tuple[int, int]]:
    """AffinityNet's affinities of one image: (N,) over the pairs of :func:`pairs_in_grid` within
    ``radius`` on the head's grid, and that grid (gh, gw)."""
    feats = net.affinity_features(image_to_tensor(image).to(device)).cpu()    # (1, C, gh, gw)
    return grid_feature_affinity(feats, search_offsets(radius))[0], tuple(feats.shape[-2:])


def psa_walk_from_affinity(aff: torch.Tensor, grid: tuple[int, int], seeds: Seeds, s: PSAConfig,
                           walk_alphas: Sequence[float], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """AffinityNet's walked scores at ``size`` (H, W) from affinities already computed
    (:func:`psa_affinity`) with the resolved settings ``s``: (A, H, W) PSA backgrounds (1 - max)^α,
    one per α of ``walk_alphas``, and (C, H, W) the image's classes. The walk is linear in its
    input, so every α's background walks in the same pass as the classes and equals a walk of its own."""
    src, dst, _ = pairs_in_grid(grid[0], grid[1], s.radius)
    src_t, dst_t = torch.from_numpy(src), torch.from_numpy(dst)
    top = 1.0 - seeds.scores.max(0, keepdims=True)
    bgs = [np.power(top, a).astype(np.float32) for a in walk_alphas]
    x = grid_scores(np.concatenate([*bgs, seeds.scores]), grid)
    up = upsample_walk(random_walk(x, src_t, dst_t, aff, s.beta, s.logt), size)
    return up[:len(bgs)], up[len(bgs):]


@torch.no_grad()
def psa_walk(net: nn.Module, image: np.ndarray, seeds: Seeds, cfg: RefineConfig, device,
             walk_alphas: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """AffinityNet's walked scores of one image (:func:`psa_walk_from_affinity`) for each α of
    ``walk_alphas``: backgrounds (A, H, W) and classes (C, H, W)."""
    s = resolve_psa(cfg.psa)
    aff, grid = psa_affinity(net, image, s.radius, device)
    return psa_walk_from_affinity(aff, grid, seeds, s, walk_alphas, image.shape[:2])


@torch.no_grad()
def psa_walk_mask(aff: torch.Tensor, grid: tuple[int, int], seeds: Seeds, s: PSAConfig, size: tuple[int, int]
                  ) -> np.ndarray:
    """The mask of :func:`psa_mask` from affinities already computed (:func:`psa_affinity`), with the
    resolved settings ``s`` (walk_alpha, beta, logt, radius); uint8 (H, W) = ``size``."""
    bg, fg = psa_walk_from_affinity(aff, grid, seeds, s, [s.walk_alpha], size)
    all_keys = torch.from_numpy(np.concatenate([[0], seeds.keys]))
    return all_keys[torch.cat([bg, fg]).argmax(0)].numpy().astype(np.uint8)


@torch.no_grad()
def psa_mask(net: nn.Module, image: np.ndarray, seeds: Seeds, cfg: RefineConfig, device) -> np.ndarray:
    """AffinityNet's mask of one image with a trained :class:`~tagseg.refine.train.AffinityNet`."""
    s = resolve_psa(cfg.psa)
    h, w = image.shape[:2]
    if not len(seeds.keys):
        return np.zeros((h, w), np.uint8)
    aff, grid = psa_affinity(net, image, s.radius, device)
    return psa_walk_mask(aff, grid, seeds, s, (h, w))


def refine_step(model: nn.Module, cfg: ExperimentConfig, method: str, family: str, palette: list[int],
                root: Path, device, net: Optional[nn.Module] = None):
    """The runner's step: (record, paths) -> writes that image's refined mask(s)."""
    if method in TRAINED_REFINE_METHODS and net is None:
        raise ConfigError(f"refine --method {method} needs its trained network")

    def step(rec: ImageRecord, paths: dict[str, Path]) -> None:
        image = read_image(rec.image_path)
        seeds = seeds_of(model, image, rec.labels, cfg.pseudo, family, device)
        if method == "par":
            mask, confident = par_masks(image, seeds, cfg.refine)
            save_mask_png(paths["confident"], confident, palette, root=root)
        elif method == "irn":
            mask = irn_mask(net, image, seeds, cfg.refine, device)
        else:
            mask = psa_mask(net, image, seeds, cfg.refine, device)
        save_mask_png(paths["masks"], mask, palette, root=root)
    return step


def _worker_step(model_path: str, net_path: Optional[str], cfg: ExperimentConfig, method: str, family: str,
                 palette: list[int], root: str):
    from tagseg.inference.loading import load_trained_model
    from tagseg.refine.train import load_refine_net

    model = load_trained_model(model_path, "cpu")[0]
    net = load_refine_net(model, cfg, Path(net_path), method, "cpu") if net_path else None
    return refine_step(model, cfg, method, family, palette, Path(root), "cpu", net)


def refine_manifest(cfg: ExperimentConfig, method: str, family: str, manifest: Optional[dict[str, Any]] = None,
                    model_path: Optional[Path] = None, net_path: Optional[Path] = None) -> ManifestInfo:
    """What ``manifest.json`` of a refined-mask folder records: the method's settings, the family,
    the sha256 of the classifier's file and of the trained head's (irn / psa; each when given), and
    ``manifest``'s facts (run, split, config, input)."""
    settings = {"par": cfg.refine.par, "irn": cfg.refine.irn, "psa": resolve_psa(cfg.refine.psa)}
    models = {role: file_sha256(path) for role, path in (("classifier", model_path), ("head", net_path))
              if path is not None}
    return ManifestInfo(stage="refine", settings=settings[method], extra={"family": family, "method": method},
                        models=models, **(manifest or {}))


def run_refine(model: nn.Module, index: DatasetIndex, out_dir: str | Path, cfg: ExperimentConfig, method: str,
               family: str, device="cpu", net: Optional[nn.Module] = None, shard: tuple[int, int] = (0, 1),
               overwrite: bool = False, progress: bool = True, manifest: Optional[dict[str, Any]] = None,
               workers: int = 1, model_path: Optional[Path] = None, net_path: Optional[Path] = None,
               threads: Optional[int] = None) -> RunStats:
    """Write refined masks for the images of ``index`` (this shard) into ``out_dir``.

    workers > 1: that many CPU processes, each loading the run's model from ``model_path`` (and
    the trained head from ``net_path`` for irn / psa) and running ``threads`` threads."""
    out_dir = Path(out_dir)
    info = refine_manifest(cfg, method, family, manifest, model_path, net_path)
    worker_step = None
    if workers > 1:
        if model_path is None or (method != "par" and net_path is None):
            raise ConfigError("parallel refinement needs the model file (and the trained head's file)")
        if torch.device(device).type != "cpu":
            raise ConfigError("--workers runs CPU processes; on a GPU split the set with --shard instead")
        worker_step = WorkerStep(_worker_step, (str(model_path), str(net_path) if net_path else None, cfg, method,
                                                family, index.palette, str(out_dir)))
    step = refine_step(model, cfg, method, family, index.palette, out_dir, device, net)
    return run_per_image(index.require_nonempty().records, step, refine_layout(out_dir, method), shard=shard,
                         overwrite=overwrite, progress=progress, desc=f"refine {method}", workers=workers,
                         worker_step=worker_step, threads=threads, manifest=info)
