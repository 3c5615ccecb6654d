"""The restricted unpickler behind `torch_pickle`: a `torch.save` pickle -> inert records of what
it describes (`TensorRef`, `StorageRef`), without torch and without running anything it names.

Three layers, each closing a way in which a pickle normally acts rather than describes:

* `scan` reads the whole pickle with `pickletools.genops` before it is run: every length it claims
  must be backed by its bytes, memo indices must be ones a pickler could have written (the C
  unpickler's memo is an array sized by the largest index: a 6-byte `LONG_BINPUT` would otherwise
  allocate gigabytes), and no set is built (a state dict holds none, and an empty set is the
  densest way to turn pickle bytes into memory).
* `find_class` resolves only the globals torch emits for a tensor state dict (`ALLOWED`); anything
  else is `UnsafeCheckpointError` before a single byte of it is acted on.
* The allowlisted globals are inert stand-ins shared by every load, so none can be changed by a
  pickle: the callables are `Global` objects, immutable and refusing the `BUILD` opcode (which on
  a plain function would set `__defaults__` and poison every later load); the storage types and
  dtypes are NamedTuples (immutable, no `__dict__`). None is a class, so NEWOBJ cannot use them.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import pickletools
from typing import Any, Callable, NamedTuple

import ml_dtypes
import numpy as np

__all__ = ["ALLOWED", "BadData", "StorageRef", "TensorRef", "TruncatedPickle", "UnsafeCheckpointError", "scan", "unpickle"]


class UnsafeCheckpointError(ValueError):
    """The pickle references a global outside the tensor-state-dict allowlist."""


class BadData(Exception):
    """A malformed or hostile pickle; the reader re-raises it with the file name."""


class TruncatedPickle(BadData):
    """The data ended before the pickle's STOP."""


# ---------------------------------------------------------------------------------------------
# What the pickle describes


class StorageType(NamedTuple):
    """Stand-in for `torch.FloatStorage` & co.; `dtype` None = a torch dtype numpy lacks."""

    name: str
    dtype: np.dtype | None


class DType(NamedTuple):
    """Stand-in for a `torch.<dtype>` object (only `_rebuild_tensor_v3` pickles those)."""

    name: str
    dtype: np.dtype | None


class StorageRef(NamedTuple):
    """What `persistent_load` returns: `nbytes` bytes at `byte_offset` of storage record `key`."""

    key: str
    dtype: np.dtype  # element type of the storage; uint8 for an UntypedStorage
    byte_offset: int  # non-zero only for the views of very old legacy files
    nbytes: int


class TensorRef(NamedTuple):
    """A tensor as described by the pickle: a strided view (in elements of `dtype`) of a storage."""

    storage: StorageRef
    dtype: np.dtype
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class Global:
    """An allowlisted callable as the pickle sees it: calls `fn`, and cannot be altered by it."""

    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn: Callable) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __setattr__(self, key: str, value: Any) -> None:
        raise BadData(f"the pickle tries to modify {self.name}")

    def __setstate__(self, state: Any) -> None:  # what the BUILD opcode calls
        raise BadData(f"the pickle tries to modify {self.name}")


class _Dict(dict):
    """What `collections.OrderedDict` builds: a fresh dict per call (state dicts, hook dicts)."""

    def __setstate__(self, state: Any) -> None:
        # torch's state dicts carry a `_metadata` attribute (module versions); it is not needed.
        if not isinstance(state, dict):
            raise BadData(f"unexpected OrderedDict state of type {type(state).__name__}")


def _ordered_dict(items: Any = ()) -> _Dict:
    return _Dict(items)


def _is_int(x: Any) -> bool:
    return type(x) is int


