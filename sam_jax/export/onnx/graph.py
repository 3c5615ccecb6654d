"""ONNX graph of the prompt encoder + mask decoder + mask postprocessing, emitted node by node with
`onnx.helper` from a loaded sam_jax model's arrays (the initializers are the model's parameters).

The graph is the official `segment_anything/utils/onnx.py` `SamOnnxModel`, input for input and
output for output; see `sam_jax.export.onnx.export_onnx` for the interface. Batch size 1 (as the
official export), the point count N dynamic, the output mask size a runtime function of
`orig_im_size`. Layouts are the official NCHW ones: flax kernels are transposed on the way out.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from flax import nnx
from onnx import TensorProto, helper, numpy_helper

from ...modeling import Sam
from . import PRODUCER


def _np(x) -> np.ndarray:
    """A parameter (nnx.Variable or array) as a float32 numpy array."""
    return np.asarray(x[...] if isinstance(x, nnx.Variable) else x, dtype=np.float32)


class _Builder:
    """Appends nodes and initializers; each `op` returns the name of its (first) output."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value, name: str | None = None, dtype=np.float32) -> str:
        name = name or self._name("const")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, n_out: int = 1, **attrs):
        outs = [self._name(op_type) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int) -> str:
        # ReduceSum takes axes as an input from opset 13, the other reductions from opset 18.
        if self.opset >= (13 if op_type == "ReduceSum" else 18):
            return self.op(op_type, x, self.const(axes, dtype=np.int64), keepdims=keepdims)
        return self.op(op_type, x, axes=axes, keepdims=keepdims)

    def unsqueeze(self, x: str, axes: list[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", x, self.const(axes, dtype=np.int64))
        return self.op("Unsqueeze", x, axes=axes)

    def resize(self, x: str, sizes: str) -> str:
        """torch's F.interpolate(mode='bilinear', align_corners=False, antialias=False)."""
        empty = "" if self.opset >= 13 else self.const(np.zeros(0, np.float32))
        return self.op("Resize", x, empty, empty, sizes, mode="linear", coordinate_transformation_mode="half_pixel")

    # ------------------------------------------------------------------------------ layers
    def linear(self, x: str, layer, prefix: str) -> str:
        """nnx.Linear: x @ kernel (in, out) + bias."""
        y = self.op("MatMul", x, self.const(_np(layer.kernel), f"{prefix}.kernel"))
        return self.op("Add", y, self.const(_np(layer.bias), f"{prefix}.bias"))

    def layer_norm(self, x: str, norm, prefix: str, axis: int) -> str:
        """Two-pass layer norm over one axis (-1: nn.LayerNorm; 1: the official LayerNorm2d on NCHW)."""
        mean = self.reduce("ReduceMean", x, [axis], 1)
        d = self.op("Sub", x, mean)
        var = self.reduce("ReduceMean", self.op("Mul", d, d), [axis], 1)
        y = self.op("Div", d, self.op("Sqrt", self.op("Add", var, self.const(np.float32(norm.epsilon)))))
        shape = (-1,) if axis == -1 else (-1, 1, 1)
        y = self.op("Mul", y, self.const(_np(norm.scale).reshape(shape), f"{prefix}.scale"))
        return self.op("Add", y, self.const(_np(norm.bias).reshape(shape), f"{prefix}.bias"))

    def gelu(self, x: str) -> str:
        """Exact (erf) GELU, as torch.nn.GELU(): x * 0.5 * (1 + erf(x / sqrt(2)))."""
        e = self.op("Erf", self.op("Div", x, self.const(np.float32(math.sqrt(2.0)))))
        return self.op("Mul", self.op("Mul", x, self.op("Add", e, self.const(np.float32(1.0)))), self.const(np.float32(0.5)))

    def conv(self, x: str, conv, prefix: str, stride: int) -> str:
        """nnx.Conv (kernel kh, kw, in, out) on NCHW, no padding."""
        w = self.const(_np(conv.kernel).transpose(3, 2, 0, 1), f"{prefix}.kernel")
        return self.op("Conv", x, w, self.const(_np(conv.bias), f"{prefix}.bias"), strides=[stride, stride])

    def conv_transpose(self, x: str, conv, prefix: str) -> str:
        """ConvTranspose2x2 (kernel a, b, in, out) -> ONNX ConvTranspose (in, out, kH, kW), stride 2."""
        w = self.const(_np(conv.kernel).transpose(2, 3, 0, 1), f"{prefix}.kernel")
        return self.op("ConvTranspose", x, w, self.const(_np(conv.bias), f"{prefix}.bias"), strides=[2, 2])

    def attention(self, q: str, k: str, v: str, attn, prefix: str) -> str:
        """The official decoder Attention on (1, N, C) inputs."""
        heads = attn.num_heads
        d = attn.internal_dim // heads
        split = self.const([0, -1, heads, d], dtype=np.int64)
        qh = self.op("Transpose", self.op("Reshape", self.linear(q, attn.q_proj, f"{prefix}.q_proj"), split), perm=[0, 2, 1, 3])
        kt = self.op("Transpose", self.op("Reshape", self.linear(k, attn.k_proj, f"{prefix}.k_proj"), split), perm=[0, 2, 3, 1])
        vh = self.op("Transpose", self.op("Reshape", self.linear(v, attn.v_proj, f"{prefix}.v_proj"), split), perm=[0, 2, 1, 3])
        logits = self.op("Div", self.op("MatMul", qh, kt), self.const(np.float32(math.sqrt(d))))
        out = self.op("MatMul", self.op("Softmax", logits, axis=-1), vh)
        out = self.op("Reshape", self.op("Transpose", out, perm=[0, 2, 1, 3]), self.const([0, -1, attn.internal_dim], dtype=np.int64))
        return self.linear(out, attn.out_proj, f"{prefix}.out_proj")

    def mlp(self, x: str, mlp, prefix: str) -> str:
        """mask_decoder.MLP: Linear layers with ReLU between them."""
        n = len(mlp.layers)
        for i, layer in enumerate(mlp.layers):
            x = self.linear(x, layer, f"{prefix}.layers.{i}")
            x = self.op("Relu", x) if i < n - 1 else x
        return self.op("Sigmoid", x) if mlp.sigmoid_output else x

    def stability_score(self, masks: str, threshold: float, offset: float) -> str:
        """(1, M, H, W) logits -> (1, M) IoU of the masks at threshold +/- offset (official amg)."""
        def count(t: float) -> str:
            above = self.op("Cast", self.op("Greater", masks, self.const(np.float32(t))), to=TensorProto.INT64)
            return self.op("Cast", self.reduce("ReduceSum", above, [2, 3], 0), to=TensorProto.FLOAT)

        return self.op("Div", count(threshold + offset), count(threshold - offset))


def build_graph(
    model: Sam,
    return_single_mask: bool,
    use_stability_score: bool,
    return_extra_metrics: bool,
    opset: int,
) -> onnx.ModelProto:
    """The ONNX model of `SamOnnxModel(model, ...)` with the given flags (see the module docstring)."""
    cfg = model.config
    pe_mod, dec = model.prompt_encoder, model.mask_decoder
    C, S = cfg.prompt_embed_dim, cfg.image_size
    h, w = pe_mod.image_embedding_size
    T = dec.num_mask_tokens
    g = _Builder(opset)

    # ----- sparse (point) embeddings, as SamOnnxModel._embed_points
    coords = g.op("Div", g.op("Add", "point_coords", g.const(np.float32(0.5))), g.const(np.float32(S)))
    coords = g.op("Sub", g.op("Mul", coords, g.const(np.float32(2.0))), g.const(np.float32(1.0)))
    gauss = g.const(_np(pe_mod.pe_layer.positional_encoding_gaussian_matrix), "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix")
    proj = g.op("Mul", g.op("MatMul", coords, gauss), g.const(np.float32(2 * np.pi)))
    pe = g.op("Concat", g.op("Sin", proj), g.op("Cos", proj), axis=-1)  # (1, N, C)
    labels = g.unsqueeze("point_labels", [2])  # (1, N, 1)
    pe = g.op("Mul", pe, g.op("Cast", g.op("Not", g.op("Equal", labels, g.const(np.float32(-1.0)))), to=TensorProto.FLOAT))
    # Label -1 adds not_a_point_embed, label i in 0..3 adds point_embeddings[i], others nothing.
    onehot = g.op("Cast", g.op("Equal", labels, g.const(np.arange(-1, 4, dtype=np.float32))), to=TensorProto.FLOAT)
    table = np.concatenate([_np(pe_mod.not_a_point_embed.embedding)] + [_np(e.embedding) for e in pe_mod.point_embeddings])
    sparse = g.op("Add", pe, g.op("MatMul", onehot, g.const(table, "prompt_encoder.label_embeddings")))

    # ----- dense (mask) embedding, as SamOnnxModel._embed_masks
    conv1, ln1, _, conv2, ln2, _, conv3 = pe_mod.mask_downscaling
    x = g.gelu(g.layer_norm(g.conv("mask_input", conv1, "prompt_encoder.mask_downscaling.0", 2), ln1, "prompt_encoder.mask_downscaling.1", 1))
    x = g.gelu(g.layer_norm(g.conv(x, conv2, "prompt_encoder.mask_downscaling.3", 2), ln2, "prompt_encoder.mask_downscaling.4", 1))
    x = g.conv(x, conv3, "prompt_encoder.mask_downscaling.6", 1)
    no_mask = g.const(_np(pe_mod.no_mask_embed.embedding).reshape(1, -1, 1, 1), "prompt_encoder.no_mask_embed")
    dense = g.op("Add", g.op("Mul", "has_mask_input", x),
                 g.op("Mul", g.op("Sub", g.const(np.float32(1.0)), "has_mask_input"), no_mask))

    # ----- mask decoder (MaskDecoder.predict_masks, all T mask tokens)
    output_tokens = np.concatenate([_np(dec.iou_token.embedding), _np(dec.mask_tokens.embedding)])[None]
    tokens = g.op("Concat", g.const(output_tokens, "mask_decoder.output_tokens"), sparse, axis=1)  # (1, T+1+N, C)
    src = g.op("Add", "image_embeddings", dense)
    keys = g.op("Transpose", g.op("Reshape", src, g.const([1, C, h * w], dtype=np.int64)), perm=[0, 2, 1])
    dense_pe = np.asarray(pe_mod.get_dense_pe(), np.float32).reshape(1, C, h * w).transpose(0, 2, 1)
    key_pe = g.const(dense_pe, "prompt_encoder.dense_pe")  # (1, hw, C), a function of the gaussian matrix
    tr = dec.transformer
    queries = tokens
    for i, blk in enumerate(tr.layers):
        p = f"mask_decoder.transformer.layers.{i}"
        if blk.skip_first_layer_pe:
            queries = g.attention(queries, queries, queries, blk.self_attn, f"{p}.self_attn")
        else:
            q = g.op("Add", queries, tokens)
            queries = g.op("Add", queries, g.attention(q, q, queries, blk.self_attn, f"{p}.self_attn"))
        queries = g.layer_norm(queries, blk.norm1, f"{p}.norm1", -1)
        q, k = g.op("Add", queries, tokens), g.op("Add", keys, key_pe)
        queries = g.layer_norm(g.op("Add", queries, g.attention(q, k, keys, blk.cross_attn_token_to_image, f"{p}.cross_attn_token_to_image")), blk.norm2, f"{p}.norm2", -1)
        mlp = g.linear(g.op("Relu", g.linear(queries, blk.mlp.lin1, f"{p}.mlp.lin1")), blk.mlp.lin2, f"{p}.mlp.lin2")
        queries = g.layer_norm(g.op("Add", queries, mlp), blk.norm3, f"{p}.norm3", -1)
        q, k = g.op("Add", queries, tokens), g.op("Add", keys, key_pe)
        keys = g.layer_norm(g.op("Add", keys, g.attention(k, q, queries, blk.cross_attn_image_to_token, f"{p}.cross_attn_image_to_token")), blk.norm4, f"{p}.norm4", -1)
    q, k = g.op("Add", queries, tokens), g.op("Add", keys, key_pe)
    queries = g.op("Add", queries, g.attention(q, k, keys, tr.final_attn_token_to_image, "mask_decoder.transformer.final_attn_token_to_image"))
    hs = g.layer_norm(queries, tr.norm_final_attn, "mask_decoder.transformer.norm_final_attn", -1)

    iou_token_out = g.op("Gather", hs, g.const(np.int64(0), dtype=np.int64), axis=1)  # (1, C)
    mask_tokens_out = g.op("Slice", hs, *(g.const([v], dtype=np.int64) for v in (1, 1 + T, 1)))  # (1, T, C)

    ct1, ln, _, ct2, _ = dec.output_upscaling
    up = g.op("Reshape", g.op("Transpose", keys, perm=[0, 2, 1]), g.const([1, C, h, w], dtype=np.int64))
    up = g.gelu(g.layer_norm(g.conv_transpose(up, ct1, "mask_decoder.output_upscaling.0"), ln, "mask_decoder.output_upscaling.1", 1))
    up = g.gelu(g.conv_transpose(up, ct2, "mask_decoder.output_upscaling.3"))  # (1, C/8, 4h, 4w)

    # The T hypernetwork MLPs as one batched matmul chain over stacked weights: (T, 1, C) -> (T, 1, C/8).
    hyper = g.op("Transpose", mask_tokens_out, perm=[1, 0, 2])
    mlps = dec.output_hypernetworks_mlps
    for i in range(len(mlps[0].layers)):
        kern = np.stack([_np(m.layers[i].kernel) for m in mlps])
        bias = np.stack([_np(m.layers[i].bias) for m in mlps])[:, None, :]
        p = f"mask_decoder.output_hypernetworks_mlps.layers.{i}"
        hyper = g.op("Add", g.op("MatMul", hyper, g.const(kern, f"{p}.kernel")), g.const(bias, f"{p}.bias"))
        hyper = g.op("Relu", hyper) if i < len(mlps[0].layers) - 1 else hyper
    hyper = g.op("Transpose", hyper, perm=[1, 0, 2])  # (1, T, C/8)
    flat = g.op("Reshape", up, g.const([1, C // 8, 16 * h * w], dtype=np.int64))
    masks = g.op("Reshape", g.op("MatMul", hyper, flat), g.const([1, T, 4 * h, 4 * w], dtype=np.int64))
    scores = g.mlp(iou_token_out, dec.iou_prediction_head, "mask_decoder.iou_prediction_head")  # (1, T)

    # ----- SamOnnxModel.forward options
    thr = float(model.mask_threshold)
    if use_stability_score:
        scores = g.stability_score(masks, thr, 1.0)
    if return_single_mask:
        n = g.op("Cast", g.op("Gather", g.op("Shape", "point_coords"), g.const(np.int64(1), dtype=np.int64), axis=0), to=TensorProto.FLOAT)
        weight = g.const(np.array([[1000.0] + [0.0] * (T - 1)], np.float32))
        score = g.op("Add", scores, g.op("Mul", g.op("Sub", n, g.const(np.float32(2.5))), weight))
        best = g.op("ArgMax", score, axis=1, keepdims=0)  # (1,), first maximum as torch.argmax
        masks, scores = g.op("Gather", masks, best, axis=1), g.op("Gather", scores, best, axis=1)
    M = 1 if return_single_mask else T

    # mask_postprocessing: upsample to S x S, crop to the resized image, upsample to orig_im_size.
    up_masks = g.resize(masks, g.const([1, M, S, S], dtype=np.int64))
    scale = g.op("Mul", g.op("Reciprocal", g.reduce("ReduceMax", "orig_im_size", [0], 1)), g.const(np.float32(S)))  # torch's S / t
    prepadded = g.op("Cast", g.op("Floor", g.op("Add", g.op("Mul", scale, "orig_im_size"), g.const(np.float32(0.5)))), to=TensorProto.INT64)
    up_masks = g.op("Slice", up_masks, g.const([0, 0], dtype=np.int64), prepadded, g.const([2, 3], dtype=np.int64))
    sizes = g.op("Concat", g.const([1, M], dtype=np.int64), g.op("Cast", "orig_im_size", to=TensorProto.INT64), axis=0)
    up_masks = g.resize(up_masks, sizes)

    outputs = [(g.op("Identity", up_masks), "masks"), (g.op("Identity", scores), "iou_predictions")]
    if return_extra_metrics:
        areas = g.reduce("ReduceSum", g.op("Cast", g.op("Greater", up_masks, g.const(np.float32(thr))), to=TensorProto.INT64), [2, 3], 0)
        outputs += [(g.stability_score(up_masks, thr, 1.0), "stability_scores"), (areas, "areas")]
    outputs.append((g.op("Identity", masks), "low_res_masks"))
    for node in g.nodes:  # give the final nodes the public output names
        node.output[:] = [dict((a, b) for a, b in outputs).get(o, o) for o in node.output]

    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("image_embeddings", f32, [1, C, h, w]),
        helper.make_tensor_value_info("point_coords", f32, [1, "num_points", 2]),
        helper.make_tensor_value_info("point_labels", f32, [1, "num_points"]),
        helper.make_tensor_value_info("mask_input", f32, [1, 1, 4 * h, 4 * w]),
        helper.make_tensor_value_info("has_mask_input", f32, [1]),
        helper.make_tensor_value_info("orig_im_size", f32, [2]),
    ]
    out_shapes = {
        "masks": (f32, [1, M, "orig_height", "orig_width"]),
        "iou_predictions": (f32, [1, M]),
        "stability_scores": (f32, [1, M]),
        "areas": (TensorProto.INT64, [1, M]),
        "low_res_masks": (f32, [1, M, 4 * h, 4 * w]),
    }
    outs = [helper.make_tensor_value_info(name, *out_shapes[name]) for _, name in outputs]
    graph = helper.make_graph(g.nodes, "sam_jax_decoder", inputs, outs, initializer=g.inits)
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(
        graph, opset_imports=opsets, producer_name=PRODUCER, ir_version=helper.find_min_ir_version_for(opsets)
    )
