"""ONNX export of the prompt encoder + mask decoder, a drop-in for the official
`scripts/export_onnx_model.py` decoder (`segment_anything.utils.onnx.SamOnnxModel`).

    model = sam_jax.load("sam_vit_b")
    export_onnx(model, "sam_decoder.onnx", return_single_mask=True)
    quantize_onnx("sam_decoder.onnx", "sam_decoder_quant.onnx")
    save_image_embedding(model, image, "embedding.npy")
    export_encoder_onnx(model, "sam_encoder.onnx")   # the image encoder; its output is image_embeddings

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
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from ...modeling import Sam
from ...predictor import SamPredictor
from ...utils.io import atomic_file, partial_path
from ...utils.transforms import ResizeLongestSide

ONNX_HINT = "pip install sam-jax[onnx]"
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26  # weights beyond this leave the 2 GB protobuf room for the graph


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
) -> Path:
    """Writes the decoder ONNX model of `model` (flags as the official export script) and returns its path.

    return_single_mask: output only the best mask (the multimask outputs when N <= 2, the
    single-mask token when N >= 3, counting padding points, as the official select_masks).
    use_stability_score: replace the IoU predictions by the stability score of the low-res masks
    (offset 1.0). return_extra_metrics: also output stability scores and areas of the upscaled masks.
    opset: 11 or later (default 17, as the official script)."""
    onnx = _require("onnx")
    from .graph import build_graph  # imports onnx, an optional dependency

    if not 11 <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset must be between 11 and {onnx.defs.onnx_opset_version()}, got {opset}")
    proto = build_graph(model, return_single_mask, use_stability_score, return_extra_metrics, opset)
    onnx.checker.check_model(proto)
    path = Path(output_path)
    with atomic_file(path) as tmp:
        onnx.save(proto, tmp)
    return path


def export_encoder_onnx(
    model: Sam,
    output_path: str | os.PathLike,
    *,
    opset: int = 17,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> Path:
    """Writes the image encoder of `model` as ONNX (input `image` (B, 3, S, S) normalised and
    padded, output `image_embeddings` (B, C, S/16, S/16); see `image_encoder.py`) and returns its path.

    When the weights exceed `external_data_threshold` bytes (protobuf caps a file at 2 GB; vit_h's
    encoder is 2.5 GB) they go to `<output>.data` beside it, which must travel with it."""
    onnx = _require("onnx")
    from onnx.external_data_helper import convert_model_to_external_data  # optional dependency

    from .image_encoder import build_encoder_graph  # imports onnx, an optional dependency

    if not 11 <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset must be between 11 and {onnx.defs.onnx_opset_version()}, got {opset}")
    proto = build_encoder_graph(model, opset)
    path = Path(output_path)
    data = path.with_name(path.name + ".data")
    external = sum(len(t.raw_data) for t in proto.graph.initializer) > external_data_threshold
    if external:
        convert_model_to_external_data(proto, all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
    # Written in a temporary folder and checked there (from the file: a large model cannot be
    # checked in memory), then moved into place, the weights before the graph that names them.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    tmp.mkdir()
    try:
        onnx.save_model(proto, tmp / path.name)
        onnx.checker.check_model(str(tmp / path.name))
        if external:
            os.replace(tmp / data.name, data)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def quantize_onnx(in_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Dynamic uint8 weight quantization, with the official script's settings."""
    _require("onnx")
    _require("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(out_path)
    with atomic_file(out) as tmp:
        quantize_dynamic(
            model_input=str(in_path), model_output=str(tmp), per_channel=False, reduce_range=False, weight_type=QuantType.QUInt8
        )
    return out


def image_embedding(model: Sam, image: np.ndarray, image_format: str = "RGB") -> np.ndarray:
    """(1, C, h, w) float32 embedding of an (H, W, 3) uint8 image, as predictor.get_image_embedding()."""
    predictor = SamPredictor(model)
    predictor.set_image(image, image_format)
    return np.asarray(predictor.get_image_embedding(), dtype=np.float32)


def save_image_embedding(model: Sam, image: np.ndarray, path: str | os.PathLike, image_format: str = "RGB") -> Path:
    """Writes the `image_embeddings` input of the ONNX decoder for `image` to a `.npy` file."""
    path = Path(path)
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
