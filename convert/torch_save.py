"""Write a state dict as `torch.save` does, without torch: the file `torch.load(...,
weights_only=True)` reads, and `torch_pickle` (our reader) too.

The zip layout torch writes (`torch/serialization.py`, format version 1):

    archive/data.pkl             the pickle: an OrderedDict of key -> `_rebuild_tensor_v2(storage, ...)`,
                                 each storage a persistent id ('storage', torch.<T>Storage, key, 'cpu', numel)
    archive/.format_version      "1"
    archive/.storage_alignment   "64": each storage's bytes start at a multiple of 64 in the file,
                                 so that `torch.load(..., mmap=True)` can map them
    archive/byteorder            "little"
    archive/data/<key>           the raw bytes of storage <key>, one per tensor
    archive/version              "3"

The pickle is emitted opcode by opcode (protocol 2, as torch's): Python's pickler would import
torch to check the globals it names. Nothing varies between two writes of the same state (no
timestamps, no torch's random serialization id), so the same model gives the same bytes.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Mapping

import numpy as np

ARCHIVE = "archive"
ALIGNMENT = 64
# numpy dtype -> torch's storage class (the ones a SAM state dict needs, and their kin).
STORAGES: dict[np.dtype, str] = {
    np.dtype("float32"): "FloatStorage", np.dtype("float64"): "DoubleStorage", np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage", np.dtype("int32"): "IntStorage", np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: no date in the file


def write_pth(state: Mapping[str, np.ndarray], path: str | os.PathLike, comment: bytes = b"") -> None:
    """Writes `state` ({key: array}, any strides) to `path` as a torch zip checkpoint, one storage
    per tensor, little-endian. `comment`: the zip archive's comment (torch ignores it). Raises
    ValueError for a dtype torch's state dicts do not use."""
    for key, value in state.items():
        if _dtype(value) not in STORAGES:
            raise ValueError(f"{key}: dtype {_dtype(value)} has no torch storage type here "
                             f"(supported: {', '.join(map(str, STORAGES))})")
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        _record(zf, f, "data.pkl", _pickle(state))
        _record(zf, f, ".format_version", b"1")
        _record(zf, f, ".storage_alignment", str(ALIGNMENT).encode())
        _record(zf, f, "byteorder", b"little")
        for i, value in enumerate(state.values()):
            data = np.ascontiguousarray(value, _dtype(value).newbyteorder("<")).reshape(-1).view(np.uint8)
            _record(zf, f, f"data/{i}", data, align=True)
        _record(zf, f, "version", b"3\n")
        zf.comment = comment


def _dtype(value) -> np.dtype:
    return np.asarray(value).dtype.newbyteorder("=")


def _record(zf: zipfile.ZipFile, f, name: str, data, align: bool = False) -> None:
    """One stored record; with `align`, its data start at a multiple of ALIGNMENT, padded (as
    torch pads) with an extra field of the local header, id 'FB'."""
    info = zipfile.ZipInfo(f"{ARCHIVE}/{name}", date_time=_EPOCH)
    view = memoryview(data)
    info.file_size = view.nbytes
    if align:
        # The local header is 30 bytes, then the name, then the extra field (4 bytes + padding).
        start = f.tell() + 30 + len(info.filename.encode()) + 4
        info.extra = b"FB" + struct.pack("<H", -start % ALIGNMENT) + b"Z" * (-start % ALIGNMENT)
    with zf.open(info, "w") as out:
        out.write(view)


# ---------------------------------------------------------------------------------------------
# the pickle, opcode by opcode (see `pickletools` for each)


def _pickle(state: Mapping[str, np.ndarray]) -> bytes:
    """OrderedDict([(key, _rebuild_tensor_v2(storage i, 0, shape, stride, False, OrderedDict())), ...])."""
    out = [b"\x80\x02", _global("collections", "OrderedDict"), b")R("]  # PROTO 2; OrderedDict(); MARK
    for i, (key, value) in enumerate(state.items()):
        value = np.asarray(value)
        storage = b"(" + _str("storage") + _global("torch", STORAGES[_dtype(value)]) + _str(str(i)) + _str("cpu")
        storage += _int(value.size) + b"tQ"  # TUPLE, BINPERSID
        strides = tuple(int(np.prod(value.shape[d + 1:])) for d in range(value.ndim))  # contiguous, in elements
        args = storage + _int(0) + _tuple(value.shape) + _tuple(strides) + b"\x89"  # NEWFALSE: requires_grad
        args += _global("collections", "OrderedDict") + b")R"  # backward hooks: an empty OrderedDict
        out.append(_str(key) + _global("torch._utils", "_rebuild_tensor_v2") + b"(" + args + b"tR")
    out.append(b"u.")  # SETITEMS, STOP
    return b"".join(out)


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text: str) -> bytes:
    data = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _int(n: int) -> bytes:
    n = int(n)
    if 0 <= n < 1 << 8:
        return b"K" + struct.pack("<B", n)  # BININT1
    if 0 <= n < 1 << 16:
        return b"M" + struct.pack("<H", n)  # BININT2
    if -(1 << 31) <= n < 1 << 31:
        return b"J" + struct.pack("<i", n)  # BININT
    data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + struct.pack("<B", len(data)) + data  # LONG1


def _tuple(items: tuple[int, ...]) -> bytes:
    body = b"".join(_int(n) for n in items)
    if len(items) <= 3:
        return body + (b")", b"\x85", b"\x86", b"\x87")[len(items)]  # EMPTY_TUPLE, TUPLE1..3
    return b"(" + body + b"t"  # MARK ... TUPLE
