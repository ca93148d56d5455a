"""Reading CIFAR-style pickles without executing anything they ask for.

The CIFAR python batches (and course test files built the same way) are pickled dicts holding a
numpy array, lists, ints and bytes. A pickle can name any importable callable, so a plain
pickle.load on a downloaded file runs whatever its author chose. Here `find_class` refuses every
global except the handful numpy's own array pickling uses, and even those are replaced by
stand-ins that rebuild the array from raw bytes with an allowed plain dtype; numpy's own
__setstate__ never sees the untrusted state.

Real files use `numpy.core.multiarray._reconstruct` (Python 2 era); numpy 2 writes
`numpy._core.multiarray._reconstruct` (protocols 2-4) or `numpy._core.numeric._frombuffer`
(protocol 5); Python 3 protocol 2 pickles bytes through `_codecs.encode(text, "latin1")`
(and b"" as `bytes()`).
"""
from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

# Plain numeric/bytes/text dtype kinds only: no objects, no structured (void) types.
ALLOWED_DTYPE_KINDS = frozenset("biufSU")


class _Dtype:
    """Stands in for numpy.dtype while unpickling."""

    def __init__(self, code: Any, align: Any = False, copy: Any = True):
        if isinstance(code, bytes):
            code = code.decode("ascii", "replace")
        if not isinstance(code, str):
            raise pickle.UnpicklingError(f"dtype from {type(code).__name__}")
        try:
            dtype = np.dtype(code)
        except TypeError:
            raise pickle.UnpicklingError(f"unknown dtype '{code}'") from None
        if dtype.kind not in ALLOWED_DTYPE_KINDS or dtype.fields is not None or dtype.subdtype:
            raise pickle.UnpicklingError(f"dtype '{code}' is not a plain number/bytes type")
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
            raise pickle.UnpicklingError("dtype with sub-arrays or fields")
        order = state[1].decode() if isinstance(state[1], bytes) else state[1]
        if order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(order)


class _Array:
    """Stands in for numpy.ndarray while unpickling; `.array` holds the rebuilt array."""

    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # (version, shape, dtype, is_fortran, raw bytes); the version is missing in very old files.
        if isinstance(state, tuple) and len(state) == 4:
            state = (1, *state)
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("unexpected ndarray state")
        _, shape, dtype, fortran, raw = state
        if isinstance(raw, str):  # Python 2 str read with encoding="latin1"
            raw = raw.encode("latin1")
        self.array = _from_bytes(raw, dtype, shape, "F" if fortran else "C")


