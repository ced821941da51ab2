"""``tagseg predict``: masks and colour overlays for any images with a trained segmentation model.

Inputs are image files and/or folders (their images, not recursive). For each image the
outputs are ``<out>/masks/<name>.png`` (palette PNG of class indices, palette from the model
file) and ``<out>/overlays/<name>.png`` (the photo with every non-background class tinted in
its palette colour). Images are read in their displayed orientation (EXIF applied), so masks
and overlays match what a viewer shows. Images that cannot be read, and file names that are not
plain names (path separators, ``..``, control characters; see :mod:`tagseg.utils.safe_paths`),
are skipped and reported at the end together with empty or missing inputs;
``<out>/predictions.json`` lists what was written and what failed. Every output path is checked
to lie inside ``<out>`` before it is written.
"""

from __future__ import annotations

import importlib

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from tagseg.data.classes import IGNORE_INDEX, VOC_CLASSES
from tagseg.errors import ConfigError, DataError, TagsegError
from tagseg.config import check_verb_overrides
from tagseg.runner import ManifestInfo, OutputLayout, file_sha256, run_per_image
from tagseg.segment.config import SegInferenceConfig, validate_inference
from tagseg.segment.evaluate import check_class_names
from tagseg.segment.inference import load_segmenter, predict_mask
from tagseg.segment.models import SegmentationNet
from tagseg.utils.io import atomic_path, read_image, save_mask_png, write_json
from tagseg.utils.safe_paths import check_id, path_inside

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
OVERLAY_ALPHA = 0.5


@dataclass
class PredictReport:
    """Outcome of a prediction run: masks written and (input, reason) pairs that failed."""

    written: list[Path] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"written": [str(p) for p in self.written],
                "failures": [{"input": i, "error": e} for i, e in self.failures],
                "seconds": round(self.seconds, 2)}


def collect_images(inputs: Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files and folders into a list of image files (folders: files with an image suffix,
    sorted, not recursive). Returns (files, problems) where problems are missing paths and
    folders without images."""
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append((str(path), f"folder contains no images (looked for {', '.join(IMAGE_SUFFIXES)})"))
        elif path.is_file():
            found = [path]
        else:
            problems.append((str(path), "no such file or folder"))
            continue
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                files.append(p)
    return files, problems


def output_names(files: Sequence[Path]) -> list[str]:
    """A distinct output name per file: its stem, or ``<stem>_<suffix>`` (then ``_2``, ...) on clashes."""
    names: list[str] = []
    used: set[str] = set()
    for p in files:
        name = p.stem
        if name in used:
            name = f"{p.stem}_{p.suffix.lstrip('.').lower()}"
        base, n = name, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        names.append(name)
    return names


def colour_overlay(image: np.ndarray, mask: np.ndarray, palette: Sequence[int], alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """image uint8 (H, W, 3), mask uint8 (H, W) -> uint8 (H, W, 3): classes other than background
    (0) and ignore (255) blended with their palette colour at ``alpha``."""
    table = np.zeros((256, 3), dtype=np.float32)
    pal = np.asarray(list(palette)[: 256 * 3], dtype=np.float32).reshape(-1, 3)
    table[: len(pal)] = pal
    colours = table[mask]
    tint = ((mask != 0) & (mask != IGNORE_INDEX))[..., None]
    out = np.where(tint, (1 - alpha) * image.astype(np.float32) + alpha * colours, image.astype(np.float32))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def read_class_list(spec: str) -> tuple[tuple[str, ...], str]:
    """Class names to check a model against: 'voc', a classes file (one name per line, background
    first) or a folder holding ``classes.txt``. Returns (names, description)."""
    from tagseg.data.folder import read_class_names

    if spec.lower() == "voc":
        return VOC_CLASSES, "PASCAL VOC"
    path = Path(spec)
    if path.is_dir():
        path = path / "classes.txt"
    return read_class_names(path), str(path)


def resolve_model_path(spec: str | Path) -> Path:
    """A model file, or a run folder holding ``model.safetensors``."""
    path = Path(spec)
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return path / "model.safetensors"
        if (path / "state.safetensors").is_file() or (path / "state.pt").is_file():
            raise TagsegError(f"{path} is a training checkpoint, which holds no class names or palette; "
                              "use the run's model.safetensors (written when training finishes)")
        raise TagsegError(f"no model.safetensors in {path}")
    if not path.is_file():
        raise TagsegError(f"model file not found: {path}")
    return path


def inference_with_overrides(inference: SegInferenceConfig, overrides: Sequence[str]) -> SegInferenceConfig:
    """``inference`` with ``inference.key=value`` overrides applied; ConfigError for other keys."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not overrides:
        return inference
    check_verb_overrides("predict", overrides)
    try:
        extra = OmegaConf.from_dotlist([o[len("inference."):] for o in overrides])
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(inference), extra))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid inference override: {exc}") from exc


