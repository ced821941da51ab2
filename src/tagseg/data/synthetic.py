"""A deterministic synthetic dataset for the demo: textured shapes on cluttered backgrounds.

Five foreground classes differ in shape, colour *and* texture, but none of the three cues
alone is perfect: class hue ranges overlap and sometimes stray, every texture mixes two
tones, and the background is littered with small blotches and strokes painted in object
colours. Objects range from about one 16-pixel patch to about a third of the image and
may occlude each other. Masks are exact (computed from the same shapes that are painted).

Every sample is drawn from its own ``numpy.random.Generator`` seeded with ``(seed, index)``,
so a sample never depends on how many others are generated or in which order.

Written layout (the "folder dataset" format)::

    root/classes.txt         one class name per line, line 1 is "background"
    root/images/<id>.png     RGB
    root/masks/<id>.png      8-bit palette PNG of class indices (255 = ignore)
    root/labels.csv          header "image,labels"; labels joined by ";"
    root/splits/train.txt    one id per line (also val.txt)
    root/synthetic.json      the generation parameters and whether generation completed
"""

from __future__ import annotations

import colorsys
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from tagseg.data.classes import IGNORE_INDEX, voc_palette
from tagseg.errors import ConfigError
from tagseg.runner.layout import OutputLayout
from tagseg.runner.manifest import MANIFEST_NAME, ManifestInfo, write_manifest
from tagseg.utils.io import atomic_path, save_mask_png, write_json, write_text

SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "disc", "box", "triangle", "cross", "star")

GENERATOR_VERSION = 1
"""Bump when rendering changes, so that stale datasets on disk are regenerated."""

_GENERATOR_NAME = "tagseg.data.synthetic"

_REFERENCE_SIZE = 160
"""Image side (px) at which the pixel lengths below are given; other sizes scale them."""

_MIN_VISIBLE_PX = 20
"""Objects with fewer visible pixels (at the reference size) after occlusion are dropped."""

# Hue centre (0..1 turn) per foreground class; ranges overlap between neighbours.
_HUE_CENTRE = {1: 0.00, 2: 0.60, 3: 0.31, 4: 0.10, 5: 0.78}
_HUE_SPREAD = 0.09
_STRAY_HUE_PROB = 0.2  # chance that an object takes any hue at all
_OBJECT_COUNT_PROBS = (0.35, 0.40, 0.25)  # 1, 2 or 3 objects
_REPEAT_CLASS_PROB = 0.2  # chance that a later object repeats an earlier object's class
_NEAR_PREVIOUS_PROB = 0.45  # chance that a later object is placed overlapping an earlier one


@dataclass(frozen=True)
class _Shape:
    """One object: class index, centre (px), radius (px), rotation (rad), aspect ratio (0..1]."""

    cls: int
    cy: float
    cx: float
    radius: float
    angle: float
    aspect: float


# --------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------


def _window(
    cy: float, cx: float, reach: float, size: int
) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Bounding window of a disc of radius ``reach`` clipped to the image.

    Returns the (row, col) slices and pixel-centre offsets dy (h, 1), dx (1, w) in px.
    """
    y0 = min(max(int(math.floor(cy - reach)), 0), size)
    y1 = min(max(int(math.ceil(cy + reach)) + 1, y0), size)
    x0 = min(max(int(math.floor(cx - reach)), 0), size)
    x1 = min(max(int(math.ceil(cx + reach)) + 1, x0), size)
    dy = (np.arange(y0, y1, dtype=np.float64) + 0.5 - cy)[:, None]
    dx = (np.arange(x0, x1, dtype=np.float64) + 0.5 - cx)[None, :]
    return slice(y0, y1), slice(x0, x1), dy, dx


def _rotate(dy: np.ndarray, dx: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate pixel offsets into the object's frame; returns (u, v) in px, broadcast (h, w)."""
    c, s = math.cos(angle), math.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c


