"""The export's files, and which of them are sam-jax's own: every writer here refuses an existing
output unless `overwrite`, and then replaces only a file of its own kind written by sam-jax: an
ONNX model whose producer is "sam-jax" (quantized ones too), an embedding `.npy` (float32, shape
(1, C, h, w)); never one of its inputs (`utils.io.check_output`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...io.outputs import check_output, remove_stale_partials

PRODUCER = "sam-jax"  # the producer_name of every ONNX model written here
ONNX_OUTPUT = "an ONNX model"
EMBEDDING_OUTPUT = "an image embedding .npy"


def onnx_producer(path: str | os.PathLike) -> str | None:
    """The producer_name of an ONNX file, from its first bytes (protobuf writes ModelProto's
    fields in number order: ir_version (1), then producer_name (2)); None if it is not there."""
    with open(path, "rb") as f:
        head = f.read(64)

    def varint(pos: int) -> tuple[int, int]:
        value = shift = 0
        while pos < len(head):
            byte = head[pos]
            value |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if not byte & 0x80:
                return value, pos
        return -1, pos

    if head[:1] != b"\x08":
        return None
    _, pos = varint(1)
    if head[pos : pos + 1] != b"\x12":
        return None
    n, pos = varint(pos + 1)
    return head[pos : pos + n].decode("utf-8", "replace") if 0 <= n <= len(head) - pos else None


def is_own_onnx(path: Path) -> bool:
    return path.is_file() and onnx_producer(path) == PRODUCER


def is_embedding_npy(path: Path) -> bool:
    """A .npy of one image embedding, the kind `save_image_embedding` writes."""
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
    except (OSError, ValueError):
        return False
    return dtype == np.dtype("<f4") and not fortran and len(shape) == 4 and shape[0] == 1


def check_export_output(path: Path, overwrite: bool, is_own, what: str, inputs=()) -> None:
    """Refuses `path` unless it may be written (see the module docstring); clears dead leftovers."""
    check_output(path, kind="file", overwrite=overwrite, is_own=is_own, what=what, inputs=inputs)
    remove_stale_partials(path.parent)
