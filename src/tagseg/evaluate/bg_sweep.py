"""Background-threshold sweep for CAM pseudo-masks (METHODS.md §2: "background = constant
threshold (default 0.25, sweepable)").

The CAMs of every image are computed once (at ``pseudo.image_size`` / ``scales`` / ``flip``);
each threshold then only changes the argmax, so scoring many thresholds costs one network pass per
image. The threshold with the highest mIoU is reported as the best one, labelled as chosen on the
ground truth: it is an upper bound for that model, not a number obtained without masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from tagseg.config import PseudoConfig
from tagseg.data.records import DatasetIndex
from tagseg.data.views import image_to_tensor
from tagseg.errors import ConfigError, DataError, TagsegError
from tagseg.metrics.miou import MIOU_CONVENTION
from tagseg.metrics.predict_and_score import predict_and_score
from tagseg.metrics.scorer import Scorer, require_masks
from tagseg.methods.families import get_family
from tagseg.utils.io import read_image, write_json

BEST_LABEL = "best threshold chosen on the ground truth"


def check_thresholds(thresholds: Sequence[float]) -> list[float]:
    """Sorted distinct thresholds, each in [0, 1]; ConfigError otherwise."""
    values = sorted({float(t) for t in thresholds})
    if not values:
        raise ConfigError("background sweep: give at least one threshold")
    bad = [t for t in values if not 0.0 <= t <= 1.0]
    if bad:
        raise ConfigError(f"background sweep: thresholds must be in [0, 1], got {bad}")
    return values


@torch.no_grad()
def sweep_background_thresholds(model: torch.nn.Module, index: DatasetIndex, cfg: PseudoConfig,
                                thresholds: Sequence[float], device: torch.device | str = "cpu",
                                contour: bool = True, progress: bool = True) -> dict:
    """Score CAM pseudo-masks of ``index`` (which needs ground-truth masks) for every threshold.

    model: a CAM-family network (:class:`tagseg.models.cam_net.CAMNet`) in eval mode.
    Returns {'thresholds', 'results': [{'threshold', 'miou', 'pixel_accuracy', 'contour_f',
    'j_and_f', 'iou'}], 'best': the result with the highest mIoU plus 'label', 'dataset',
    'images', 'miou_convention'}.
    """
    from tagseg.inference.cam import normalised_cams
    from tagseg.methods.cam_objective import cam_pseudo_mask
    from tagseg.models.cam_net import CAMNet

    if not isinstance(model, CAMNet):
        raise TagsegError(f"the background-threshold sweep needs a CAM-family model, got {type(model).__name__}")
    values = check_thresholds(thresholds)
    require_masks(index)
    k = index.num_classes
    scorers = [Scorer(k, index.class_names, contour=contour, per_image=False) for _ in values]

    def predict(rec, gt: np.ndarray) -> dict[int, np.ndarray]:
        image = image_to_tensor(read_image(rec.image_path)).to(device)
        fg = normalised_cams(model, image, rec.labels, cfg).float().cpu()
        if gt.shape != tuple(fg.shape[-2:]):
            raise DataError(f"mask {rec.mask_path} is {gt.shape[1]}×{gt.shape[0]} px but image {rec.image_path} "
                            f"is {fg.shape[-1]}×{fg.shape[-2]} px")
        return {i: cam_pseudo_mask(fg, thr).numpy().astype(np.uint8) for i, thr in enumerate(values)}

    predict_and_score(index.require_nonempty().records, predict, dict(enumerate(scorers)), k, progress=progress,
                      desc="bg sweep")
    results = []
    for thr, scorer in zip(values, scorers):
        s = scorer.summary()
        results.append({"threshold": thr, "miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"], "iou": s["iou"],
                        "contour_f": s.get("contour_f"), "j_and_f": s.get("j_and_f")})
    best = max(results, key=lambda r: (r["miou"], -r["threshold"]))  # ties: the lower threshold
    return {"thresholds": values, "results": results, "best": {**best, "label": BEST_LABEL},
            "dataset": index.name, "images": len(index), "miou_convention": MIOU_CONVENTION,
            "pseudo": {"image_size": cfg.image_size, "scales": list(cfg.scales), "flip": cfg.flip}}


def format_sweep_table(result: dict) -> str:
    """A plain-text table of a sweep: one row per threshold, the best one marked."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    lines = [f"background threshold sweep on {result['dataset']} ({result['images']} images)",
             f"{'threshold':>10}{'mIoU':>8}{'contour F':>11}{'J&F':>8}{'pixel acc.':>12}"]
    best = result["best"]["threshold"]
    for r in result["results"]:
        mark = "  <- best" if r["threshold"] == best else ""
        lines.append(f"{r['threshold']:>10.3g}{pct(r['miou']):>8}{pct(r['contour_f']):>11}{pct(r['j_and_f']):>8}"
                     f"{pct(r['pixel_accuracy']):>12}{mark}")
    lines.append(f"best: {best:g} (mIoU {pct(result['best']['miou'])}), {BEST_LABEL}")
    return "\n".join(lines)


