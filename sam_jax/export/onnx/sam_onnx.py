"""The official `segment_anything/utils/onnx.py` `SamOnnxModel`: the prompt encoder, the mask
decoder and the mask postprocessing for one prompt, with the export script's options.

`SamOnnxModel(model, return_single_mask, ...)` takes the official arguments. Called on NumPy
inputs it returns the official outputs computed by the JAX model (`sam_onnx_decode` and
`sam_onnx_postprocess`), to check a runtime's results as the official module is run in torch;
`.export(path, ...)` writes the ONNX model, which `build_graph` emits node by node from the
model's parameters (`forward`, `embed_masks`, `select_masks`, `mask_postprocessing`, ... below
are the graph side of the official methods). See `sam_jax.export.onnx` for the inputs and outputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ...config import SamConfig
from ...functional import bucket, upscale_masks
from ...modeling import Sam
from ...modeling.prompt_encoder import IGNORE_LABEL
from ...functional.automatic_mask_generator import calculate_stability_score
from . import mask_decoder, prompt_encoder
from .builder import GraphBuilder
from .files import quantize_onnx, write_onnx
STABILITY_SCORE_OFFSET = 1.0
INPUT_NAMES = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
VALID_LABELS = (-1, 0, 1, 2, 3)
MIN_POINT_BUCKET = 8  # points are padded to a power of two >= 8: the usual prompts share one compiled decoder


class OnnxFlags(NamedTuple):
    """The export script's output options (see SamOnnxModel)."""

    return_single_mask: bool
    use_stability_score: bool = False
    return_extra_metrics: bool = False

    @property
    def output_names(self) -> tuple[str, ...]:
        extra = ("stability_scores", "areas") if self.return_extra_metrics else ()
        return ("masks", "iou_predictions", *extra, "low_res_masks")


class SamOnnxModel:
    """The official SamOnnxModel on a sam_jax model.

        onnx_model = SamOnnxModel(sam, return_single_mask=True)
        onnx_model.export("sam_decoder.onnx", opset_version=17, quantize_out="sam_decoder_quant.onnx")
        masks, iou_predictions, low_res_masks = onnx_model(**inputs)    # NumPy in, NumPy out

    return_single_mask: output only the best mask (the multimask outputs when N <= 2, the
    single-mask token when N >= 3, counting padding points, as the official select_masks).
    use_stability_score: the stability score of the low-res masks (offset 1.0) replaces the IoU
    predictions. return_extra_metrics: also output stability scores and areas of the upscaled masks."""

    def __init__(self, model: Sam, return_single_mask: bool, use_stability_score: bool = False,
                 return_extra_metrics: bool = False):
        self.model = model
        self.mask_decoder = model.mask_decoder
        self.img_size = model.config.image_size
        self.return_single_mask = bool(return_single_mask)
        self.use_stability_score = bool(use_stability_score)
        self.return_extra_metrics = bool(return_extra_metrics)

    @property
    def stability_score_offset(self) -> float:
        return STABILITY_SCORE_OFFSET

    @property
    def flags(self) -> OnnxFlags:
        return OnnxFlags(self.return_single_mask, self.use_stability_score, self.return_extra_metrics)

    def __call__(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size
                 ) -> tuple[np.ndarray, ...]:
        """The official forward on NumPy inputs (shapes as the ONNX inputs), with our JAX model.
        Returns masks, iou_predictions[, stability_scores, areas], low_res_masks as the ONNX model."""
        feed, n, input_size, original_size = prepare_inputs(self.model, dict(zip(INPUT_NAMES, (
            image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size))))
        masks, scores = sam_onnx_decode_jit(*nnx.split(self.model), **feed)
        outputs = sam_onnx_postprocess_jit(masks, scores, n, flags=self.flags, config=self.model.config,
                                           input_size=input_size, original_size=original_size)
        dtypes = {"areas": np.int64}
        return tuple(np.asarray(o, dtypes.get(k, np.float32)) for o, k in zip(outputs, self.flags.output_names))

    @staticmethod
    def resize_longest_image_size(input_image_size: np.ndarray, longest_side: int) -> np.ndarray:
        """(2,) (H, W) -> the size scaled so the longest side is `longest_side`, in the official
        float32 arithmetic (torch's `longest_side / t` is `reciprocal(t) * longest_side`)."""
        input_image_size = np.asarray(input_image_size, np.float32)
        scale = np.reciprocal(input_image_size.max()) * np.float32(longest_side)
        return np.floor(scale * input_image_size + np.float32(0.5)).astype(np.int64)

    def export(self, f: str | os.PathLike, opset_version: int = 17, gelu_approximate: bool = False,
               quantize_out: str | os.PathLike | None = None) -> Path:
        """Writes the ONNX model to `f` (what the official notebook's torch.onnx.export call makes)
        and returns its path. gelu_approximate: tanh GELUs, for runtimes without Erf (the export
        script's --gelu-approximate); quantize_out: also write the dynamically uint8-quantized model."""
        path = write_onnx(lambda: build_graph(self.model, self.flags, opset_version, gelu_approximate), f, opset_version)
        if quantize_out is not None:
            quantize_onnx(path, quantize_out)
        return path