def _shape_inside(cls: int, u: np.ndarray, v: np.ndarray, aspect: float) -> np.ndarray:
    """Boolean (h, w): which points (u, v) in radius units lie inside the class shape."""
    if cls == 1:  # disc: a slightly elliptic disc
        return (u / aspect) ** 2 + v**2 <= 1.0
    if cls == 2:  # box: a rectangle with half sides 0.8 and 0.8 * aspect
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8 * aspect)
    if cls == 3:  # triangle: equilateral, circumradius 1 (inradius 0.5)
        inside = np.ones(np.broadcast(u, v).shape, dtype=bool)
        for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6):
            inside &= u * math.cos(a) + v * math.sin(a) <= 0.5
        return inside
    if cls == 4:  # cross: two bars of half width 0.3
        au, av = np.abs(u), np.abs(v)
        return ((au <= 1.0) & (av <= 0.3)) | ((av <= 1.0) & (au <= 0.3))
    if cls == 5:  # star: five rounded points
        rho = np.hypot(u, v)
        return rho <= 0.58 + 0.42 * np.cos(5.0 * np.arctan2(v, u))
    raise ValueError(f"no shape for class index {cls}")


def _shape_mask(obj: _Shape, size: int) -> tuple[slice, slice, np.ndarray, np.ndarray, np.ndarray]:
    """Window slices, inside mask (h, w) and rotated px coords (u, v) of one object."""
    ys, xs, dy, dx = _window(obj.cy, obj.cx, obj.radius * 1.15 + 1.0, size)
    u, v = _rotate(dy, dx, obj.angle)
    inside = _shape_inside(obj.cls, u / obj.radius, v / obj.radius, obj.aspect)
    inside = np.broadcast_to(inside, (dy.shape[0], dx.shape[1]))
    return ys, xs, inside, u, v


# --------------------------------------------------------------------------------------
# colour and texture
# --------------------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """One RGB colour (3,) in 0..255 from HSV components in 0..1."""
    rgb = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return np.array(rgb) * 255.0


def _object_hue(cls: int, rng: np.random.Generator) -> float:
    if rng.random() < _STRAY_HUE_PROB:
        return float(rng.random())
    return _HUE_CENTRE[cls] + float(rng.uniform(-_HUE_SPREAD, _HUE_SPREAD))


def _object_tones(cls: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The two RGB tones (3,) of an object's texture; the second one is class-specific."""
    h = _object_hue(cls, rng)
    s = float(rng.uniform(0.55, 0.95))
    v = float(rng.uniform(0.6, 0.95))
    first = _hsv(h, s, v)
    if cls == 1:  # disc: darker rim
        second = _hsv(h, s, v * 0.5)
    elif cls == 2:  # box: pale squares
        second = _hsv(h, s * 0.3, 0.95)
    elif cls == 3:  # triangle: dark stripes
        second = _hsv(h, s, v * 0.35)
    elif cls == 4:  # cross: dots of the complementary hue
        second = _hsv(h + 0.5, s, v)
    else:  # star: speckle of a neighbouring hue
        second = _hsv(h + 0.12, s * 0.8, v * 0.7)
    return first, second


def _texture(cls: int, u: np.ndarray, v: np.ndarray, radius: float, scale: float,
             rng: np.random.Generator) -> np.ndarray:
    """Mixing weight (h, w) in 0..1 of the second tone; u, v are rotated px offsets."""
    shape = np.broadcast(u, v).shape
    if cls == 1:  # smooth radial shading
        return np.clip((u**2 + v**2) / radius**2, 0.0, 1.0)
    if cls == 2:  # checkerboard
        p = rng.uniform(4.0, 7.0) * scale
        return ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float64)
    if cls == 3:  # stripes at a random angle in the object's frame
        p = rng.uniform(4.0, 6.0) * scale
        phi = rng.uniform(0.0, math.pi)
        return (np.floor((u * math.cos(phi) + v * math.sin(phi)) / p) % 2).astype(np.float64)
    if cls == 4:  # polka dots on a square lattice
        p = rng.uniform(5.0, 7.5) * scale
        du = np.mod(u, p) - p / 2
        dv = np.mod(v, p) - p / 2
        return (du**2 + dv**2 <= (0.32 * p) ** 2).astype(np.float64)
    if cls == 5:  # per-pixel speckle
        return (rng.random(shape) < 0.45).astype(np.float64)
    raise ValueError(f"no texture for class index {cls}")


