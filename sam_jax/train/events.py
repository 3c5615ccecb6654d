"""TensorBoard event files, written without TensorBoard or TensorFlow: the file is a TFRecord
stream of `Event` protocol buffers (tensorflow/core/util/event.proto), each scalar a
`Summary.Value` with a `simple_value`. The format is small and stable (TensorBoard reads files
written this way by every framework), so a few lines here replace a dependency (tensorboardX
would pull in protobuf; TensorFlow or clu are far heavier).

    writer = EventWriter(run / "events.out.tfevents.sam-jax")
    writer.scalars(100, {"train/loss": 0.52, "train/lr": 1e-4})

TFRecord framing: length (uint64 LE), masked CRC-32C of the length, the bytes, masked CRC-32C of
the bytes. The protocol buffers are encoded field by field (wire types 0, 1, 2 and 5).
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli, reflected
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int = 0, *, file_version: str | None = None, scalars: dict[str, float] | None = None) -> bytes:
    """One serialised `Event`: wall_time (1, double), step (2, int64), file_version (3, string)
    or summary (5: `Summary`, its values (1) each a tag (1, string) and simple_value (2, float))."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time)
    if step:
        out += _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        out += _field(3, file_version.encode())
    if scalars:
        values = b"".join(_field(1, _field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", v)) for tag, v in scalars.items())
        out += _field(5, values)
    return out


class EventWriter:
    """Appends scalar events to one file (created with its version header when new)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def start(self) -> None:
        """A new file holding only the header event (an existing one is replaced)."""
        self.path.write_bytes(tfrecord(event(time.time(), file_version="brain.Event:2")))

    def scalars(self, step: int, values: dict[str, float], wall_time: float | None = None) -> None:
        if not self.path.exists():
            self.start()
        with open(self.path, "ab") as f:
            f.write(tfrecord(event(time.time() if wall_time is None else wall_time, step, scalars=values)))


def metric_scalars(record: dict) -> dict[str, float]:
    """A metrics.jsonl line -> TensorBoard tags: `val_*` as `val/*`, the rest as `train/*`
    (numbers only; the step is the event's)."""
    out = {}
    for k, v in record.items():
        if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[f"val/{k[4:]}" if k.startswith("val_") else f"train/{k}"] = float(v)
    return out
