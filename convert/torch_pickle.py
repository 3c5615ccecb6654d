"""Read PyTorch `torch.save` checkpoints into numpy, without torch and without running pickled code.

A `.pth` file is a pickle, and unpickling an untrusted pickle normally means executing whatever
callables it names. The pickle is read by `torch_unpickler` (an allowlist of inert stand-ins; see
there), which only records what it describes; tensor data are then read as raw bytes and viewed
with numpy.

Memory is bounded by the file, not by what the file claims. Before anything is allocated:
the pickle is at most MAX_PICKLE_BYTES; every tensor's extent lies inside its storage and holds
no more elements than the storage (an overlapping or stride-0 view would multiply it); all
tensors together need at most MAX_VIEW_RATIO times the bytes of the storages they come from;
and every storage record holds exactly the bytes its tensors need, stored or deflated (what
torch writes), within the file. Records are then read one at a time, in bounded chunks, so one
that inflates beyond its declared size fails after one chunk.

Two on-disk layouts are supported (see `torch/serialization.py`):

* zip (torch >= 1.6 default): `<prefix>/data.pkl` holds the pickle, `<prefix>/data/<key>` the raw
  bytes of each storage, `<prefix>/byteorder` (optional) their byte order. The prefix varies.
* legacy (`_use_new_zipfile_serialization=False`): consecutive pickles of the magic number, the
  protocol version, a sys-info dict, the object itself, and the sorted list of storage keys;
  then for each key a little-endian int64 element count followed by the little-endian raw bytes.
"""

from __future__ import annotations

import math
import os
import struct
import sys
import zipfile
from typing import IO, Any, Iterator

import numpy as np

from .torch_unpickler import BadData, StorageRef, TensorRef, TruncatedPickle, UnsafeCheckpointError, unpickle

__all__ = ["CheckpointFormatError", "MAX_PICKLE_BYTES", "MAX_VIEW_RATIO", "UnsafeCheckpointError", "load_torch_state_dict"]

# sam_vit_h's pickle is 74 KB (594 tensors; with Adam's state beside them, about 250 KB). The cap
# bounds what the unpickler can build (about 75 bytes of objects per pickle byte at worst) and
# the time `torch_unpickler.scan` takes (0.4 s for 512 Ki one-byte opcodes).
MAX_PICKLE_BYTES = 512 << 10
# Tied weights and the views of one storage may repeat its bytes, but not without bound.
MAX_VIEW_RATIO = 2
_CHUNK = 1 << 20  # bytes read from a record at a time
_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand data more than this
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001  # torch.serialization.PROTOCOL_VERSION


class CheckpointFormatError(ValueError):
    """The file is not a readable torch checkpoint (or holds something other than tensors)."""


def _state_dict(obj: Any) -> dict[str, TensorRef]:
    """Checks that `obj` is a flat str -> tensor dict, after unwrapping {"model": ...} wrappers."""
    if not isinstance(obj, dict):
        raise BadData(f"the pickle holds a {type(obj).__name__}, not a state dict")
    if not any(isinstance(v, TensorRef) for v in obj.values()):
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    for key, value in obj.items():
        if not isinstance(key, str):
            raise BadData(f"state dict key {key!r:.100} is not a string")
        if isinstance(value, dict):
            raise BadData(f"key {key!r:.100} holds a nested dict, expected a flat state dict of tensors")
        if not isinstance(value, TensorRef):
            raise BadData(f"key {key!r:.100} holds a {type(value).__name__}, not a tensor")
    return obj


def _check_tensors(tensors: dict[str, TensorRef], storages: dict[str, StorageRef]) -> None:
    """Refuses, before anything is read or allocated, views that reach outside their storage or
    that would make the arrays larger than the data the file stores (see the module docstring)."""
    total = 0
    for name, t in tensors.items():
        s = t.storage
        count = s.nbytes // t.dtype.itemsize
        numel = math.prod(t.shape)
        total += numel * t.dtype.itemsize
        if numel == 0:
            continue
        last = t.offset + sum((n - 1) * st for n, st in zip(t.shape, t.stride))
        if last >= count:
            raise BadData(f"tensor {name!r:.100} reaches element {last} of storage {s.key!r:.100}, which holds {count}")
        if numel > count - t.offset:
            raise BadData(
                f"tensor {name!r:.100} of shape {t.shape} has {numel} elements, more than the {count - t.offset} its "
                f"storage {s.key!r:.100} holds from offset {t.offset} (an overlapping or stride-0 view)"
            )
    stored = sum(storages[k].nbytes for k in {t.storage.key for t in tensors.values()})
    if total > MAX_VIEW_RATIO * stored:
        raise BadData(
            f"the tensors need {total} bytes, more than {MAX_VIEW_RATIO} times the {stored} bytes of data "
            "the file stores for them (views repeating the same storage)"
        )