def _from_bytes(raw: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    if not isinstance(dtype, _Dtype):
        raise pickle.UnpicklingError("array without a plain dtype")
    if isinstance(raw, pickle.PickleBuffer):
        raw = bytes(raw.raw())
    if not isinstance(raw, (bytes, bytearray)):
        raise pickle.UnpicklingError("array data is not bytes")
    if not (isinstance(shape, tuple) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise pickle.UnpicklingError("bad array shape")
    if int(np.prod(shape, dtype=np.int64)) * dtype.dtype.itemsize != len(raw):
        raise pickle.UnpicklingError(f"array data has {len(raw)} bytes, shape {shape} needs another size")
    return np.frombuffer(raw, dtype=dtype.dtype).reshape(shape, order=order).copy()


def _reconstruct(subtype: Any, shape: Any, code: Any) -> _Array:
    if subtype is not _Array:
        raise pickle.UnpicklingError("_reconstruct of something other than ndarray")
    return _Array()


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    return _from_bytes(buffer, dtype, shape, "F" if order == "F" else "C")


def _scalar(dtype: Any, raw: Any = b"") -> Any:
    if isinstance(raw, str):
        raw = raw.encode("latin1")
    return _from_bytes(raw, dtype, (), "C")[()].item()


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode other than text -> latin1 bytes")
    return text.encode("latin1")


def _empty_bytes() -> bytes:
    return b""


_ALLOWED = {
    ("numpy", "ndarray"): _Array,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _latin1_bytes,
    # Protocol 2 writes b"" as a call of bytes() with no arguments.
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _scalar
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _frombuffer


class RefusedGlobal(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


# How pickles begin: protocol 2+ with PROTO; protocols 0/1 (old course files) with a dict/list/mark opcode.
_PICKLE_STARTS = (b"\x80", b"(", b"}", b"]", b")")


def restricted_loads(data: bytes, where: str) -> Any:
    """Unpickle `data` allowing only plain containers and numpy arrays of plain dtypes."""
    if not data.startswith(_PICKLE_STARTS):
        raise PipelineError(f"{where}: not a pickle (it starts with {data[:8]!r}); expected a CIFAR-style pickle file")
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except RefusedGlobal as e:
        raise PipelineError(
            f"{where}: refused to unpickle: it asks for '{e}'; only CIFAR-style dicts of arrays, "
            "lists, ints and bytes are read"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, UnicodeDecodeError, OverflowError) as e:
        raise PipelineError(f"{where}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None
    return _unbox(obj)


def _unbox(obj: Any) -> Any:
    """Swap the _Array stand-ins for their arrays inside dicts/lists/tuples."""
    if isinstance(obj, _Array):
        if obj.array is None:
            raise pickle.UnpicklingError("array without state")
        return obj.array
    if isinstance(obj, dict):
        return {k: _unbox(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unbox(v) for v in obj)
    if isinstance(obj, _Dtype):
        return obj.dtype
    return obj


# ----------------------------------------------------------------------------- CIFAR dict shapes

BATCH_KEYS = frozenset({"data", "labels", "filenames", "batch_label"})
META_KEYS = frozenset({"label_names", "num_cases_per_batch", "num_vis"})
TEST_KEYS = frozenset({"data", "ids"})


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _keys(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or not all(isinstance(k, (bytes, str)) for k in obj):
        raise PipelineError(f"{where}: not a CIFAR pickle (expected a dict with text keys, got {type(obj).__name__})")
    return {_text(k): v for k, v in obj.items()}


def _int_list(value: Any, where: str, key: str) -> np.ndarray:
    arr = np.asarray(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    if arr is None or arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise PipelineError(f"{where}: '{key}' is not a list of integers")
    return arr.astype(np.int64)


def read_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR-10 python batch -> (uint8 NHWC images, int64 labels)."""
    d = _keys(restricted_loads(data, where), where)
    if set(d) != BATCH_KEYS:
        raise PipelineError(f"{where}: not a CIFAR batch (keys {sorted(d)}, expected {sorted(BATCH_KEYS)})")
    images, labels = d["data"], _int_list(d["labels"], where, "labels")
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 2
            and images.shape[1] == 3072):
        raise PipelineError(f"{where}: 'data' is not a uint8 N x 3072 array")
    if not isinstance(d["filenames"], list):
        raise PipelineError(f"{where}: 'filenames' is not a list")
    if len(labels) != len(images) or len(d["filenames"]) != len(images):
        raise PipelineError(f"{where}: {len(images)} images but {len(labels)} labels / {len(d['filenames'])} filenames")
    return chw_rows_to_nhwc(images, (3, 32, 32)), labels


def read_meta(data: bytes, where: str) -> list[str]:
    """batches.meta -> class names in label order."""
    d = _keys(restricted_loads(data, where), where)
    if set(d) != META_KEYS:
        raise PipelineError(f"{where}: not CIFAR batches.meta (keys {sorted(d)}, expected {sorted(META_KEYS)})")
    names = d["label_names"]
    if not (isinstance(names, list) and names and all(isinstance(n, (bytes, str)) for n in names)):
        raise PipelineError(f"{where}: 'label_names' is not a list of names")
    return [_text(n) for n in names]


def read_test_pickle(data: bytes, where: str, chw: tuple[int, int, int] = (3, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """A course test file {data, ids} -> (uint8 NHWC images, str ids).

    `data` is N x (C*H*W) flattened channel-first rows (as in the CIFAR batches) or N x H x W x C.
    """
    d = _keys(restricted_loads(data, where), where)
    if set(d) != TEST_KEYS:
        raise PipelineError(f"{where}: not a test pickle (keys {sorted(d)}, expected {sorted(TEST_KEYS)})")
    images, ids = d["data"], d["ids"]
    c, h, w = chw
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8):
        raise PipelineError(f"{where}: 'data' is not a uint8 array")
    if images.ndim == 2 and images.shape[1] == c * h * w:
        images = chw_rows_to_nhwc(images, chw)
    elif images.ndim != 4 or images.shape[1:] != (h, w, c):
        raise PipelineError(
            f"{where}: 'data' has shape {images.shape}; expected N x {c * h * w} (CHW rows) or N x {h} x {w} x {c}"
        )
    if isinstance(ids, np.ndarray):
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, (int, str, bytes)) for i in ids):
        raise PipelineError(f"{where}: 'ids' is not a list of ids")
    ids = np.array([_text(i) for i in ids], dtype=str)
    if len(ids) != len(images):
        raise PipelineError(f"{where}: {len(images)} images but {len(ids)} ids")
    if len(set(ids.tolist())) != len(ids):
        raise PipelineError(f"{where}: 'ids' has duplicates")
    return np.ascontiguousarray(images), ids


def chw_rows_to_nhwc(rows: np.ndarray, chw: tuple[int, int, int]) -> np.ndarray:
    return np.ascontiguousarray(rows.reshape(len(rows), *chw).transpose(0, 2, 3, 1))