def sweep_output_path(run_dir: Path, split: str, cfg: PseudoConfig | object,
                      thresholds: Sequence[float]) -> Path:
    """Where a sweep goes by default: ``<run>/bg_sweep_<split>.json`` for the first one; when that
    exists, a name that spells the settings (``bg_sweep_<split>_<size>px_s<scales>[_flip]_t<thresholds>``),
    numbered ``-2``, ``-3``... when that exists too. An earlier sweep's file is never replaced.
    ``cfg``: the run's ExperimentConfig (its ``pseudo`` settings name the file) or a PseudoConfig."""
    pseudo = getattr(cfg, "pseudo", cfg)
    first = run_dir / f"bg_sweep_{split}.json"
    if not first.exists():
        return first
    scales = "-".join(f"{s:g}" for s in pseudo.scales)
    thr = "-".join(f"{t:g}" for t in thresholds)
    stem = f"bg_sweep_{split}_{pseudo.image_size}px_s{scales}{'_flip' if pseudo.flip else ''}_t{thr}"
    path, n = run_dir / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = run_dir / f"{stem}-{n}.json"
    return path


def sweep_bg_cli(run_dir: Path, split: str | None, thresholds: list[float], overrides: Sequence[str] = (),
                 out: Path | None = None) -> dict:
    """Sweep the background threshold of the CAM model in ``run_dir`` on ``split`` (default:
    data.pseudo_split of the run); print the table and write it as JSON to ``out`` (default:
    :func:`sweep_output_path`, which never replaces an earlier sweep). ``overrides``: key=value settings on top of the run's config
    (e.g. pseudo.scales). Returns the sweep result."""
    from tagseg.config import check_verb_overrides
    from tagseg.data.build import build_index
    from tagseg.experiment import load_experiment
    from tagseg.inference.loading import load_trained_model
    from tagseg.engine.distributed import DistInfo, resolve_device

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise TagsegError(f"{run_dir} is not a tagseg run folder (no config.yaml)")
    values = check_thresholds(thresholds)
    check_verb_overrides("eval --sweep-bg", overrides)
    cfg = load_experiment(str(run_dir / "config.yaml"), overrides)
    device = resolve_device(cfg.device, DistInfo())
    model, _, info = load_trained_model(run_dir / "model.safetensors", device)
    if not get_family(info["family"]).cam_maps:
        raise TagsegError(f"{run_dir} holds a {info['family']!r} model; the background-threshold sweep is for "
                          "the CAM families (model.family=cam or seam)")
    split = split or cfg.data.pseudo_split
    index = build_index(cfg.data, split)
    result = sweep_background_thresholds(model, index, cfg.pseudo, values, device)
    result["split"] = split
    result["run"] = str(run_dir)
    print(format_sweep_table(result))
    path = Path(out) if out else sweep_output_path(run_dir, split, cfg, values)
    write_json(path, result)
    print(f"sweep -> {path}")
    return result
