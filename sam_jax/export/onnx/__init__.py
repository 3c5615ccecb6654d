"""ONNX export of the prompt encoder + mask decoder, a drop-in for the official
`scripts/export_onnx_model.py` decoder (`segment_anything.utils.onnx.SamOnnxModel`), or for an
HQ-SAM model for sam-hq's (`segment_anything_hq.utils.onnx.SamOnnxModel`); and of the image encoder.

    model = sam_jax.load("sam_vit_b")
    export_onnx(model, "sam_decoder.onnx", return_single_mask=True)   # or, as the official notebook:
    SamOnnxModel(model, return_single_mask=True).export("sam_decoder.onnx", opset_version=17)
    quantize_onnx("sam_decoder.onnx", "sam_decoder_quant.onnx")
    save_image_embedding(model, image, "embedding.npy")
    export_encoder_onnx(model, "sam_encoder.onnx")   # the image encoder; its output is image_embeddings

Inputs (float32; h = w = the embedding grid, image_size / 16 for the official models, C = prompt_embed_dim):
    image_embeddings (1, C, h, w); point_coords (1, N, 2) xy in the resized-input frame (longest
    side = image_size); point_labels (1, N): 1 positive, 0 negative, 2 / 3 box top-left /
    bottom-right, -1 padding (the "not a point" token); mask_input (1, 1, 4h, 4w) logits;
    has_mask_input (1,) 1 or 0; orig_im_size (2,) (H, W) of the original image. N is dynamic.
Outputs: masks (1, M, H, W) logits at the original size (threshold at 0.0), iou_predictions
    (1, M), low_res_masks (1, M, 4h, 4w); M = num_multimask_outputs + 1 (all mask tokens, the
    single-mask token first), or 1 with return_single_mask. With return_extra_metrics the outputs
    are masks, iou_predictions, stability_scores (1, M), areas (1, M) int64, low_res_masks (the
    official order; the official script leaves the last two of these five misnamed).
An HQ-SAM model's graph (`sam_onnx_hq`) also takes interm_embeddings (K, 1, h, w, D) second, and
    outputs one mask (M = 1) chosen by sam-hq's flags hq_token_only and multimask_output.

The graph is emitted from this model's parameters, one emitter per module of `sam_jax.modeling`
(`builder`, `prompt_encoder`, `transformer`, `mask_decoder`, `mask_decoder_hq`, `image_encoder`,
`tiny_vit_sam`, and `sam_onnx` / `sam_onnx_hq` for the SamOnnxModels' own steps; `decoder_onnx` and
`encoder_onnx` assemble the files), not traced from torch, so writing it needs only `onnx` (and
`onnxruntime` to run or quantize it): `pip install onnx onnxruntime`. This package imports without them.

Every writer here refuses an existing output unless `overwrite`, and then replaces only a file of
its own kind written by sam-jax (`files`): an ONNX model whose producer is "sam-jax" (quantized
ones too), an embedding `.npy` (float32, shape (1, C, h, w)); never one of its inputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...modeling import Sam
from ...modeling.prompt_encoder import IGNORE_LABEL, prompt_tokens
from ...predictor import SamPredictor
from ...io.outputs import atomic_file
from ...transforms import transform_for
from .decoder_onnx import export_onnx
from .encoder_onnx import export_encoder_onnx
from .files import EMBEDDING_OUTPUT, ONNX_HINT, ONNX_OUTPUT, check_export_output, is_embedding_npy, is_own_onnx, quantize_onnx
from .sam_onnx import OnnxFlags, SamOnnxModel, build_graph

__all__ = [
    "EMBEDDING_OUTPUT", "ONNX_HINT", "ONNX_OUTPUT", "OnnxFlags", "SamOnnxModel", "build_graph", "export_encoder_onnx",
    "export_onnx", "image_embedding", "is_embedding_npy", "is_own_onnx", "onnx_inputs", "quantize_onnx",
    "save_image_embedding",
]


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
    check_export_output(path, overwrite, is_embedding_npy, EMBEDDING_OUTPUT)
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
    interm_embeddings: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The decoder's input feed for prompts in original-image pixels, as the official notebook builds it.

    point_coords (N, 2) xy with point_labels (N,); box (4,) xyxy; mask_input: (1, 4h, 4w) or
    (1, 1, 4h, 4w) low-res logits from an earlier prediction. The tokens are `prompt_tokens`'
    (the official order: the points, the -1 pad when there is no box, the two box corners
    labelled 2 and 3), without its empty slots; with neither points nor a box, the -1 pad alone.
    interm_embeddings: for an HQ-SAM model (required), the encoder's (K, 1, h, w, D) early features
    (the ONNX or StableHLO encoder's second output)."""
    hq = model.config.decoder == "hq"
    if hq != (interm_embeddings is not None):
        raise ValueError("interm_embeddings " + ("is required for an HQ-SAM model (the exported encoder's second output)"
                                                 if hq else "applies to HQ-SAM models only"))
    coords = np.zeros((0, 2)) if point_coords is None else np.asarray(point_coords, np.float64)
    labels = np.zeros(0) if point_labels is None else np.asarray(point_labels, np.float64).reshape(-1)
    if coords.size % 2:
        raise ValueError(f"point_coords must have shape (N, 2), got {coords.shape}")
    coords = coords.reshape(-1, 2)
    if labels.shape != coords.shape[:1]:
        raise ValueError(f"point_labels must have {len(coords)} labels to match point_coords, got shape {labels.shape}")
    if box is not None and np.size(box) != 4:
        raise ValueError(f"box must hold 4 numbers (x0, y0, x1, y1), got shape {np.shape(box)}")
    # To the resized-input frame in float64 first, as the official predictor: prompt_tokens' float32 is the one rounding.
    transform = transform_for(model.config)  # MedSAM's square resize, else the official longest side
    coords = transform.apply_coords(coords, tuple(original_size))
    boxes = np.zeros((1, 4)) if box is None else transform.apply_boxes(np.asarray(box, np.float64), tuple(original_size))
    tokens, token_labels = prompt_tokens(coords[None], labels[None], boxes, np.array([box is not None]))
    tokens, token_labels = np.asarray(tokens[0]), np.array(token_labels[0])
    if (token_labels == IGNORE_LABEL).all():  # no prompt at all: the "not a point" pad slot alone, at (0, 0)
        token_labels[len(coords)] = -1
    keep = token_labels != IGNORE_LABEL

    mask_size = model.prompt_encoder.mask_input_size
    if mask_input is None:
        mask = np.zeros((1, 1, *mask_size), np.float32)
    elif np.size(mask_input) != mask_size[0] * mask_size[1]:
        raise ValueError(f"mask_input must have shape (1, {mask_size[0]}, {mask_size[1]}), got {np.shape(mask_input)}")
    else:
        mask = np.asarray(mask_input, np.float32).reshape(1, 1, *mask_size)
    return {
        "image_embeddings": np.asarray(embedding, np.float32),
        **({"interm_embeddings": np.asarray(interm_embeddings, np.float32)} if hq else {}),
        "point_coords": tokens[keep][None].astype(np.float32),
        "point_labels": token_labels[keep][None].astype(np.float32),
        "mask_input": mask,
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
        "orig_im_size": np.array(original_size, np.float32),
    }
