"""ONNX export of the prompt encoder + mask decoder, a drop-in for the official
`scripts/export_onnx_model.py` decoder (`segment_anything.utils.onnx.SamOnnxModel`).

    model = sam_jax.load("sam_vit_b")
    export_onnx(model, "sam_decoder.onnx", return_single_mask=True)
    quantize_onnx("sam_decoder.onnx", "sam_decoder_quant.onnx")
    save_image_embedding(model, image, "embedding.npy")

Inputs (float32; h = w = image_size / 16, C = prompt_embed_dim):
    image_embeddings (1, C, h, w); point_coords (1, N, 2) xy in the resized-input frame (longest
    side = image_size); point_labels (1, N): 1 positive, 0 negative, 2 / 3 box top-left /
    bottom-right, -1 padding (the "not a point" token); mask_input (1, 1, 4h, 4w) logits;
    has_mask_input (1,) 1 or 0; orig_im_size (2,) (H, W) of the original image. N is dynamic.
Outputs: masks (1, M, H, W) logits at the original size (threshold at 0.0), iou_predictions
    (1, M), low_res_masks (1, M, 4h, 4w); M = num_multimask_outputs + 1 (all mask tokens, the
    single-mask token first), or 1 with return_single_mask. With return_extra_metrics the outputs
    are masks, iou_predictions, stability_scores (1, M), areas (1, M) int64, low_res_masks (the
    official order; the official script leaves the last two of these five misnamed).

The graph is built from this model's parameters by `sam_jax.export.onnx.graph` (not traced from torch),
so it needs only `onnx` (and `onnxruntime` to run or quantize it): `pip install sam-jax[onnx]`.

Every writer here refuses an existing output unless `overwrite`, and then replaces only a file of
its own kind written by sam-jax: an ONNX model whose producer is "sam-jax" (quantized ones too),
an embedding `.npy` (float32, shape (1, C, h, w)); never one of its inputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...modeling import Sam
from ...predictor import SamPredictor
from ...utils.io import atomic_file, check_output, remove_stale_partials
from ...utils.transforms import ResizeLongestSide

ONNX_HINT = "pip install sam-jax[onnx]"
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


def _check(path: Path, overwrite: bool, is_own, what: str, inputs=()) -> None:
    check_output(path, kind="file", overwrite=overwrite, is_own=is_own, what=what, inputs=inputs)
    remove_stale_partials(path.parent)


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"{module} is not installed: {ONNX_HINT}") from None


def export_onnx(
    model: Sam,
    output_path: str | os.PathLike,
    *,
    return_single_mask: bool = False,
    use_stability_score: bool = False,
    return_extra_metrics: bool = False,
    opset: int = 17,
    overwrite: bool = False,
) -> Path:
    """Writes the decoder ONNX model of `model` (flags as the official export script) and returns its path.

    return_single_mask: output only the best mask (the multimask outputs when N <= 2, the
    single-mask token when N >= 3, counting padding points, as the official select_masks).
    use_stability_score: replace the IoU predictions by the stability score of the low-res masks
    (offset 1.0). return_extra_metrics: also output stability scores and areas of the upscaled masks.
    opset: 11 or later (default 17, as the official script). overwrite: replace an existing ONNX
    model written by sam-jax (see the module docstring)."""
    onnx = _require("onnx")
    from .graph import build_graph  # imports onnx, an optional dependency

    path = Path(output_path)
    _check(path, overwrite, is_own_onnx, ONNX_OUTPUT)
    if not 11 <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset must be between 11 and {onnx.defs.onnx_opset_version()}, got {opset}")
    proto = build_graph(model, return_single_mask, use_stability_score, return_extra_metrics, opset)
    onnx.checker.check_model(proto)
    with atomic_file(path) as tmp:
        onnx.save(proto, tmp)
    return path


def quantize_onnx(in_path: str | os.PathLike, out_path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Dynamic uint8 weight quantization, with the official script's settings (its producer
    stays "sam-jax", so that it is recognised as sam-jax's own output)."""
    onnx = _require("onnx")
    _require("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(out_path)
    _check(out, overwrite, is_own_onnx, ONNX_OUTPUT, inputs=[in_path])
    with atomic_file(out) as tmp:
        quantize_dynamic(
            model_input=str(in_path), model_output=str(tmp), per_channel=False, reduce_range=False, weight_type=QuantType.QUInt8
        )
        proto = onnx.load(tmp)
        proto.producer_name = PRODUCER
        onnx.save(proto, tmp)
    return out


def image_embedding(model: Sam, image: np.ndarray, image_format: str = "RGB") -> np.ndarray:
    """(1, C, h, w) float32 embedding of an (H, W, 3) uint8 image, as predictor.get_image_embedding()."""
    predictor = SamPredictor(model)
    predictor.set_image(image, image_format)
    return np.asarray(predictor.get_image_embedding(), dtype=np.float32)


def save_image_embedding(
    model: Sam, image: np.ndarray, path: str | os.PathLike, image_format: str = "RGB", overwrite: bool = False
) -> Path:
    """Writes the `image_embeddings` input of the ONNX decoder for `image` to a `.npy` file
    (replacing an existing embedding .npy only with `overwrite`)."""
    path = Path(path)
    _check(path, overwrite, is_embedding_npy, EMBEDDING_OUTPUT)
    embedding = image_embedding(model, image, image_format)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.save(f, embedding)
    return path


def onnx_inputs(
    model: Sam,
    embedding: np.ndarray,
    original_size: tuple[int, int],
    point_coords: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    mask_input: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The decoder's input feed for prompts in original-image pixels, as the official notebook builds it.

    point_coords (N, 2) xy with point_labels (N,); box (4,) xyxy (two corners labelled 2 and 3);
    without a box a (0, 0) point labelled -1 is appended. mask_input: (1, 4h, 4w) or (1, 1, 4h, 4w)
    low-res logits from an earlier prediction."""
    coords = np.zeros((0, 2), np.float64) if point_coords is None else np.asarray(point_coords, np.float64).reshape(-1, 2)
    labels = np.zeros(0, np.float64) if point_labels is None else np.asarray(point_labels, np.float64).reshape(-1)
    if box is not None:
        coords = np.concatenate([coords, np.asarray(box, np.float64).reshape(2, 2)])
        labels = np.concatenate([labels, [2.0, 3.0]])
    else:
        coords = np.concatenate([coords, np.zeros((1, 2))])
        labels = np.concatenate([labels, [-1.0]])
    coords = ResizeLongestSide(model.config.image_size).apply_coords(coords, tuple(original_size))
    size = 4 * (model.config.image_size // model.config.patch_size)
    mask = np.zeros((1, 1, size, size), np.float32) if mask_input is None else np.asarray(mask_input, np.float32).reshape(1, 1, size, size)
    return {
        "image_embeddings": np.asarray(embedding, np.float32),
        "point_coords": coords[None].astype(np.float32),
        "point_labels": labels[None].astype(np.float32),
        "mask_input": mask,
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
        "orig_im_size": np.array(original_size, np.float32),
    }
