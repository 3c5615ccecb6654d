"""The prompt encoder + mask decoder as an ONNX file, for either decoder family: the official
`SamOnnxModel`'s graph (`sam_onnx`) for SAM's decoder, sam-hq's (`sam_onnx_hq`) for HQ-SAM's."""

from __future__ import annotations

import os
from pathlib import Path

from ...modeling import Sam
from . import sam_onnx, sam_onnx_hq
from .files import require, write_onnx


def export_onnx(
    model: Sam,
    output_path: str | os.PathLike,
    *,
    return_single_mask: bool = False,
    use_stability_score: bool = False,
    return_extra_metrics: bool = False,
    hq_token_only: bool = False,
    multimask_output: bool = False,
    opset: int = 17,
    gelu_approximate: bool = False,
    overwrite: bool = False,
) -> Path:
    """Writes the decoder graph of `model` to `output_path`, atomically, and returns its path.

    SAM's decoder: the official SamOnnxModel(model, return_single_mask, use_stability_score,
    return_extra_metrics), flags as the official export script. HQ-SAM's: sam-hq's
    SamOnnxModel(model, hq_token_only, multimask_output, use_stability_score, return_extra_metrics),
    flags as sam-hq's script; its graph always outputs one mask. Each family's flags are refused
    for the other. opset: 11 or later (default 17, as both scripts); gelu_approximate: tanh GELUs,
    no Erf node; overwrite: replace an existing ONNX model written by sam-jax (`files`)."""
    require("onnx")
    hq = model.config.decoder == "hq"
    wrong = ([("return_single_mask", return_single_mask)] if hq else
             [("hq_token_only", hq_token_only), ("multimask_output", multimask_output)])
    wrong = [name for name, value in wrong if value]
    if wrong:
        what = "an HQ-SAM decoder graph outputs one mask (sam-hq's SamOnnxModel: choose it with multimask_output and " \
               "hq_token_only)" if hq else "they are sam-hq's options, and this model's decoder is SAM's"
        raise ValueError(f"{wrong[0]} does not apply: {what}")
    if hq:
        flags = sam_onnx_hq.HQOnnxFlags(hq_token_only, multimask_output, use_stability_score, return_extra_metrics)
        build = sam_onnx_hq.build_graph
    else:
        flags = sam_onnx.OnnxFlags(return_single_mask, use_stability_score, return_extra_metrics)
        build = sam_onnx.build_graph
    return write_onnx(lambda: build(model, flags, opset, gelu_approximate), output_path, opset, overwrite)
