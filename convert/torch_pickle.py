"""Read PyTorch `torch.save` checkpoints into numpy, without torch and without running pickled code.

A `.pth` file is a pickle, and unpickling an untrusted pickle normally means executing whatever
callables it names. Here the unpickler resolves only a small allowlist of globals (the ones torch
emits for a plain tensor state dict), and each resolves to a local, inert stand-in that merely
records what the pickle describes. Anything else raises `UnsafeCheckpointError` before a single
byte of it is acted on. Tensor data are then read as raw bytes and viewed with numpy.

Two on-disk layouts are supported (see `torch/serialization.py`):

* zip (torch >= 1.6 default): `<prefix>/data.pkl` holds the pickle, `<prefix>/data/<key>` the raw
  bytes of each storage, `<prefix>/byteorder` (optional) their byte order. The prefix varies.
* legacy (`_use_new_zipfile_serialization=False`): consecutive pickles of the magic number, the
  protocol version, a sys-info dict, the object itself, and the sorted list of storage keys;
  then for each key a little-endian int64 element count followed by the little-endian raw bytes.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import struct
import sys
import zipfile
from typing import IO, Any, Iterator, NamedTuple

import ml_dtypes
import numpy as np

__all__ = ["CheckpointFormatError", "UnsafeCheckpointError", "load_torch_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001  # torch.serialization.PROTOCOL_VERSION


class UnsafeCheckpointError(ValueError):
    """The pickle references a global outside the tensor-state-dict allowlist."""


class CheckpointFormatError(ValueError):
    """The file is not a readable torch checkpoint (or holds something other than tensors)."""


class _BadData(Exception):
    """Raised by the stand-ins, which do not know the file name; re-raised with it."""


# ---------------------------------------------------------------------------------------------
# Inert stand-ins for the allowlisted globals. They are NamedTuples (immutable, no __dict__), so
# the pickle's BUILD opcode cannot alter them, and none of them is a class, so NEWOBJ/OBJ cannot
# instantiate anything through them.


class _StorageType(NamedTuple):
    """Stand-in for `torch.FloatStorage` & co.; `dtype` None = a torch dtype numpy lacks."""

    name: str
    dtype: np.dtype | None


class _DType(NamedTuple):
    """Stand-in for a `torch.<dtype>` object (only `_rebuild_tensor_v3` pickles those)."""

    name: str
    dtype: np.dtype | None


class _Storage(NamedTuple):
    """What `persistent_load` returns: `nbytes` bytes at `byte_offset` of storage record `key`."""

    key: str
    dtype: np.dtype  # element type of the storage; uint8 for an UntypedStorage
    byte_offset: int  # non-zero only for the views of very old legacy files
    nbytes: int


class _Tensor(NamedTuple):
    """A tensor as described by the pickle: a strided view (in elements of `dtype`) of a storage."""

    storage: _Storage
    dtype: np.dtype
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _Dict(dict):
    """Stand-in for `collections.OrderedDict` (state dicts and the empty backward-hook dicts)."""

    def __setstate__(self, state: Any) -> None:
        # torch's state dicts carry a `_metadata` attribute (module versions); it is not needed.
        if not isinstance(state, dict):
            raise _BadData(f"unexpected OrderedDict state of type {type(state).__name__}")


def _ordered_dict(items: Any = ()) -> _Dict:
    return _Dict(items)


def _is_int(x: Any) -> bool:
    return type(x) is int


def _int_tuple(x: Any) -> bool:
    return type(x) is tuple and all(_is_int(v) and v >= 0 for v in x)


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: np.dtype | None) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise _BadData(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
    if not (_is_int(offset) and offset >= 0 and _int_tuple(size) and _int_tuple(stride) and len(size) == len(stride)):
        raise _BadData(f"invalid tensor geometry: offset={offset!r} size={size!r} stride={stride!r}")
    dtype = storage.dtype if dtype is None else dtype
    return _Tensor(storage, dtype, offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    if metadata:  # conj/neg bits: never set on state-dict tensors, and numpy has no equivalent
        raise _BadData(f"unsupported tensor metadata {metadata!r}")
    return _tensor(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    # torch >= 2.1 pickles dtypes without a legacy *Storage class (float8, uint16...) as an
    # UntypedStorage of bytes plus the dtype.
    if not isinstance(dtype, _DType):
        raise _BadData(f"_rebuild_tensor_v3 expects a dtype, got {type(dtype).__name__}")
    if dtype.dtype is None:
        raise _BadData(f"unsupported dtype torch.{dtype.name}")
    if not isinstance(storage, _Storage) or storage.dtype != np.uint8:
        raise _BadData("_rebuild_tensor_v3 expects an untyped storage")
    if metadata:
        raise _BadData(f"unsupported tensor metadata {metadata!r}")
    return _tensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    # nn.Parameter: keep the tensor; `state` holds Python attributes of Parameter subclasses.
    if not isinstance(data, _Tensor):
        raise _BadData(f"parameter rebuilt from a {type(data).__name__}, not a tensor")
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

_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage", np.dtype(np.uint8)),
    ("torch", "UntypedStorage"): _StorageType("UntypedStorage", np.dtype(np.uint8)),
    **{("torch", n): _StorageType(n, None if d is None else np.dtype(d)) for n, d in _STORAGE_DTYPES.items()},
    **{("torch", n): _DType(n, None if d is None else np.dtype(d)) for n, d in _V3_DTYPES.items()},
}


def _py3_name(module: str, name: str) -> str:
    """`module.name` as Python 3 spells it (protocol <= 2 pickles record `__builtin__.eval`)."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    text = f"{module}.{name}"
    return text if text.isprintable() else ascii(text)


