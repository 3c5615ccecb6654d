"""sam-hq's `segment_anything_hq/utils/onnx.py` `SamOnnxModel`: the prompt encoder, HQ-SAM's mask
decoder and the mask postprocessing for one prompt, with sam-hq's export script's options.

    onnx_model = SamOnnxModel(sam_hq, hq_token_only=False, multimask_output=False)   # sam-hq's arguments
    onnx_model.export("sam_hq_decoder.onnx", opset_version=17)
    masks, iou_predictions, low_res_masks = onnx_model(**inputs)    # NumPy in, the JAX model's outputs

Inputs: those of the official decoder graph (`sam_onnx`) with `interm_embeddings` second, as
sam-hq's script exports them: image_embeddings (1, C, h, w), interm_embeddings (K, 1, h, w, D)
float32, a stack of the encoder's early features of which the decoder reads the first (K is
dynamic: 1 from sam-jax's encoder export, one per global-attention block (4) from sam-hq's ViT;
D = `config.early_feature_dim`), point_coords (1, N, 2), point_labels (1, N), mask_input
(1, 1, 4h, 4w), has_mask_input (1,), orig_im_size (2,).
Outputs: masks (1, 1, H, W), iou_predictions (1, 1), low_res_masks (1, 1, 4h, 4w) (with
return_extra_metrics: masks, iou_predictions, stability_scores, areas, low_res_masks). sam-hq's
rule makes the one mask: SAM's single-mask output, or with multimask_output the multimask output
of highest score (outputs 1..M, the first on ties), its score reported; its logits plus the HQ
mask's, or the HQ mask's alone with hq_token_only. use_stability_score: the stability scores of
the low-res masks (offset 1.0) replace the IoU predictions before that choice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx

from ...functional.automatic_mask_generator import calculate_stability_score
from ...modeling import Sam
from ...modeling.mask_decoder_hq import select_hq_output
from ...modeling.prompt_encoder import IGNORE_LABEL
from . import mask_decoder_hq, prompt_encoder
from .builder import GraphBuilder
from .files import quantize_onnx, write_onnx
from .sam_onnx import (
    STABILITY_SCORE_OFFSET, OnnxFlags, embed_masks, mask_postprocessing, prepare_inputs, sam_onnx_postprocess_jit,
    stability_score,
)

INPUT_NAMES = ("image_embeddings", "interm_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input",
               "orig_im_size")


class HQOnnxFlags(NamedTuple):
    """sam-hq's export script's output options (see SamOnnxModel)."""

    hq_token_only: bool = False
    multimask_output: bool = False
    use_stability_score: bool = False
    return_extra_metrics: bool = False

    @property
    def output_names(self) -> tuple[str, ...]:
        return OnnxFlags(True, return_extra_metrics=self.return_extra_metrics).output_names


class SamOnnxModel:
    """sam-hq's SamOnnxModel on a sam_jax HQ-SAM model (see the module docstring)."""

    def __init__(self, model: Sam, hq_token_only: bool = False, multimask_output: bool = False,
                 use_stability_score: bool = False, return_extra_metrics: bool = False):
        if model.config.decoder != "hq":
            raise ValueError(f"sam-hq's SamOnnxModel needs an HQ-SAM model, got decoder {model.config.decoder!r}")
        self.model = model
        self.mask_decoder = model.mask_decoder
        self.img_size = model.config.image_size
        self.hq_token_only = bool(hq_token_only)
        self.multimask_output = bool(multimask_output)
        self.use_stability_score = bool(use_stability_score)
        self.return_extra_metrics = bool(return_extra_metrics)

    @property
    def stability_score_offset(self) -> float:
        return STABILITY_SCORE_OFFSET

    @property
    def flags(self) -> HQOnnxFlags:
        return HQOnnxFlags(self.hq_token_only, self.multimask_output, self.use_stability_score, self.return_extra_metrics)

    def __call__(self, image_embeddings, interm_embeddings, point_coords, point_labels, mask_input, has_mask_input,
                 orig_im_size) -> tuple[np.ndarray, ...]:
        """sam-hq's forward on NumPy inputs (shapes as the ONNX inputs), with our JAX model."""
        cfg = self.model.config
        interm = np.asarray(interm_embeddings, np.float32)
        g = cfg.image_embedding_size
        if interm.ndim != 5 or interm.shape[0] < 1 or interm.shape[1:] != (1, g, g, cfg.early_feature_dim):
            raise ValueError(f"interm_embeddings must have shape (K, 1, {g}, {g}, {cfg.early_feature_dim}), got {interm.shape}")
        feed, n, input_size, original_size = prepare_inputs(self.model, dict(zip(INPUT_NAMES[:1] + INPUT_NAMES[2:], (
            image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size))))
        masks, scores = sam_hq_onnx_decode_jit(*nnx.split(self.model), interm_embeddings=interm[0], flags=self.flags, **feed)
        outputs = sam_onnx_postprocess_jit(masks, scores, n, flags=OnnxFlags(False, False, self.flags.return_extra_metrics),
                                           config=cfg, input_size=input_size, original_size=original_size)
        dtypes = {"areas": np.int64}
        return tuple(np.asarray(o, dtypes.get(k, np.float32)) for o, k in zip(outputs, self.flags.output_names))

    def export(self, f: str | os.PathLike, opset_version: int = 17, gelu_approximate: bool = False,
               quantize_out: str | os.PathLike | None = None) -> Path:
        """Writes the ONNX model to `f` (what sam-hq's export script makes) and returns its path;
        gelu_approximate and quantize_out as the official SamOnnxModel.export."""
        path = write_onnx(lambda: build_graph(self.model, self.flags, opset_version, gelu_approximate), f, opset_version)
        if quantize_out is not None:
            quantize_onnx(path, quantize_out)
        return path