# ---------------------------------------------------------------------------------- JAX side
def sam_onnx_decode(graphdef: nnx.GraphDef, params: nnx.State, image_embeddings: jax.Array, point_coords: jax.Array,
                    point_labels: jax.Array, mask_input: jax.Array, has_mask_input: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The prompt encoding and mask decoding of SamOnnxModel.forward, all mask tokens. Inputs as
    the ONNX ones, except that the points may be padded with IGNORE_LABEL slots (which change
    nothing). Returns mask logits (1, T, 4h, 4w) and IoU predictions (1, T)."""
    model = nnx.merge(graphdef, params)
    pe = model.prompt_encoder
    sparse_embedding = pe.embed_points(point_coords, point_labels)
    no_mask = pe.no_mask_embed.embedding[...].reshape(1, -1, 1, 1)
    dense_embedding = has_mask_input * pe.embed_masks(mask_input) + (1 - has_mask_input) * no_mask
    return model.mask_decoder.predict_masks(
        image_embeddings, pe.get_dense_pe(), sparse_embedding, dense_embedding, point_labels != IGNORE_LABEL
    )


def sam_onnx_postprocess(masks: jax.Array, scores: jax.Array, num_points: jax.Array, *, flags: OnnxFlags,
                         config: SamConfig, input_size: tuple[int, int], original_size: tuple[int, int]
                         ) -> tuple[jax.Array, ...]:
    """The rest of SamOnnxModel.forward: (1, T, 4h, 4w) logits, (1, T) scores and the point count
    -> the outputs named by flags.output_names. input_size is resize_longest_image_size(orig_im_size)."""
    threshold = config.mask_threshold
    if flags.use_stability_score:
        scores = calculate_stability_score(masks, threshold, STABILITY_SCORE_OFFSET)
    if flags.return_single_mask:  # the official select_masks
        score_reweight = jnp.zeros(scores.shape[1]).at[0].set(1000.0)
        best_idx = jnp.argmax(scores + (num_points - 2.5) * score_reweight, axis=1)
        masks = jnp.take_along_axis(masks, best_idx[:, None, None, None], axis=1)
        scores = jnp.take_along_axis(scores, best_idx[:, None], axis=1)
    upscaled_masks = upscale_masks(masks, config, input_size, original_size, None)
    if flags.return_extra_metrics:
        stability_scores = calculate_stability_score(upscaled_masks, threshold, STABILITY_SCORE_OFFSET)
        areas = jnp.sum(upscaled_masks > threshold, axis=(-2, -1))
        return upscaled_masks, scores, stability_scores, areas, masks
    return upscaled_masks, scores, masks


# The decoder compiles once per point bucket, the cheap postprocessing once per flags and image size.
sam_onnx_decode_jit = jax.jit(sam_onnx_decode, static_argnames="graphdef")
sam_onnx_postprocess_jit = jax.jit(sam_onnx_postprocess, static_argnames=("flags", "config", "input_size", "original_size"))


def prepare_inputs(model: Sam, feed: dict) -> tuple[dict[str, np.ndarray], int, tuple[int, int], tuple[int, int]]:
    """The checked inputs (`_check_inputs`) without orig_im_size, the points padded with
    IGNORE_LABEL slots to a bucket (one compilation for the usual prompt counts); the point
    count N, the resized input size and the original size."""
    feed = _check_inputs(model, feed)
    orig_im_size = feed.pop("orig_im_size")
    input_size = tuple(int(v) for v in SamOnnxModel.resize_longest_image_size(orig_im_size, model.config.image_size))
    original_size = tuple(int(v) for v in orig_im_size.astype(np.int64))
    n = feed["point_coords"].shape[1]
    pad = bucket(max(n, MIN_POINT_BUCKET)) - n
    feed["point_coords"] = np.pad(feed["point_coords"], ((0, 0), (0, pad), (0, 0)))
    feed["point_labels"] = np.pad(feed["point_labels"], ((0, 0), (0, pad)), constant_values=IGNORE_LABEL)
    return feed, n, input_size, original_size


def _check_inputs(model: Sam, feed: dict) -> dict[str, np.ndarray]:
    """The inputs as float32 arrays, or a ValueError naming the first one of the wrong shape."""
    C, (h, w) = model.prompt_encoder.embed_dim, model.prompt_encoder.image_embedding_size
    feed = {k: np.asarray(v, np.float32) for k, v in feed.items()}
    n = feed["point_coords"].shape[1] if feed["point_coords"].ndim == 3 else -1
    expected = {"image_embeddings": (1, C, h, w), "point_coords": (1, n, 2), "point_labels": (1, n),
                "mask_input": (1, 1, *model.prompt_encoder.mask_input_size), "has_mask_input": (1,), "orig_im_size": (2,)}
    for name, shape in expected.items():
        if feed[name].shape != shape or (name == "point_coords" and n < 0):
            want = "(1, N, 2)" if name == "point_coords" else str(shape).replace("-1", "N")
            raise ValueError(f"{name} must have shape {want}, got {feed[name].shape}")
    if not np.isin(feed["point_labels"], VALID_LABELS).all():
        raise ValueError(f"point_labels must be in {VALID_LABELS}, got {np.unique(feed['point_labels']).tolist()}")
    if not (np.isfinite(feed["orig_im_size"]).all() and (feed["orig_im_size"] >= 1).all()):
        raise ValueError(f"orig_im_size must hold a positive (H, W), got {feed['orig_im_size'].tolist()}")
    return feed


# ---------------------------------------------------------------------------------- graph side
def forward(g: GraphBuilder, onnx_model: SamOnnxModel) -> list[tuple[str, str]]:
    """Emits SamOnnxModel.forward on the graph inputs INPUT_NAMES; returns (value, output name) pairs."""
    model, flags = onnx_model.model, onnx_model.flags
    pe, threshold = model.prompt_encoder, model.mask_threshold
    sparse_embedding = prompt_encoder.embed_points(g, pe, "point_coords", "point_labels")
    dense_embedding = embed_masks(g, model, "mask_input", "has_mask_input")
    masks, scores = mask_decoder.predict_masks(
        g, model.mask_decoder, "image_embeddings", prompt_encoder.get_dense_pe(g, pe), sparse_embedding, dense_embedding
    )
    if flags.use_stability_score:
        scores = stability_score(g, masks, threshold, STABILITY_SCORE_OFFSET)
    if flags.return_single_mask:
        num_points = g.op("Gather", g.op("Shape", "point_coords"), g.ints(1), axis=0)
        masks, scores = select_masks(g, masks, scores, num_points, model.mask_decoder.num_mask_tokens)
    upscaled_masks = mask_postprocessing(g, masks, "orig_im_size", onnx_model.img_size, model.config.preprocess)
    outputs = [upscaled_masks, scores]
    if flags.return_extra_metrics:
        areas = g.reduce("ReduceSum", g.cast(g.op("Greater", upscaled_masks, g.const(threshold)), np.int64), [2, 3], 0)
        outputs += [stability_score(g, upscaled_masks, threshold, STABILITY_SCORE_OFFSET), areas]
    return list(zip(outputs + [masks], flags.output_names))


def embed_masks(g: GraphBuilder, model: Sam, input_mask: str, has_mask_input: str) -> str:
    """SamOnnxModel._embed_masks: the downscaled mask where has_mask_input is 1, no_mask_embed where 0."""
    pe = model.prompt_encoder
    mask_embedding = g.op("Mul", has_mask_input, prompt_encoder.embed_masks(g, pe, input_mask))
    no_mask = g.param(pe.no_mask_embed.embedding, shape=(1, -1, 1, 1))
    return g.op("Add", mask_embedding, g.op("Mul", g.op("Sub", g.const(1.0), has_mask_input), no_mask))


def select_masks(g: GraphBuilder, masks: str, iou_preds: str, num_points: str, num_mask_tokens: int) -> tuple[str, str]:
    """SamOnnxModel.select_masks: the multimask outputs' best for N <= 2, the single-mask token
    for N >= 3, without control flow. (1, T, H, W), (1, T), int64 N -> (1, 1, H, W), (1, 1)."""
    score_reweight = g.const([[1000.0] + [0.0] * (num_mask_tokens - 1)])
    score = g.op("Add", iou_preds, g.op("Mul", g.op("Sub", g.cast(num_points, np.float32), g.const(2.5)), score_reweight))
    best_idx = g.op("ArgMax", score, axis=1, keepdims=0)  # (1,), the first maximum as torch.argmax
    return g.op("Gather", masks, best_idx, axis=1), g.op("Gather", iou_preds, best_idx, axis=1)


def resize_longest_image_size(g: GraphBuilder, input_image_size: str, longest_side: int) -> str:
    """resize_longest_image_size on a (2,) float value -> (2,) int64."""
    scale = g.op("Mul", g.op("Reciprocal", g.reduce("ReduceMax", input_image_size, [0], 1)), g.const(longest_side))
    return g.cast(g.op("Floor", g.op("Add", g.op("Mul", scale, input_image_size), g.const(0.5))), np.int64)


def mask_postprocessing(g: GraphBuilder, masks: str, orig_im_size: str, img_size: int, preprocess: str = "official") -> str:
    """(1, M, 4h, 4w) -> (1, M, H, W): upsample to img_size, crop to the resized image, upsample to
    orig_im_size. MedSAM's images fill the square (`preprocess` "medsam"): one resize to orig_im_size,
    as its inference (`sam_jax.modeling.sam.postprocess_masks`)."""
    if preprocess == "medsam":
        return g.resize(masks, g.op("Concat", g.slice(g.op("Shape", masks), [0], [2], [0]), g.cast(orig_im_size, np.int64), axis=0))
    masks = g.resize(masks, g.op("Concat", g.slice(g.op("Shape", masks), [0], [2], [0]), g.ints([img_size, img_size]), axis=0))
    prepadded_size = resize_longest_image_size(g, orig_im_size, img_size)
    masks = g.slice(masks, [0, 0], prepadded_size, [2, 3])
    sizes = g.op("Concat", g.slice(g.op("Shape", masks), [0], [2], [0]), g.cast(orig_im_size, np.int64), axis=0)
    return g.resize(masks, sizes)


def stability_score(g: GraphBuilder, masks: str, mask_threshold: float, threshold_offset: float) -> str:
    """calculate_stability_score: (1, M, H, W) logits -> (1, M) IoU of the masks thresholded at
    mask_threshold +/- threshold_offset."""
    def count(t: float) -> str:
        above = g.cast(g.op("Greater", masks, g.const(t)), np.int64)
        return g.cast(g.reduce("ReduceSum", above, [2, 3], 0), np.float32)

    return g.op("Div", count(mask_threshold + threshold_offset), count(mask_threshold - threshold_offset))


def build_graph(model: Sam, flags: OnnxFlags, opset: int = 17, gelu_approximate: bool = False):
    """The onnx.ModelProto of SamOnnxModel(model, *flags): batch 1, the point count N dynamic,
    the output mask size a runtime function of orig_im_size."""
    g = GraphBuilder(model, opset, gelu_approximate)
    outputs = forward(g, SamOnnxModel(model, *flags))
    C, (h, w) = model.prompt_encoder.embed_dim, model.prompt_encoder.image_embedding_size
    mh, mw = model.prompt_encoder.mask_input_size
    M = 1 if flags.return_single_mask else model.mask_decoder.num_mask_tokens
    f32 = np.float32
    inputs = [("image_embeddings", f32, [1, C, h, w]), ("point_coords", f32, [1, "num_points", 2]),
              ("point_labels", f32, [1, "num_points"]), ("mask_input", f32, [1, 1, mh, mw]),
              ("has_mask_input", f32, [1]), ("orig_im_size", f32, [2])]
    shapes = {"masks": (f32, [1, M, "orig_height", "orig_width"]), "iou_predictions": (f32, [1, M]),
              "stability_scores": (f32, [1, M]), "areas": (np.int64, [1, M]), "low_res_masks": (f32, [1, M, mh, mw])}
    return g.to_model(inputs, [(value, name, *shapes[name]) for value, name in outputs], "sam_jax_decoder")