class _Unpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED` globals, and storage persistent ids, to stand-ins."""

    def __init__(self, file: IO[bytes], path: str, legacy: bool, storages: dict[str, _Storage]):
        super().__init__(file)
        self._path, self._legacy, self._storages = path, legacy, storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                f"{self._path}: refusing to load: the pickle references {_py3_name(str(module), str(name))}, "
                "which is not part of a tensor state dict"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        # zip:    ("storage", storage_type, key, location, numel)
        # legacy: ("storage", storage_type, key, location, numel, view_metadata)
        n = 6 if self._legacy else 5
        if not (type(pid) is tuple and len(pid) == n and pid[0] == "storage"):
            raise _BadData(f"unsupported persistent id {pid!r:.200}")
        stype, key, location, numel = pid[1:5]
        if not (isinstance(stype, _StorageType) and type(key) is str and key and type(location) is str):
            raise _BadData(f"malformed storage persistent id {pid!r:.200}")
        if not (_is_int(numel) and numel >= 0):
            raise _BadData(f"storage {key!r} has invalid element count {numel!r}")
        if stype.dtype is None:
            raise _BadData(f"unsupported dtype (torch.{stype.name})")
        root = _Storage(key, stype.dtype, 0, numel * stype.dtype.itemsize)
        if self._storages.setdefault(key, root) != root:
            raise _BadData(f"storage {key!r} is referenced with two different dtypes or sizes")
        view = pid[5] if self._legacy else None
        if view is None:
            return root
        # Views existed only in pre-1.0 legacy files: (view_key, offset, size), in elements.
        if not (type(view) is tuple and len(view) == 3 and type(view[0]) is str and _int_tuple(view[1:])):
            raise _BadData(f"malformed storage view {view!r:.200}")
        itemsize = stype.dtype.itemsize
        start, size = view[1] * itemsize, view[2] * itemsize
        if start + size > root.nbytes:
            raise _BadData(f"storage view {view[0]!r} exceeds storage {key!r}")
        return _Storage(key, stype.dtype, start, size)


# ---------------------------------------------------------------------------------------------


def _state_dict(obj: Any) -> dict[str, _Tensor]:
    """Checks that `obj` is a flat str -> tensor dict, after unwrapping {"model": ...} wrappers."""
    if not isinstance(obj, dict):
        raise _BadData(f"the pickle holds a {type(obj).__name__}, not a state dict")
    if not any(isinstance(v, _Tensor) for v in obj.values()):
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    for key, value in obj.items():
        if not isinstance(key, str):
            raise _BadData(f"state dict key {key!r:.100} is not a string")
        if isinstance(value, dict):
            raise _BadData(f"key {key!r} holds a nested dict, expected a flat state dict of tensors")
        if not isinstance(value, _Tensor):
            raise _BadData(f"key {key!r} holds a {type(value).__name__}, not a tensor")
    return obj


def _to_array(t: _Tensor, data: bytes, swap: bool) -> np.ndarray:
    """The (C-contiguous, owned) array for `t`, whose storage record's bytes are `data`."""
    s = t.storage  # the callers have checked that `data` holds the whole storage record
    if 0 in t.shape:
        return np.zeros(t.shape, t.dtype)
    count = s.nbytes // t.dtype.itemsize
    last = t.offset + sum((n - 1) * st for n, st in zip(t.shape, t.stride))
    if last >= count:
        raise _BadData(f"tensor view reaches element {last} of storage {s.key!r}, which holds {count}")
    flat = np.frombuffer(data, t.dtype, count=count, offset=s.byte_offset)  # no copy
    view = np.lib.stride_tricks.as_strided(
        flat[t.offset :], t.shape, tuple(st * t.dtype.itemsize for st in t.stride), writeable=False
    )
    out = np.array(view, order="C")  # the one copy, which also detaches from the storage bytes
    if swap:
        out.byteswap(inplace=True)
    return out


def _materialize(tensors: dict[str, _Tensor], records: Iterator[tuple[str, bytes]], swap: bool) -> dict[str, np.ndarray]:
    """Builds the arrays one storage at a time, so only one storage's bytes are alive at once."""
    by_storage: dict[str, list[str]] = {}
    for name, t in tensors.items():
        by_storage.setdefault(t.storage.key, []).append(name)
    arrays: dict[str, np.ndarray] = {}
    for key, data in records:
        for name in by_storage.pop(key, ()):
            arrays[name] = _to_array(tensors[name], data, swap)
        if not by_storage:
            break
    if by_storage:
        raise _BadData(f"storage record {next(iter(by_storage))!r} is missing")
    return {name: arrays[name] for name in tensors}  # the checkpoint's key order


def _load_zip(path: str) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkls = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise _BadData(f"zip archive has {len(pkls)} '<prefix>/data.pkl' records, expected 1")
        prefix = pkls[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        with zf.open(pkls[0]) as f:
            obj = _Unpickler(f, path, legacy=False, storages=storages).load()
        tensors = _state_dict(obj)
        byteorder = zf.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else sys.byteorder
        if byteorder not in ("little", "big"):
            raise _BadData(f"unknown byteorder record {byteorder!r}")

        def records() -> Iterator[tuple[str, bytes]]:
            for key in {t.storage.key for t in tensors.values()}:
                if prefix + "data/" + key not in names:
                    raise _BadData(f"storage record data/{key} is missing")
                data = zf.read(prefix + "data/" + key)  # one read per storage, CRC-checked
                if len(data) != storages[key].nbytes:
                    raise _BadData(f"storage data/{key} holds {len(data)} bytes, expected {storages[key].nbytes}")
                yield key, data

        return _materialize(tensors, records(), swap=byteorder != sys.byteorder)


def _load_legacy(path: str, f: IO[bytes]) -> dict[str, np.ndarray]:
    storages: dict[str, _Storage] = {}

    def load() -> Any:
        return _Unpickler(f, path, legacy=True, storages=storages).load()

    try:
        magic = load()
    except UnsafeCheckpointError:
        raise
    except Exception:  # whatever garbage makes the unpickler fail: not a legacy file
        magic = None
    if type(magic) is not int or magic != _LEGACY_MAGIC:
        raise _BadData("not a PyTorch checkpoint: neither a zip archive nor a legacy torch.save file")
    if (protocol := load()) != _LEGACY_PROTOCOL:
        raise _BadData(f"unsupported legacy protocol version {protocol!r}")
    load()  # sys_info: endianness/type sizes of the saver; storages are always little-endian
    tensors = _state_dict(load())
    keys = load()
    if not (type(keys) is list and all(type(k) is str for k in keys)):
        raise _BadData("malformed storage key list")
    needed = {t.storage.key for t in tensors.values()}

    def records() -> Iterator[tuple[str, bytes]]:
        for key in keys:  # stored back to back in this order
            if key not in storages:
                raise _BadData(f"storage {key!r} is listed but never referenced")
            itemsize = storages[key].dtype.itemsize
            header = f.read(8)
            if len(header) != 8:
                raise _BadData(f"file ends before storage {key!r}")
            (numel,) = struct.unpack("<q", header)
            if numel * itemsize != storages[key].nbytes:
                raise _BadData(f"storage {key!r} has {numel} elements on disk, the pickle says {storages[key].nbytes // itemsize}")
            if key in needed:
                data = f.read(numel * itemsize)
                if len(data) != numel * itemsize:
                    raise _BadData(f"storage {key!r} is truncated: {len(data)} of {numel * itemsize} bytes")
                yield key, data
            else:
                f.seek(numel * itemsize, io.SEEK_CUR)

    # Legacy storages hold little-endian data whatever machine wrote them.
    return _materialize(tensors, records(), swap=sys.byteorder != "little")


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a `torch.save`d state dict: key -> C-contiguous numpy array of the tensor's shape.

    dtypes map to their numpy equivalents (float32 -> float32, bfloat16 -> `ml_dtypes.bfloat16`,
    float16 -> float16, int64 -> int64, bool -> bool, ...). A top-level dict that holds no tensors
    but has a "model" or "state_dict" dict is unwrapped. Raises UnsafeCheckpointError if the pickle
    names any global beyond what a tensor state dict needs, CheckpointFormatError for anything else
    that is not a flat dict of tensors in a well-formed file; messages name `path`.
    """
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # a zip's local header, but no central directory
                raise _BadData("truncated or corrupt zip archive")
            f.seek(0)
            return _load_legacy(path, f)
    except (UnsafeCheckpointError, CheckpointFormatError, OSError):
        raise
    except Exception as e:  # malformed input surfaces as all sorts of errors from pickle/zipfile
        msg = " ".join(str(e).split()) or type(e).__name__
        if not isinstance(e, _BadData):
            msg = f"malformed checkpoint ({type(e).__name__}: {msg})"
        raise CheckpointFormatError(f"{path}: {msg}") from e