def int_tuple(x: Any) -> bool:
    """True for a tuple of non-negative ints (a shape, a stride)."""
    return type(x) is tuple and all(_is_int(v) and v >= 0 for v in x)


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: np.dtype | None) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise BadData(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
    if not (_is_int(offset) and offset >= 0 and int_tuple(size) and int_tuple(stride) and len(size) == len(stride)):
        raise BadData(f"invalid tensor geometry: offset={offset!r:.100} size={size!r:.100} stride={stride!r:.100}")
    dtype = storage.dtype if dtype is None else dtype
    return TensorRef(storage, dtype, offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    if metadata:  # conj/neg bits: never set on state-dict tensors, and numpy has no equivalent
        raise BadData(f"unsupported tensor metadata {metadata!r:.100}")
    return _tensor(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    # torch >= 2.1 pickles dtypes without a legacy *Storage class (float8, uint16...) as an
    # UntypedStorage of bytes plus the dtype.
    if not isinstance(dtype, DType):
        raise BadData(f"_rebuild_tensor_v3 expects a dtype, got {type(dtype).__name__}")
    if dtype.dtype is None:
        raise BadData(f"unsupported dtype torch.{dtype.name}")
    if not isinstance(storage, StorageRef) or storage.dtype != np.uint8:
        raise BadData("_rebuild_tensor_v3 expects an untyped storage")
    if metadata:
        raise BadData(f"unsupported tensor metadata {metadata!r:.100}")
    return _tensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    # nn.Parameter: keep the tensor; `state` holds Python attributes of Parameter subclasses.
    if not isinstance(data, TensorRef):
        raise BadData(f"parameter rebuilt from a {type(data).__name__}, not a tensor")
    return data


_STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexDoubleStorage": np.complex128,
    "ComplexFloatStorage": np.complex64,
    # Quantized storages: harmless names, but no numpy dtype -> CheckpointFormatError, not Unsafe.
    "QInt8Storage": None,
    "QInt32Storage": None,
    "QUInt8Storage": None,
    "QUInt4x2Storage": None,
    "QUInt2x4Storage": None,
}

# torch.storage._new_dtypes(): the dtypes pickled via _rebuild_tensor_v3.
_V3_DTYPES: dict[str, Any] = {
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "float8_e8m0fnu": ml_dtypes.float8_e8m0fnu,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    **dict.fromkeys(["float4_e2m1fn_x2", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2", "complex32", "bcomplex32"]),
}

ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): Global("collections.OrderedDict", _ordered_dict),
    ("torch._utils", "_rebuild_tensor_v2"): Global("torch._utils._rebuild_tensor_v2", _rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor_v3"): Global("torch._utils._rebuild_tensor_v3", _rebuild_tensor_v3),
    ("torch._utils", "_rebuild_parameter"): Global("torch._utils._rebuild_parameter", _rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): Global("torch._utils._rebuild_parameter_with_state", _rebuild_parameter),
    ("torch.storage", "UntypedStorage"): StorageType("UntypedStorage", np.dtype(np.uint8)),
    ("torch", "UntypedStorage"): StorageType("UntypedStorage", np.dtype(np.uint8)),
    **{("torch", n): StorageType(n, None if d is None else np.dtype(d)) for n, d in _STORAGE_DTYPES.items()},
    **{("torch", n): DType(n, None if d is None else np.dtype(d)) for n, d in _V3_DTYPES.items()},
}


# ---------------------------------------------------------------------------------------------
# Reading


_SETS = {"EMPTY_SET", "ADDITEMS", "FROZENSET"}
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def scan(data: bytes, start: int = 0) -> int:
    """Checks the pickle at `data[start:]` without running it (see the module docstring) and
    returns the offset just past its STOP. Raises BadData."""
    stream = io.BytesIO(data)
    stream.seek(start)
    try:
        for count, (op, arg, pos) in enumerate(pickletools.genops(stream)):
            if op.name in _SETS:
                raise BadData(f"the pickle builds a set (opcode {op.name} at byte {pos}); a state dict holds none")
            if op.name in _MEMO_PUTS and arg > count:
                raise BadData(f"memo index {arg} at byte {pos} of the pickle, after {count} opcodes: not written by a pickler")
    except ValueError as e:  # what genops says of a truncated, overlong or unknown opcode
        if stream.tell() >= len(data):
            raise TruncatedPickle(f"truncated pickle: {e}") from None
        raise BadData(f"malformed pickle: {e}") from None
    return stream.tell()


def _py3_name(module: str, name: str) -> str:
    """`module.name` as Python 3 spells it (protocol <= 2 pickles record `__builtin__.eval`)."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    text = f"{module}.{name}"
    return text if text.isprintable() else ascii(text)


class _Unpickler(pickle.Unpickler):
    """Resolves only `ALLOWED` globals, and storage persistent ids, to stand-ins."""

    def __init__(self, file, path: str, legacy: bool, storages: dict[str, StorageRef]):
        super().__init__(file)
        self._path, self._legacy, self._storages = path, legacy, storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                f"{self._path}: refusing to load: the pickle references {_py3_name(str(module), str(name))}, "
                "which is not part of a tensor state dict"
            ) from None

    def persistent_load(self, pid: Any) -> StorageRef:
        # zip:    ("storage", storage_type, key, location, numel)
        # legacy: ("storage", storage_type, key, location, numel, view_metadata)
        n = 6 if self._legacy else 5
        if not (type(pid) is tuple and len(pid) == n and pid[0] == "storage"):
            raise BadData(f"unsupported persistent id {pid!r:.200}")
        stype, key, location, numel = pid[1:5]
        if not (isinstance(stype, StorageType) and type(key) is str and key and type(location) is str):
            raise BadData(f"malformed storage persistent id {pid!r:.200}")
        if not (_is_int(numel) and numel >= 0):
            raise BadData(f"storage {key!r:.100} has invalid element count {numel!r:.100}")
        if stype.dtype is None:
            raise BadData(f"unsupported dtype (torch.{stype.name})")
        root = StorageRef(key, stype.dtype, 0, numel * stype.dtype.itemsize)
        if self._storages.setdefault(key, root) != root:
            raise BadData(f"storage {key!r:.100} is referenced with two different dtypes or sizes")
        view = pid[5] if self._legacy else None
        if view is None:
            return root
        # Views existed only in pre-1.0 legacy files: (view_key, offset, size), in elements.
        if not (type(view) is tuple and len(view) == 3 and type(view[0]) is str and int_tuple(view[1:])):
            raise BadData(f"malformed storage view {view!r:.200}")
        itemsize = stype.dtype.itemsize
        start, size = view[1] * itemsize, view[2] * itemsize
        if start + size > root.nbytes:
            raise BadData(f"storage view {view[0]!r:.100} exceeds storage {key!r:.100}")
        return StorageRef(key, stype.dtype, start, size)


def unpickle(data: bytes, path: str, legacy: bool, storages: dict[str, StorageRef], start: int = 0) -> tuple[Any, int]:
    """The object pickled at `data[start:]` (stand-ins for every tensor and storage; the storages
    it references are added to `storages`) and the offset just past its end."""
    end = scan(data, start)
    return _Unpickler(io.BytesIO(data[start:end]), path, legacy, storages).load(), end
