"""The export's files, and which of them are sam-jax's own: every writer here refuses an existing
output unless `overwrite`, and then replaces only a file of its own kind written by sam-jax: an
ONNX model whose producer is "sam-jax" (quantized ones too), an embedding `.npy` (float32, shape
(1, C, h, w)); never one of its inputs (`utils.io.check_output`). Writing ONNX needs the `onnx`
package (`require`), quantizing it `onnxruntime` too; this module imports without them."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ...io.outputs import atomic_file, check_output, remove_stale_partials

PRODUCER = "sam-jax"  # the producer_name of every ONNX model written here
ONNX_OUTPUT = "an ONNX model"
EMBEDDING_OUTPUT = "an image embedding .npy"
ONNX_HINT = "pip install onnx onnxruntime (the [onnx] extra)"  # works outside a clone too


def require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"{module} is not installed: {ONNX_HINT}") from None


def check_opset(opset: int) -> None:
    onnx = require("onnx")
    if not 11 <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset must be between 11 and {onnx.defs.onnx_opset_version()}, got {opset}")


def write_onnx(build, output_path: str | os.PathLike, opset: int, overwrite: bool = False) -> Path:
    """Writes the model `build()` returns (an onnx.ModelProto under 2 GB), checked, atomically,
    once `output_path` may be written and `opset` is one this onnx writes; returns its path."""
    onnx = require("onnx")
    path = Path(output_path)
    check_export_output(path, overwrite, is_own_onnx, ONNX_OUTPUT)
    check_opset(opset)
    proto = build()
    onnx.checker.check_model(proto)
    with atomic_file(path) as tmp:
        onnx.save(proto, tmp)
    return path


def quantize_onnx(in_path: str | os.PathLike, out_path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Dynamic uint8 weight quantization, with the official script's settings. Its producer stays
    "sam-jax", so that it is recognised as sam-jax's own output (`overwrite` as `write_onnx`).

    onnxruntime logs "Please consider to run pre-processing before quantization" for any model it
    has not pre-processed (shape inference and graph optimisation). The official export quantizes
    without that step, and our graph already states its shapes, so the hint is dropped here rather
    than shown unexplained; the quantized model is the official one."""
    onnx = require("onnx")
    require("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic  # an optional dependency

    out = Path(out_path)
    check_export_output(out, overwrite, is_own_onnx, ONNX_OUTPUT, inputs=[in_path])
    root = logging.getLogger()
    root.addFilter(_drop_preprocessing_hint)
    try:
        with atomic_file(out) as tmp:
            quantize_dynamic(model_input=str(in_path), model_output=str(tmp), per_channel=False, reduce_range=False,
                             weight_type=QuantType.QUInt8)
            proto = onnx.load(tmp)
            proto.producer_name = PRODUCER
            onnx.save(proto, tmp)
    finally:
        root.removeFilter(_drop_preprocessing_hint)
    return out


def _drop_preprocessing_hint(record: logging.LogRecord) -> bool:
    return "pre-processing before quantization" not in record.getMessage()


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