@dataclass(frozen=True)
class PredictInput:
    """One image to predict: its output name (the runner's record id) and file."""

    id: str
    path: Path


def predict_layout(out_dir: Path) -> OutputLayout:
    """``masks/<name>.png`` and ``overlays/<name>.png`` per image."""
    return OutputLayout(out_dir, {"masks": ("masks", "{id}.png"), "overlays": ("overlays", "{id}.png")})


def predict_images(model: SegmentationNet, files: Sequence[Path], out_dir: Path, inference: SegInferenceConfig,
                   palette: Sequence[int], device: torch.device | str = "cpu", progress: bool = True,
                   manifest: Optional[ManifestInfo] = None, lock: bool = False) -> PredictReport:
    """Write a mask and an overlay for every file through the per-image runner (atomic writes,
    progress; with ``lock`` the folder's lock, with ``manifest`` a ``manifest.json``, as
    ``tagseg predict`` does); unreadable images and unsafe names become failures, in input order."""
    report = PredictReport()
    t0 = time.time()
    out_dir = Path(out_dir)
    layout = predict_layout(out_dir)
    inputs, failed = [], {}
    for i, (path, name) in enumerate(zip(files, output_names(files))):
        try:
            check_id(name, path)
            layout.paths(name)
        except DataError as exc:
            failed[i] = (str(path), str(exc))
            continue
        inputs.append((i, PredictInput(name, path)))

    def step(item: PredictInput, paths: dict[str, Path]) -> None:
        image = read_image(item.path)
        mask = predict_mask(model, image, inference, device)
        save_mask_png(paths["masks"], mask, palette, root=out_dir)
        with atomic_path(paths["overlays"], root=out_dir) as tmp:
            Image.fromarray(colour_overlay(image, mask, palette)).save(tmp, format="PNG")

    records = [r for _, r in inputs]
    stats = run_per_image(records, step, layout, overwrite=True, progress=progress, desc="predicting",
                          manifest=manifest, lock=lock, keep_going=(DataError,))
    reasons = dict(stats.failures)
    for i, rec in inputs:
        if rec.id in reasons:
            failed[i] = (str(rec.path), reasons[rec.id])
        else:
            report.written.append(layout.paths(rec.id)["masks"])
    report.failures = [failed[i] for i in sorted(failed)]
    report.seconds = time.time() - t0
    return report


def run_predict(inputs: Sequence[str | Path], model_spec: str | Path, out_dir: str | Path,
                scales: Optional[Sequence[float]] = None, flip: Optional[bool] = None, crf: Optional[str] = None,
                classes: Optional[str] = None, device: str = "auto", progress: bool = True,
                overrides: Sequence[str] = ()) -> PredictReport:
    """Load the model, check its class set (when ``classes`` is given), predict every image.

    Inference settings default to those stored in the model file; ``overrides``
    (``inference.key=value``), then ``scales``, ``flip`` and ``crf`` override them. Missing inputs, folders without images and undecodable images are recorded
    in the report (and in ``<out>/predictions.json``); the other images are still processed.
    Raises DataError when no input yields any image.
    """
    from tagseg.engine.distributed import DistInfo, resolve_device

    model_path = resolve_model_path(model_spec)
    dev = resolve_device(device, DistInfo())
    model, cfg, info = load_segmenter(model_path, dev)
    if classes is not None:
        names, desc = read_class_list(classes)
        check_class_names(info["class_names"], names, f"model {model_path}", desc)
    inference = inference_with_overrides(cfg.inference, overrides)
    if scales is not None:
        inference = replace(inference, scales=list(scales))
    if flip is not None:
        inference = replace(inference, flip=flip)
    if crf is not None:
        inference = replace(inference, crf=crf)
    validate_inference(inference)
    if inference.crf != "none":  # fail once, before any image, when the CRF module is unusable
        try:
            importlib.import_module("tagseg.inference.crf")
        except ImportError as exc:
            raise TagsegError(f"crf={inference.crf!r} needs the dense CRF module tagseg.inference.crf, which cannot be imported: {exc}") from exc
    files, problems = collect_images(inputs)
    if not files:
        detail = "; ".join(f"{i}: {e}" for i, e in problems) or "no inputs given"
        raise DataError(f"no images to predict ({detail})")
    out = Path(out_dir)
    with torch.no_grad():
        report = predict_images(model, files, out, inference, info["palette"], dev, progress,
                                manifest=ManifestInfo(stage="predict", settings=inference, config=cfg,
                                                      run=model_path.parent, input=", ".join(map(str, inputs)),
                                                      models={"segmenter": file_sha256(model_path)}),
                                lock=True)
    report.failures = problems + report.failures
    write_json(path_inside(out, "predictions.json"), {"model": str(model_path), "class_names": info["class_names"],
                                          "inference": {"scales": list(inference.scales), "flip": inference.flip,
                                                        "crf": inference.crf},
                                          **report.to_json()})
    return report