# ---------------------------------------------------------------------------------- JAX side
def sam_hq_onnx_decode(graphdef: nnx.GraphDef, params: nnx.State, image_embeddings, interm_embeddings, point_coords,
                       point_labels, mask_input, has_mask_input, *, flags: HQOnnxFlags) -> tuple[jax.Array, jax.Array]:
    """sam-hq's SamOnnxModel.forward up to its one mask: the inputs as the ONNX ones (interm_embeddings
    the first early feature, (1, h, w, D); points may be padded with IGNORE_LABEL slots) -> the
    low-res mask logits (1, 1, 4h, 4w) and its score (1, 1)."""
    model = nnx.merge(graphdef, params)
    pe, dec = model.prompt_encoder, model.mask_decoder
    sparse_embedding = pe.embed_points(point_coords, point_labels)
    no_mask = pe.no_mask_embed.embedding[...].reshape(1, -1, 1, 1)
    dense_embedding = has_mask_input * pe.embed_masks(mask_input) + (1 - has_mask_input) * no_mask
    hq = dec.hq_features(image_embeddings, interm_embeddings)
    masks, scores = dec.predict_masks(image_embeddings, pe.get_dense_pe(), sparse_embedding, dense_embedding, hq,
                                      point_labels != IGNORE_LABEL)
    if flags.use_stability_score:  # of every mask, the HQ one too; sam-hq's choice reads SAM's outputs' only
        scores = calculate_stability_score(masks, model.mask_threshold, STABILITY_SCORE_OFFSET)[:, : dec.num_mask_tokens]
    return select_hq_output(masks, scores, flags.multimask_output, flags.hq_token_only)


sam_hq_onnx_decode_jit = jax.jit(sam_hq_onnx_decode, static_argnames=("graphdef", "flags"))


