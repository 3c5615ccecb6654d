"""Reader and writer of `.safetensors` files, without the `safetensors` package: Hugging Face
checkpoints (`model.safetensors`, renamed to official keys by `hf.py`) and official-named state
dicts saved in that format."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import ml_dtypes
import numpy as np

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype(np.bool_),
}
# The reference implementation allows 100 MB; SAM's header is 30 KB, and JSON can build about 20
# bytes of Python objects per byte of header, so a smaller cap keeps what a header costs bounded.
_MAX_HEADER = 16 << 20


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a `.safetensors` file into {name: array}; the arrays are copies owning their memory.

    Checked as the reference implementation checks, before any tensor is copied: the header is a
    JSON object of at most 16 MiB, each entry has a supported dtype and data_offsets that match its
    shape, and the entries tile the data buffer exactly (sorted by offset, no overlap, no gap), so
    the arrays together are never larger than the file. Raises ValueError, one line naming the
    file (and the tensor at fault), for anything else."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file ({size} bytes, no 8-byte header length)")
        n = int.from_bytes(head, "little")
        if not 2 <= n <= min(_MAX_HEADER, size - 8):
            raise ValueError(f"{path}: header length {n} is impossible for a file of {size} bytes (at most {_MAX_HEADER})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: the header is not valid JSON ({e})") from None
        except RecursionError:
            raise ValueError(f"{path}: the header is nested too deeply to be a safetensors header") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise ValueError(f"{path}: __metadata__ must map strings to strings")

    start, buf_len = 8 + n, size - 8 - n
    entries = []
    for name, info in header.items():
        where = f"{path}: tensor {name!r:.100}"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise ValueError(f"{where}: malformed header entry {info!r:.100}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _DTYPES:
            raise ValueError(f"{where}: unsupported dtype {dtype!r:.20} (supported: {', '.join(_DTYPES)})")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"{where}: bad shape {shape!r:.100}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise ValueError(f"{where}: bad data_offsets {offsets!r:.100}")
        begin, end = offsets
        if not 0 <= begin <= end <= buf_len:
            raise ValueError(f"{where}: data_offsets [{begin}, {end}] outside the {buf_len}-byte buffer")
        expected = _DTYPES[dtype].itemsize * math.prod(shape)
        if end - begin != expected:
            raise ValueError(f"{where}: {end - begin} bytes for {dtype}{shape}, expected {expected}")
        entries.append((begin, end, name))
    covered = 0
    for begin, end, name in sorted(entries):
        if begin != covered:
            what = "overlaps the tensor before it" if begin < covered else f"leaves bytes {covered}..{begin} unused"
            raise ValueError(f"{path}: tensor {name!r:.100} at data_offsets [{begin}, {end}] {what}")
        covered = end
    if covered != buf_len:
        raise ValueError(f"{path}: the tensors cover {covered} of the {buf_len} bytes of the data buffer")

    buf = np.memmap(path, np.uint8, "r", offset=start) if buf_len else np.zeros(0, np.uint8)
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        out[name] = np.array(buf[begin:end]).view(_DTYPES[info["dtype"]]).reshape(tuple(info["shape"]))
    del buf
    return out


def read_metadata(path: str | os.PathLike) -> dict[str, str] | None:
    """The header's `__metadata__` of a `.safetensors` file (None when it has none); ValueError,
    one line, when the file has no readable header. Only the header is read."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= min(_MAX_HEADER, size - 8):
            raise ValueError(f"{path}: not a safetensors file (header length {n}, file size {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise ValueError(f"{path}: the header is not valid JSON") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else None


def write_safetensors(state: Mapping[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Writes `state` ({name: array}, any strides) to `path` as the reference implementation does:
    the JSON header padded with spaces to a multiple of 8 bytes, then the tensors little-endian
    and back to back, the widest dtypes first (so every tensor is aligned to its item size), in
    `state`'s order within a dtype. `metadata` ({str: str}) is the header's `__metadata__`."""
    names = {np.dtype(v).newbyteorder("<"): k for k, v in _DTYPES.items()}
    arrays = {key: np.asarray(value) for key, value in state.items()}
    order = sorted(arrays, key=lambda k: -arrays[k].dtype.itemsize)  # stable: state's order within a width
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for key in order:
        dtype = arrays[key].dtype.newbyteorder("<")
        if dtype not in names:
            raise ValueError(f"{key}: dtype {arrays[key].dtype} has no safetensors name here (supported: {', '.join(_DTYPES)})")
        nbytes = arrays[key].nbytes
        header[key] = {"dtype": names[dtype], "shape": list(arrays[key].shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for key in order:
            f.write(np.ascontiguousarray(arrays[key], arrays[key].dtype.newbyteorder("<")).reshape(-1).view(np.uint8))
