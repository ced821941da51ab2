"""Read ``.npy`` files without running code from them.

``np.load(allow_pickle=True)`` unpickles object arrays, and a pickle can call any importable
function. :func:`load_npy` reads the ``.npy`` header itself; plain (non-object) arrays are then
read with ``allow_pickle=False``, and object arrays are unpickled by :class:`RestrictedUnpickler`.

The unpickler resolves only the globals numpy writes for arrays, dtypes and scalars
(``numpy.ndarray``, ``numpy.dtype``, ``numpy[._]core.multiarray._reconstruct`` and ``scalar``,
numpy 1 and numpy 2 names), and even those never reach numpy's own C-level ``__setstate__``
with file data (a malformed state can crash it): each resolves to a stand-in that checks the
state (simple numeric or object dtypes only; the shape must match the bytes or the list of
objects exactly, so a file cannot claim a huge array) and builds the array with ``np.frombuffer``
or element by element. Dicts, lists, tuples, ints, floats, strings and bytes need no global.
Any other global (``os.system``, ``builtins.eval``, ...) is refused with a DataError naming the
file, before it is looked up, and BUILD (``__setstate__`` / attribute setting) applies only to
the stand-ins. The pure-Python unpickler reads from memory, so a forged length or memo index
cannot make it allocate more than the file holds.
"""

from __future__ import annotations

import io
import math
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from tagseg.errors import DataError

