"""Atomic file writing and safe image / mask reading.

Images and masks are untrusted: every decoding problem (missing, empty, truncated or corrupt
file, an unsupported mode, more pixels than the decompression-bomb limit) is a DataError naming
the file. Writers are atomic (a temporary file beside the target, renamed onto it), check that
their target lies inside their output folder when one is given, and turn OS failures
(read-only folder, full disk, no permission) into an OutputError naming the path, leaving no
temporary file and the previous version of the target intact.

Image conversion rules (:func:`read_image`): the EXIF orientation is applied (pixels as a
viewer displays them); 16-bit and 32-bit integer grayscale are scaled from 0..65535 to 0..255
(rounded); alpha is dropped (the stored colour is kept, as PIL's ``convert`` does); palette,
grayscale, bilevel and CMYK images are converted to RGB by PIL.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps

from tagseg.errors import DataError, OutputError, TagsegError
from tagseg.utils.safe_paths import path_inside

# Never silently accept truncated files: a truncated JPEG must raise.
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: Default decompression-bomb limit (pixels per image): PIL's own default.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
_LIMITS = {"max_pixels": DEFAULT_MAX_IMAGE_PIXELS}
_ORIENTATION = 0x0112  # EXIF tag
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS


def set_max_image_pixels(limit: int) -> None:
    """Set the largest image (width × height, pixels) the readers accept, for this process."""
    limit = int(limit)
    if limit < 1:
        raise DataError(f"data.max_image_pixels must be >= 1, got {limit}")
    _LIMITS["max_pixels"] = limit
    Image.MAX_IMAGE_PIXELS = limit  # PIL's own check then fires only at twice this, after ours


def max_image_pixels() -> int:
    """The current decompression-bomb limit in pixels (see :func:`set_max_image_pixels`)."""
    return _LIMITS["max_pixels"]


def process_umask() -> int:
    """The process's umask (read without changing it where the OS allows: /proc on Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic swap, restored at once
    os.umask(mask)
    return mask


def umask_mode(folder: bool = False) -> int:
    """The mode a plain ``open``/``mkdir`` would give under the current umask: 0o644 for files and
    0o755 for folders under the usual 022. Temporary files and folders (0o600/0o700) get it
    before they are renamed into place, so outputs are as shareable as the user asked for."""
    return (0o777 if folder else 0o666) & ~process_umask()


_OUTPUT_ROOTS: list[Path] = []


@contextlib.contextmanager
def output_root(root: str | os.PathLike) -> Iterator[Path]:
    """While open, every atomic write to a path under ``root`` (by its plain, unresolved name) is
    checked with :func:`path_inside`, as if ``root=root`` had been given: a folder inside the
    tree that is a symlink to somewhere outside is refused, not written through. Forked worker
    processes inherit the roots open when they start."""
    root_path = Path(os.path.abspath(root))
    _OUTPUT_ROOTS.append(root_path)
    try:
        yield root_path
    finally:
        _OUTPUT_ROOTS.remove(root_path)


def _guard_roots(path: Path) -> None:
    absolute = Path(os.path.abspath(path))
    for root in _OUTPUT_ROOTS:
        if absolute == root or root in absolute.parents:
            path_inside(root, absolute.relative_to(root))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, root: Optional[str | os.PathLike] = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    Readers never see a half-written file, and a failure leaves nothing behind. With ``root``,
    ``path`` must lie inside that folder (DataError otherwise, before anything is written), as
