"""Read ``.npy`` files without running code from them.

``np.load(allow_pickle=True)`` unpickles object arrays, and a pickle can call any importable
function. :func:`load_npy` reads the ``.npy`` header itself; plain (non-object) arrays are then
read with ``allow_pickle=False``, and object arrays are unpickled by :class:`RestrictedUnpickler`,
which resolves only the few numpy globals that numpy itself writes for arrays, dtypes and
scalars (numpy 1 and numpy 2 module names). Dicts, lists, tuples, ints, floats, strings and
bytes need no global at all. Any other global (``os.system``, ``builtins.eval``, ...) is refused
with a DataError naming the file, before it is looked up.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from tagseg.errors import DataError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

# (module, name) as written in the pickle -> the object it may resolve to.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    ALLOWED_GLOBALS[(_module, "_reconstruct")] = _multiarray._reconstruct
    ALLOWED_GLOBALS[(_module, "scalar")] = _multiarray.scalar


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` (and no persistent ids)."""

    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(f"{self.source}: refusing to unpickle {module}.{name} (only numpy arrays, dtypes "
                            "and plain Python containers are allowed; the file may be malicious)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.source}: refusing a pickle with persistent ids")


def load_npy(path: str | Path, max_header_size: int = 10000) -> np.ndarray:
    """Read an ``.npy`` file: plain arrays as ``np.load(allow_pickle=False)``, object arrays through
    :class:`RestrictedUnpickler`. DataError naming the file if it is missing, not an ``.npy``,
    truncated, or asks for anything beyond numpy arrays and plain containers."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        with open(path, "rb") as fh:
            version = npy_format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(fh, max_header_size=max_header_size)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = npy_format.read_array_header_2_0(fh, max_header_size=max_header_size)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            if not dtype.hasobject:
                fh.seek(0)
                return np.load(fh, allow_pickle=False)
            array = RestrictedUnpickler(fh, path).load()
    except DataError:
        raise
    except Exception as exc:  # any decoder failure (truncated, garbage, bad pickle) means an unusable file
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if not isinstance(array, np.ndarray) or array.shape != tuple(shape):
        raise DataError(f"{path}: the pickled payload is not the array of shape {tuple(shape)} its header declares")
    return array