SIMPLE_DTYPE = re.compile(r"b1|[iu][1248]|f[248]|c(8|16)|O[48]")
MAX_DEPTH = 64  # nesting of containers in a pickled object
MAX_PICKLE_BYTES = 1 << 30  # object .npy files are read into memory whole


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` (only as the first argument of ``_reconstruct``)."""


class _PendingDtype:
    """``numpy.dtype(spec, align, copy)`` + its ``__setstate__``: a simple dtype and its byte order."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        if not isinstance(spec, str) or not SIMPLE_DTYPE.fullmatch(spec):
            raise pickle.UnpicklingError(f"unsupported dtype {str(spec)[:20]!r}")
        self.spec, self.byteorder = spec, "|"

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">", "|", "=")):
            raise pickle.UnpicklingError("malformed dtype state")
        self.byteorder = state[1]

    def resolve(self) -> np.dtype:
        dt = np.dtype(self.spec)
        return dt.newbyteorder(self.byteorder) if self.byteorder in "<>" and dt.itemsize > 1 else dt


class _PendingArray:
    """``_reconstruct(ndarray, (0,), b'b')`` + ``__setstate__((1, shape, dtype, fortran, data))``."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise pickle.UnpicklingError("malformed array state")
        _, shape, dtype, fortran, data = state
        if not (isinstance(shape, tuple) and len(shape) <= 32
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
            raise pickle.UnpicklingError("malformed array shape")
        if not isinstance(dtype, _PendingDtype) or not isinstance(fortran, bool):
            raise pickle.UnpicklingError("malformed array dtype")
        dt, size, order = dtype.resolve(), math.prod(shape), "F" if fortran else "C"
        if dt.hasobject:
            if not (isinstance(data, list) and len(data) == size):
                raise pickle.UnpicklingError(f"an object array of shape {shape} needs {size} elements")
            flat = np.empty(size, dtype=object)
            for i, value in enumerate(data):
                flat[i] = value
            self.array = flat.reshape(shape, order=order)
        else:
            if not (isinstance(data, bytes) and len(data) == size * dt.itemsize):
                raise pickle.UnpicklingError(f"an array of shape {shape} and dtype {dt} needs "
                                             f"{size * dt.itemsize} bytes")
            self.array = np.frombuffer(data, dtype=dt).copy().reshape(shape, order=order)


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _PendingArray:
    if subtype is not _NdarrayClass or shape != (0,) or typecode != b"b":
        raise pickle.UnpicklingError("unsupported array reconstruction")
    return _PendingArray()


def _scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, _PendingDtype):
        raise pickle.UnpicklingError("malformed scalar")
    dt = dtype.resolve()
    if dt.hasobject:
        return data
    if not (isinstance(data, bytes) and len(data) == dt.itemsize):
        raise pickle.UnpicklingError(f"a {dt} scalar needs {dt.itemsize} bytes")
    return np.frombuffer(data, dtype=dt)[0]


# (module, name) as written in the pickle -> the stand-in it resolves to.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NdarrayClass,
    ("numpy", "dtype"): _PendingDtype,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    ALLOWED_GLOBALS[(_module, "_reconstruct")] = _reconstruct
    ALLOWED_GLOBALS[(_module, "scalar")] = _scalar


def _load_build(self: "RestrictedUnpickler") -> None:
    """BUILD only on the stand-ins (never set attributes or ``__dict__`` entries of anything else)."""
    state = self.stack.pop()
    inst = self.stack[-1]
    if type(inst) not in (_PendingArray, _PendingDtype):
        raise pickle.UnpicklingError(f"refusing to set the state of a {type(inst).__name__}")
    type(inst).__setstate__(inst, state)


class RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler: a dict memo, a replaceable BUILD
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`, applies BUILD only to their
    stand-ins and refuses persistent ids. Read from an in-memory buffer (``io.BytesIO``), so
    no length field in the stream can make it allocate more than the data holds."""

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _load_build

    def __init__(self, file: io.BytesIO, source: Path) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(f"{self.source}: refusing to unpickle {str(module)[:80]}.{str(name)[:80]} (only "
                            "numpy arrays, dtypes and plain Python containers are allowed; the file may be "
                            "malicious)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.source}: refusing a pickle with persistent ids")

    def load(self) -> Any:
        return _resolve(super().load(), {}, 0)


def _resolve(obj: Any, memo: dict[int, Any], depth: int) -> Any:
    """Replace the stand-ins by real arrays/dtypes throughout the unpickled object."""
    if depth > MAX_DEPTH:
        raise pickle.UnpicklingError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(obj, _PendingArray):
        if obj.array is None:
            raise pickle.UnpicklingError("an array without data")
        obj = obj.array
    elif isinstance(obj, _PendingDtype):
        return obj.resolve()
    elif obj is _NdarrayClass:
        raise pickle.UnpicklingError("a bare numpy.ndarray reference")
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, list):
        memo[id(obj)] = obj
        obj[:] = [_resolve(v, memo, depth + 1) for v in obj]
    elif isinstance(obj, dict):
        out: dict = {}
        memo[id(obj)] = out
        for k, v in obj.items():
            out[_resolve(k, memo, depth + 1)] = _resolve(v, memo, depth + 1)
        return out
    elif isinstance(obj, tuple):
        return tuple(_resolve(v, memo, depth + 1) for v in obj)
    elif isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        memo[id(obj)] = obj
        flat = obj.reshape(-1, order="A")
        for i in range(flat.size):
            flat[i] = _resolve(flat[i], memo, depth + 1)
    return obj


def load_npy(path: str | Path, max_header_size: int = 10000) -> np.ndarray:
    """Read an ``.npy`` file: plain arrays as ``np.load(allow_pickle=False)``, object arrays through
    :class:`RestrictedUnpickler`. DataError naming the file if it is missing, not an ``.npy``,
    truncated, or asks for anything beyond numpy arrays and plain containers."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            version = npy_format.read_magic(fh)
            if version not in ((1, 0), (2, 0), (3, 0)):
                raise ValueError(f"unsupported .npy version {version}")
            read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            try:
                shape, fortran, dtype = read_header(fh, max_header_size=max_header_size)
            except TypeError:  # numpy < 1.24 has no max_header_size (and no limit)
                shape, fortran, dtype = read_header(fh)
            count = math.prod(shape)
            if not dtype.hasobject:
                if count * dtype.itemsize > size - fh.tell():
                    raise ValueError(f"the header declares {count * dtype.itemsize} data bytes but the file "
                                     f"holds {size - fh.tell()} (truncated?)")
                fh.seek(0)
                return np.load(fh, allow_pickle=False)
            if count > size or size > MAX_PICKLE_BYTES:
                raise ValueError(f"the header declares {count} objects in a file of {size} bytes "
                                 f"(at most {MAX_PICKLE_BYTES} bytes are read)")
            array = RestrictedUnpickler(io.BytesIO(fh.read()), path).load()
    except DataError:
        raise
    except Exception as exc:  # any decoder failure (truncated, garbage, bad pickle) means an unusable file
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if not isinstance(array, np.ndarray) or array.shape != tuple(shape) or not array.dtype.hasobject:
        raise DataError(f"{path}: the pickled payload is not the object array of shape {tuple(shape)} "
                        "its header declares")
    return array