inside every :func:`output_root` that holds it. An
    OSError (read-only folder, full disk, no permission) becomes an OutputError naming ``path``.
    """
    path = Path(path)
    if root is not None:
        path_inside(root, os.path.abspath(path))  # absolute: a relative path would be joined onto root twice
    _guard_roots(path)
    tmp_path: Optional[Path] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
        try:
            os.fchmod(fd, umask_mode())  # mkstemp makes it private (0600); the output follows the umask
        finally:
            os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.replace(tmp_path, path)
        tmp_path = None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp_path is not None:
            with contextlib.suppress(OSError):
                tmp_path.unlink(missing_ok=True)


_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp(\.[^.]*)?$")


def remove_stale_temp_files(paths: Sequence[Path]) -> int:
    """Delete the temporary files :func:`atomic_path` left beside ``paths`` (a writer killed by
    ``kill -9`` cannot clean up). Only call this while no other process writes those paths (the
    caller holds their folder's lock). Returns the number of files removed."""
    by_folder: dict[Path, set[str]] = {}
    for path in paths:
        by_folder.setdefault(Path(path).parent, set()).add(Path(path).name)
    removed = 0
    for folder, names in by_folder.items():
        try:
            entries = [e for e in os.scandir(folder) if e.name.startswith(".") and e.is_file(follow_symlinks=False)]
        except OSError:
            continue
        for entry in entries:
            found = _TEMP_NAME.match(entry.name)
            if found and found.group("target") in names:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def write_json(path: str | os.PathLike, obj: Any, root: Optional[str | os.PathLike] = None) -> None:
    """Write ``obj`` as indented JSON, atomically (inside ``root`` when given)."""
    with atomic_path(path, root) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def write_text(path: str | os.PathLike, text: str, root: Optional[str | os.PathLike] = None) -> None:
    """Write a text file atomically (inside ``root`` when given)."""
    with atomic_path(path, root) as tmp:
        tmp.write_text(text)


def _too_large(what: str, path: Path, pixels: Optional[int], size: str) -> DataError:
    amount = f"{pixels} pixels{size}" if pixels is not None else "too many pixels"
    return DataError(f"{what} {path} has {amount}, more than the limit of {max_image_pixels()} (a "
                     "decompression-bomb guard); raise data.max_image_pixels if the file is trusted")


@contextlib.contextmanager
def _open_image(path: Path, what: str) -> Iterator[Image.Image]:
    """Open ``path`` with PIL after the existence, emptiness and pixel-count checks; any decoder
    failure becomes a DataError naming the file."""
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    try:
        if path.stat().st_size == 0:
            raise DataError(f"cannot decode {what} {path}: the file is empty (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                limit = max_image_pixels()
                if w * h > limit:
                    raise _too_large(what, path, w * h, f" ({w}×{h})")
                yield im
    except TagsegError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own guard, at twice the limit, fired in open()
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(what, path, int(found.group(1)) if found else None, "") from exc
    except Exception as exc:  # PIL raises many types on hostile bytes (OSError, SyntaxError, struct.error...)
        raise DataError(f"cannot decode {what} {path}: {type(exc).__name__}: {exc}") from exc


def _displayed(im: Image.Image) -> Image.Image:
    """The decoded image turned as its EXIF orientation says (a copy), or ``im`` when upright."""
    im.load()  # a PNG's eXIf chunk may follow the pixel data
    if im.getexif().get(_ORIENTATION, 1) not in range(2, 9):
        return im  # upright (or an invalid tag, which viewers ignore too): no copy
    return ImageOps.exif_transpose(im)


def _to_rgb(im: Image.Image, path: Path) -> np.ndarray:
    """Decoded image of any PIL mode -> uint8 (H, W, 3); see the module docstring for the rules."""
    mode = im.mode
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I (PNG 16-bit grayscale opens as one of these)
        values = np.asarray(im).astype(np.int64)
        gray = ((np.clip(values, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        raise DataError(f"image {path} holds 32-bit floats (mode F); convert it to 8- or 16-bit")
    if mode in ("RGBa", "La", "PA"):  # premultiplied / palette+alpha: through plain RGBA first
        im = im.convert("RGBA")
    if im.mode != "RGB":
        im = im.convert("RGB")  # drops alpha; palette, L, 1, CMYK, YCbCr, LAB by PIL's rules
    return np.array(im, dtype=np.uint8)  # writable (C extensions may require it)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB, shape (H, W, 3), in its displayed (EXIF) orientation.

    Raises DataError naming the file if it is missing, empty, corrupt, truncated, too large or
    of an unsupported kind.
    """
    path = Path(path)
    with _open_image(path, "image") as im:
        arr = _to_rgb(_displayed(im), path)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise DataError(f"image {path} decoded to an unexpected shape {arr.shape}")
    return arr


def read_mask(path: str | os.PathLike, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Read a class-index mask PNG as uint8 (H, W); values must be < num_classes or ignore_index.

    Palette PNGs are read as raw indices (not colours); an EXIF orientation is applied as for
    images. Raises DataError naming the file and the unknown values otherwise.
    """
    path = Path(path)
    with _open_image(path, "mask") as im:
        if im.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
            raise DataError(f"mask {path} has mode {im.mode!r}; expected a single-channel class-index PNG")
        arr = np.asarray(_displayed(im))
    if arr.ndim != 2:
        raise DataError(f"mask {path} decoded to shape {arr.shape}; expected (H, W)")
    values = np.unique(arr)
    bad = values[(values >= num_classes) & (values != ignore_index) | (values < 0)]
    if bad.size:
        raise DataError(
            f"mask {path} contains values {bad.tolist()} outside the {num_classes} classes "
            f"(allowed: 0..{num_classes - 1} and {ignore_index} for ignore)"
        )
    return arr.astype(np.uint8)


def save_mask_png(path: str | os.PathLike, mask: np.ndarray, palette: Sequence[int],
                  root: Optional[str | os.PathLike] = None) -> None:
    """Write a uint8 (H, W) class-index mask as a palette PNG, atomically (inside ``root`` when given)."""
    im = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    im.putpalette(list(palette))
    with atomic_path(path, root) as tmp:
        im.save(tmp, format="PNG")