# ---------------------------------------------------------------------------------- graph side
def forward(g: GraphBuilder, onnx_model: SamOnnxModel) -> list[tuple[str, str]]:
    """Emits sam-hq's SamOnnxModel.forward on the graph inputs INPUT_NAMES; returns (value, output name) pairs."""
    model, flags = onnx_model.model, onnx_model.flags
    pe, dec, threshold = model.prompt_encoder, model.mask_decoder, model.mask_threshold
    sparse_embedding = prompt_encoder.embed_points(g, pe, "point_coords", "point_labels")
    dense_embedding = embed_masks(g, model, "mask_input", "has_mask_input")
    # interm_embeddings[0], (1, h, w, D) -> NCHW, as sam-hq's permute(0, 3, 1, 2)
    early = g.op("Transpose", g.op("Gather", "interm_embeddings", g.ints(0), axis=0), perm=[0, 3, 1, 2])
    hq = mask_decoder_hq.hq_features(g, dec, "image_embeddings", early)
    masks, scores = mask_decoder_hq.predict_masks(g, dec, "image_embeddings", prompt_encoder.get_dense_pe(g, pe),
                                                  sparse_embedding, dense_embedding, hq)
    T = dec.num_mask_tokens  # SAM's mask tokens; the HQ mask is masks[:, T]
    if flags.use_stability_score:
        scores = stability_score(g, masks, threshold, STABILITY_SCORE_OFFSET)
    if flags.multimask_output:  # the multimask output (1..T-1) of highest score, as torch.max: the first on ties
        multi_scores = g.slice(scores, [1], [T], [1])
        best = g.op("ArgMax", multi_scores, axis=1, keepdims=0)  # (1,)
        scores = g.op("Gather", multi_scores, best, axis=1)
        masks_sam = g.op("Gather", g.slice(masks, [1], [T], [1]), best, axis=1)
    else:
        scores = g.slice(scores, [0], [1], [1])
        masks_sam = g.slice(masks, [0], [1], [1])
    masks_hq = g.slice(masks, [T], [T + 1], [1])
    masks = masks_hq if flags.hq_token_only else g.op("Add", masks_sam, masks_hq)
    upscaled_masks = mask_postprocessing(g, masks, "orig_im_size", onnx_model.img_size, model.config.preprocess)
    outputs = [upscaled_masks, scores]
    if flags.return_extra_metrics:
        areas = g.reduce("ReduceSum", g.cast(g.op("Greater", upscaled_masks, g.const(threshold)), np.int64), [2, 3], 0)
        outputs += [stability_score(g, upscaled_masks, threshold, STABILITY_SCORE_OFFSET), areas]
    return list(zip(outputs + [masks], flags.output_names))


def build_graph(model: Sam, flags: HQOnnxFlags, opset: int = 17, gelu_approximate: bool = False):
    """The onnx.ModelProto of SamOnnxModel(model, *flags): batch 1, the point count N and the
    number K of stacked early features dynamic, the output mask size a runtime function of orig_im_size."""
    g = GraphBuilder(model, opset, gelu_approximate)
    outputs = forward(g, SamOnnxModel(model, *flags))
    cfg = model.config
    C, (h, w) = model.prompt_encoder.embed_dim, model.prompt_encoder.image_embedding_size
    mh, mw = model.prompt_encoder.mask_input_size
    f32 = np.float32
    inputs = [("image_embeddings", f32, [1, C, h, w]), ("interm_embeddings", f32, ["num_interm", 1, h, w, cfg.early_feature_dim]),
              ("point_coords", f32, [1, "num_points", 2]), ("point_labels", f32, [1, "num_points"]),
              ("mask_input", f32, [1, 1, mh, mw]), ("has_mask_input", f32, [1]), ("orig_im_size", f32, [2])]
    shapes = {"masks": (f32, [1, 1, "orig_height", "orig_width"]), "iou_predictions": (f32, [1, 1]),
              "stability_scores": (f32, [1, 1]), "areas": (np.int64, [1, 1]), "low_res_masks": (f32, [1, 1, mh, mw])}
    return g.to_model(inputs, [(value, name, *shapes[name]) for value, name in outputs], "sam_jax_hq_decoder")