def _to_array(t: TensorRef, data: np.ndarray, swap: bool) -> np.ndarray:
    """The (C-contiguous, owned) array for `t`, whose storage record's bytes are `data` (uint8);
    `_check_tensors` has checked its geometry."""
    s = t.storage
    if 0 in t.shape:
        return np.zeros(t.shape, t.dtype)
    flat = np.frombuffer(data, t.dtype, count=s.nbytes // t.dtype.itemsize, offset=s.byte_offset)  # no copy
    view = np.lib.stride_tricks.as_strided(
        flat[t.offset :], t.shape, tuple(st * t.dtype.itemsize for st in t.stride), writeable=False
    )
    out = np.array(view, order="C")  # the one copy, which also detaches from the storage bytes
    if swap:
        out.byteswap(inplace=True)
    return out


def _materialize(tensors: dict[str, TensorRef], records: Iterator[tuple[str, np.ndarray]], swap: bool) -> dict[str, np.ndarray]:
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
        raise BadData(f"storage record {next(iter(by_storage))!r} is missing")
    return {name: arrays[name] for name in tensors}  # the checkpoint's key order


# ---------------------------------------------------------------------------------------------
# zip


def _check_record(info: zipfile.ZipInfo, size: int, file_size: int, what: str) -> None:
    """The record's header must declare exactly `size` bytes that the file can actually hold."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise BadData(f"{what} uses zip compression method {info.compress_type}; torch writes stored (or deflated) records")
    if info.file_size != size:
        raise BadData(f"{what} holds {info.file_size} bytes, expected {size}")
    ratio = 1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_MAX_RATIO
    if info.header_offset + info.compress_size > file_size or size > ratio * info.compress_size + 64:
        raise BadData(f"{what} claims {size} bytes, which its {info.compress_size} bytes in the file cannot hold")


def _read_record(zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> np.ndarray:
    """A record's bytes (checked by `_check_record`), read in bounded chunks: data beyond the
    declared size is never produced, and the CRC check at its end catches it."""
    out = np.empty(info.file_size, np.uint8)  # pages are only committed as they are written
    view, pos = memoryview(out), 0
    with zf.open(info) as f:
        while pos < info.file_size:
            n = f.readinto(view[pos : pos + _CHUNK])
            if not n:
                break
            pos += n
    if pos != info.file_size:
        raise BadData(f"{what} is truncated: {pos} of {info.file_size} bytes")
    return out


def _load_zip(path: str) -> dict[str, np.ndarray]:
    file_size = os.path.getsize(path)
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        pkls = [n for n in infos if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise BadData(f"zip archive has {len(pkls)} '<prefix>/data.pkl' records, expected 1")
        prefix, info = pkls[0][: -len("data.pkl")], infos[pkls[0]]
        if info.file_size > MAX_PICKLE_BYTES:
            raise BadData(f"data.pkl is {info.file_size} bytes, more than the {MAX_PICKLE_BYTES} a state dict needs")
        _check_record(info, info.file_size, file_size, "data.pkl")
        storages: dict[str, StorageRef] = {}
        obj, _ = unpickle(_read_record(zf, info, "data.pkl").tobytes(), path, legacy=False, storages=storages)
        tensors = _state_dict(obj)
        byteorder = sys.byteorder
        if (info := infos.get(prefix + "byteorder")) is not None:
            _check_record(info, min(info.file_size, 8), file_size, "byteorder")
            byteorder = _read_record(zf, info, "byteorder").tobytes().decode()
        if byteorder not in ("little", "big"):
            raise BadData(f"unknown byteorder record {byteorder!r}")
        needed = sorted({t.storage.key for t in tensors.values()})
        for key in needed:
            if prefix + "data/" + key not in infos:
                raise BadData(f"storage record data/{key} is missing")
            _check_record(infos[prefix + "data/" + key], storages[key].nbytes, file_size, f"storage data/{key}")
        _check_tensors(tensors, storages)

        def records() -> Iterator[tuple[str, np.ndarray]]:
            for key in needed:
                yield key, _read_record(zf, infos[prefix + "data/" + key], f"storage data/{key}")

        return _materialize(tensors, records(), swap=byteorder != sys.byteorder)


# ---------------------------------------------------------------------------------------------
# legacy


def _load_legacy(path: str, f: IO[bytes]) -> dict[str, np.ndarray]:
    file_size = os.fstat(f.fileno()).st_size
    head = f.read(MAX_PICKLE_BYTES)  # the five pickles must fit, as data.pkl must
    storages: dict[str, StorageRef] = {}
    pos = 0

    def load() -> Any:
        nonlocal pos
        try:
            obj, pos = unpickle(head, path, legacy=True, storages=storages, start=pos)
        except TruncatedPickle:
            if len(head) == MAX_PICKLE_BYTES:
                raise BadData(f"the pickles are larger than the {MAX_PICKLE_BYTES} bytes a state dict needs") from None
            raise
        return obj

    try:
        magic = load()
    except UnsafeCheckpointError:
        raise
    except Exception:  # whatever garbage makes the unpickler fail: not a legacy file
        magic = None
    if type(magic) is not int or magic != _LEGACY_MAGIC:
        raise BadData("not a PyTorch checkpoint: neither a zip archive nor a legacy torch.save file")
    if (protocol := load()) != _LEGACY_PROTOCOL:
        raise BadData(f"unsupported legacy protocol version {protocol!r:.100}")
    load()  # sys_info: endianness/type sizes of the saver; storages are always little-endian
    tensors = _state_dict(load())
    keys = load()
    if not (type(keys) is list and all(type(k) is str for k in keys)):
        raise BadData("malformed storage key list")
    needed = {t.storage.key for t in tensors.values()}
    for key in keys:
        if key not in storages:
            raise BadData(f"storage {key!r:.100} is listed but never referenced")
    # Each record is an 8-byte count and the data: the file must be able to hold them all.
    if pos + sum(8 + storages[k].nbytes for k in keys) > file_size:
        raise BadData("truncated: the storages the pickle declares do not fit in the file")
    _check_tensors(tensors, storages)
    f.seek(pos)

    def records() -> Iterator[tuple[str, np.ndarray]]:
        for key in keys:  # stored back to back in this order
            itemsize = storages[key].dtype.itemsize
            header = f.read(8)
            if len(header) != 8:
                raise BadData(f"file ends before storage {key!r}")
            (numel,) = struct.unpack("<q", header)
            if numel * itemsize != storages[key].nbytes:
                raise BadData(f"storage {key!r} has {numel} elements on disk, the pickle says {storages[key].nbytes // itemsize}")
            if key in needed:
                data = np.frombuffer(f.read(numel * itemsize), np.uint8)
                if len(data) != numel * itemsize:
                    raise BadData(f"storage {key!r} is truncated: {len(data)} of {numel * itemsize} bytes")
                yield key, data
            else:
                f.seek(numel * itemsize, os.SEEK_CUR)

    # Legacy storages hold little-endian data whatever machine wrote them.
    return _materialize(tensors, records(), swap=sys.byteorder != "little")


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a `torch.save`d state dict: key -> C-contiguous numpy array of the tensor's shape.

    dtypes map to their numpy equivalents (float32 -> float32, bfloat16 -> `ml_dtypes.bfloat16`,
    float16 -> float16, int64 -> int64, bool -> bool, ...). A top-level dict that holds no tensors
    but has a "model" or "state_dict" dict is unwrapped. Raises UnsafeCheckpointError if the pickle
    names any global beyond what a tensor state dict needs, CheckpointFormatError for anything else
    that is not a flat dict of tensors in a well-formed file, or that claims more memory than its
    data justify (module docstring); messages name `path` and are one line.
    """
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # a zip's local header, but no central directory
                raise BadData("truncated or corrupt zip archive")
            f.seek(0)
            return _load_legacy(path, f)
    except (UnsafeCheckpointError, CheckpointFormatError, OSError):
        raise
    except Exception as e:  # malformed input surfaces as all sorts of errors from pickle/zipfile
        msg = " ".join(str(e).split()) or type(e).__name__
        if not isinstance(e, BadData):
            msg = f"malformed checkpoint ({type(e).__name__}: {msg[:300]})"
        raise CheckpointFormatError(f"{path}: {msg}") from e
