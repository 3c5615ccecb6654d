"""The image encoder as an ONNX graph and file, for every encoder family: the ViT (`image_encoder`)
and TinyViT (`tiny_vit_sam`), emitted node by node from a loaded model's parameters.

Input `image` float32 (B, 3, S, S), preprocessed as the model's profile says (B is dynamic; the
graph input's doc string and the model's metadata name the profile); outputs `image_embeddings`
(B, C, g, g), the decoder export's input, and for an HQ-SAM model `interm_embeddings`
(1, B, g, g, D), the HQ decoder export's input (see `sam_jax.export.encoder_interface`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from ...io.outputs import partial_path
from ...modeling import Sam
from ..encoder_interface import encoder_outputs, image_input
from .builder import GraphBuilder
from .files import ONNX_OUTPUT, check_export_output, check_opset, is_own_onnx, require
from .image_encoder import image_encoder_vit
from .tiny_vit_sam import tiny_vit

EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26  # weights beyond this leave the 2 GB protobuf room for the graph


def build_encoder_graph(model: Sam, opset: int):
    """The onnx.ModelProto of `model.image_encoder` (see the module docstring)."""
    cfg = model.config
    g = GraphBuilder(model, opset)
    if cfg.encoder == "tiny_vit":
        embeddings, early = tiny_vit(g, model.image_encoder, "image", cfg.image_size)
    else:
        embeddings, early = image_encoder_vit(g, model.image_encoder, "image", cfg.image_embedding_size)
    values = [embeddings]
    if cfg.decoder == "hq":  # sam-hq's stack of early features, holding the one its decoder reads
        if early is None:
            raise ValueError("no global-attention block: the encoder has no early feature for the HQ decoder")
        values.append(g.unsqueeze(early, [0]))
    return g.to_model(
        inputs=[("image", np.float32, ["batch", cfg.in_chans, cfg.image_size, cfg.image_size], image_input(cfg))],
        outputs=[(v, name, np.float32, shape) for v, (name, shape) in zip(values, encoder_outputs(cfg, "batch"))],
        graph_name="sam_jax_image_encoder",
        metadata={"encoder": cfg.encoder, "decoder": cfg.decoder, "preprocess": cfg.preprocess,
                  "image_input": image_input(cfg)},
    )


def export_encoder_onnx(
    model: Sam,
    output_path: str | os.PathLike,
    *,
    opset: int = 17,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    overwrite: bool = False,
) -> Path:
    """Writes the image encoder of `model` as ONNX (input `image` (B, 3, S, S) preprocessed, outputs
    `image_embeddings` (B, C, g, g) and for HQ-SAM `interm_embeddings` (1, B, g, g, D)) and returns
    its path; `overwrite` as `export_onnx` (a sam-jax ONNX model only).

    When the weights exceed `external_data_threshold` bytes (protobuf caps a file at 2 GB; vit_h's
    encoder is 2.5 GB) they go to `<output>.data` beside it, which must travel with it."""
    onnx = require("onnx")
    from onnx.external_data_helper import convert_model_to_external_data  # an optional dependency

    path = Path(output_path)
    check_export_output(path, overwrite, is_own_onnx, ONNX_OUTPUT)
    check_opset(opset)
    proto = build_encoder_graph(model, opset)
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