# --------------------------------------------------------------------------------------
# background
# --------------------------------------------------------------------------------------


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a (g, g, C) grid to (size, size, C), corners aligned."""
    g = grid.shape[0]
    pos = np.linspace(0.0, g - 1.0, size)
    i0 = np.clip(np.floor(pos).astype(int), 0, g - 2)
    f = (pos - i0).astype(grid.dtype)
    rows = grid[i0] * (1 - f)[:, None, None] + grid[i0 + 1] * f[:, None, None]
    return rows[:, i0] * (1 - f)[None, :, None] + rows[:, i0 + 1] * f[None, :, None]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 (size, size, 3) muted colour field with coarse and fine texture, in 0..255."""
    base_h = float(rng.random())
    coarse = np.stack(
        [_hsv(base_h + rng.uniform(-0.15, 0.15), rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.8))
         for _ in range(25)]
    ).reshape(5, 5, 3)
    fine_cells = max(size // 8, 2)
    fine = rng.normal(0.0, 14.0, size=(fine_cells, fine_cells, 1))
    image = _upsample(coarse.astype(np.float32), size) + _upsample(fine.astype(np.float32), size)
    return image


def _paint_clutter(image: np.ndarray, rng: np.random.Generator, scale: float) -> None:
    """Paint small blotches and thin strokes in object-like colours onto ``image`` (in place)."""
    size = image.shape[0]
    n_blotches = int(rng.integers(12, 30) * scale**2)
    n_strokes = int(rng.integers(3, 9) * scale**2)
    for k in range(n_blotches + n_strokes):
        cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        colour = _object_tones(cls, rng)[int(rng.integers(0, 2))]
        cy, cx = rng.uniform(0, size, size=2)
        angle = float(rng.uniform(0, math.pi))
        if k < n_blotches:
            ry = rng.uniform(2.0, 6.5) * scale
            rx = ry * rng.uniform(0.4, 1.0)
            ys, xs, dy, dx = _window(cy, cx, ry + 1.0, size)
            u, v = _rotate(dy, dx, angle)
            wobble = 1.0 + 0.25 * np.cos(3.0 * np.arctan2(v, u) + rng.uniform(0, 2 * math.pi))
            inside = (u / rx) ** 2 + (v / ry) ** 2 <= wobble
        else:
            half_len = rng.uniform(4.0, 13.0) * scale
            half_width = rng.uniform(0.5, 1.5) * scale
            ys, xs, dy, dx = _window(cy, cx, half_len + 1.0, size)
            u, v = _rotate(dy, dx, angle)
            inside = (np.abs(u) <= half_len) & (np.abs(v) <= half_width)
        image[ys, xs][inside] = colour


# --------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------


def _layout(rng: np.random.Generator, size: int, scale: float) -> list[_Shape]:
    """1-3 objects in painting order (later ones occlude earlier ones)."""
    n = int(rng.choice(len(_OBJECT_COUNT_PROBS), p=_OBJECT_COUNT_PROBS)) + 1
    r_min, r_max = 8.0 * scale, 0.33 * size
    shapes: list[_Shape] = []
    for _ in range(n):
        if shapes and rng.random() < _REPEAT_CLASS_PROB:
            cls = shapes[int(rng.integers(0, len(shapes)))].cls
        else:
            cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        radius = float(rng.uniform(r_min, r_max))
        if shapes and rng.random() < _NEAR_PREVIOUS_PROB:
            other = shapes[int(rng.integers(0, len(shapes)))]
            dist = (other.radius + radius) * rng.uniform(0.45, 0.9)
            theta = rng.uniform(0, 2 * math.pi)
            cy, cx = other.cy + dist * math.sin(theta), other.cx + dist * math.cos(theta)
        else:
            cy, cx = rng.uniform(0, size, size=2)
        lo, hi = 0.6 * radius, size - 0.6 * radius
        cy, cx = float(np.clip(cy, lo, hi)), float(np.clip(cx, lo, hi))
        shapes.append(_Shape(cls, cy, cx, radius, float(rng.uniform(0, 2 * math.pi)),
                             float(rng.uniform(0.6, 1.0))))
    return shapes


def _owner_map(shapes: list[_Shape], size: int) -> np.ndarray:
    """int (size, size): index of the topmost shape covering each pixel, -1 for background."""
    owner = np.full((size, size), -1, dtype=np.int64)
    for k, obj in enumerate(shapes):
        ys, xs, inside, _, _ = _shape_mask(obj, size)
        owner[ys, xs][inside] = k
    return owner


def _visible_shapes(shapes: list[_Shape], size: int, min_visible: int) -> list[_Shape]:
    """Drop shapes with fewer than ``min_visible`` visible pixels.

    Dropping a shape only uncovers the shapes beneath it, so one pass suffices.
    """
    owner = _owner_map(shapes, size)
    counts = np.bincount(owner[owner >= 0], minlength=len(shapes))
    return [s for s, c in zip(shapes, counts) if c >= min_visible]


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------


def render_sample(index: int, seed: int = 0, size: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """Render sample ``index`` of the dataset with ``seed``.

    Returns (image uint8 (size, size, 3) RGB, mask uint8 (size, size) of indices into
    SYNTHETIC_CLASSES). The same (index, seed, size) always gives identical arrays.
    """
    if index < 0 or seed < 0:
        raise ConfigError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    if size < 32:
        raise ConfigError(f"synthetic image size must be >= 32 px, got {size}")
    rng = np.random.default_rng([seed, index])
    scale = size / _REFERENCE_SIZE
    min_visible = max(int(round(_MIN_VISIBLE_PX * scale**2)), 1)

    shapes: list[_Shape] = []
    while not shapes:  # in practice the topmost object is always visible enough
        shapes = _visible_shapes(_layout(rng, size, scale), size, min_visible)

    image = _background(rng, size)
    _paint_clutter(image, rng, scale)
    mask = np.zeros((size, size), dtype=np.uint8)
    for obj in shapes:
        ys, xs, inside, u, v = _shape_mask(obj, size)
        first, second = _object_tones(obj.cls, rng)
        t = _texture(obj.cls, u, v, obj.radius, scale, rng)
        t = np.broadcast_to(t, inside.shape)[inside][:, None]
        image[ys, xs][inside] = first * (1.0 - t) + second * t
        mask[ys, xs][inside] = obj.cls
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(6.0)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def mark_boundaries(mask: np.ndarray, width: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Copy of ``mask`` (H, W) with pixels within ``width`` px of a class change set to ignore.

    The band straddles the boundary (both sides), like the VOC annotation border.
    ``width`` = 0 returns an unchanged copy.
    """
    if width < 0:
        raise ConfigError(f"ignore_border must be >= 0, got {width}")
    out = np.array(mask, dtype=np.uint8, copy=True)
    if width == 0:
        return out
    footprint = np.ones((2 * width + 1, 2 * width + 1), dtype=bool)
    hi = ndimage.maximum_filter(out, footprint=footprint, mode="nearest")
    lo = ndimage.minimum_filter(out, footprint=footprint, mode="nearest")
    out[hi != lo] = ignore_index
    return out


def image_labels(mask: np.ndarray) -> list[str]:
    """Names of the foreground classes present in a mask (H, W), in class order."""
    present = set(np.unique(mask).tolist())
    return [name for i, name in enumerate(SYNTHETIC_CLASSES) if i > 0 and i in present]


def sample_id(index: int) -> str:
    """File stem of sample ``index``: ``syn_00012``."""
    return f"syn_{index:05d}"


def _params(num_train: int, num_val: int, size: int, seed: int, ignore_border: int) -> dict:
    return {
        "generator": _GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "size": size,
        "seed": seed,
        "ignore_border": ignore_border,
        "classes": list(SYNTHETIC_CLASSES),
    }


def _expected_files(root: Path, num_images: int) -> list[Path]:
    files = [root / "classes.txt", root / "labels.csv", root / "splits" / "train.txt",
             root / "splits" / "val.txt"]
    for i in range(num_images):
        files += [root / "images" / f"{sample_id(i)}.png", root / "masks" / f"{sample_id(i)}.png"]
    return files


def _read_marker(root: Path) -> dict | None:
    """The parameters recorded in ``root/synthetic.json``, or None if absent or unreadable."""
    try:
        recorded = json.loads((root / "synthetic.json").read_text())
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _is_complete(root: Path, params: dict) -> bool:
    recorded = _read_marker(root)
    if recorded != {**params, "complete": True}:
        return False
    return all(p.is_file() for p in _expected_files(root, params["num_train"] + params["num_val"]))


def _is_interrupted_generation(root: Path) -> bool:
    """True if ``root`` holds a generation of this module that never finished."""
    recorded = _read_marker(root)
    return recorded is not None and recorded.get("generator") == _GENERATOR_NAME \
        and recorded.get("complete") is False


def _remove_previous(root: Path) -> None:
    """Delete the files a previous generation wrote (and only those)."""
    (root / "synthetic.json").unlink(missing_ok=True)
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    for name in ("classes.txt", "labels.csv", "splits/train.txt", "splits/val.txt"):
        (root / name).unlink(missing_ok=True)
    for sub in ("images", "masks"):
        if (root / sub).is_dir():
            for p in (root / sub).glob("syn_*.png"):
                p.unlink()


def generate_dataset(root: str | Path, num_train: int = 320, num_val: int = 80,
                     size: int = 160, seed: int = 0, ignore_border: int = 0,
                     overwrite: bool = False, progress: bool = False) -> Path:
    """Write the synthetic dataset in the folder layout under ``root`` and return ``root``.

    Images ``syn_00000`` .. ``syn_{num_train-1}`` form the train split, the next
    ``num_val`` the val split. Every file is written atomically; ``synthetic.json`` records
    the parameters, with ``"complete": false`` first and ``true`` once everything is written.
    If ``root`` already holds a complete dataset with the same parameters, nothing is
    written. An interrupted generation is simply redone. Any other existing dataset (other
    parameters, or files missing) is replaced only when ``overwrite`` is true, otherwise
    ConfigError is raised; replacing deletes only the files this function writes.
    ``ignore_border`` > 0 sets every pixel within that many px of an object boundary (on
    both sides) to 255. ``progress`` shows a progress bar while images are written.
    """
    root = Path(root)
    if num_train < 1 or num_val < 0:
        raise ConfigError(f"need num_train >= 1 and num_val >= 0, got {num_train} and {num_val}")
    if size < 32:
        raise ConfigError(f"synthetic image size must be >= 32 px, got {size}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    if ignore_border < 0:
        raise ConfigError(f"ignore_border must be >= 0, got {ignore_border}")
    params = _params(num_train, num_val, size, seed, ignore_border)
    if _is_complete(root, params):
        if not (root / MANIFEST_NAME).is_file():  # generated before datasets carried one
            _write_manifest(root, params)
        return root

    existing = (root / "synthetic.json").exists() or (root / "images").exists() \
        or (root / "masks").exists() or (root / "labels.csv").exists()
    if existing and not overwrite and not _is_interrupted_generation(root):
        raise ConfigError(
            f"{root} already holds a dataset that differs from the requested one "
            f"({params}) or is incomplete; pass overwrite=True to regenerate it"
        )
    _remove_previous(root)
    write_json(root / "synthetic.json", {**params, "complete": False})

    palette = voc_palette()
    rows = ["image,labels"]
    ids = [sample_id(i) for i in range(num_train + num_val)]
    for i, sid in enumerate(tqdm(ids, desc="synthetic data", unit="img", disable=not progress, leave=False)):
        image, mask = render_sample(i, seed=seed, size=size)
        rows.append(f"{sid}.png,{';'.join(image_labels(mask))}")
        with atomic_path(root / "images" / f"{sid}.png") as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
        save_mask_png(root / "masks" / f"{sid}.png", mark_boundaries(mask, ignore_border), palette)

    write_text(root / "classes.txt", "\n".join(SYNTHETIC_CLASSES) + "\n")
    write_text(root / "labels.csv", "\n".join(rows) + "\n")
    write_text(root / "splits" / "train.txt", "".join(f"{s}\n" for s in ids[:num_train]))
    write_text(root / "splits" / "val.txt", "".join(f"{s}\n" for s in ids[num_train:]))
    write_json(root / "synthetic.json", {**params, "complete": True})
    _write_manifest(root, params)
    return root


def _write_manifest(root: Path, params: dict) -> None:
    """``manifest.json`` of the generated folder: its parameters and the files on disk."""
    num_train, num_val = params["num_train"], params["num_val"]
    ids = [sample_id(i) for i in range(num_train + num_val)]
    layout = OutputLayout(root, {"images": ("images", "{id}.png"), "masks": ("masks", "{id}.png")})
    counts = {"images": len(ids), "splits": {"train": num_train, "val": num_val}, "on_disk": layout.count(ids)}
    write_manifest(root, ManifestInfo(stage="synthetic data", settings=params), counts)
