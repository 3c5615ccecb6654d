"""The ONNX graph builder, and the emitters of the generic layers (flax's Linear, LayerNorm and Conv,
and `modeling/common.py`'s GELU and MLPBlock).

An emitter takes the builder, the nnx module it writes out and the names of its input values, and
returns the name of its output value; it appends the module's nodes, and its parameters as
initializers named by their path in the model (`mask_decoder.transformer.layers.0.mlp.lin1.kernel`).
Values are NCHW / (batch, tokens, channels) as in the official model, so flax kernels are transposed
on the way out. The builder is plain Python and NumPy; only `to_model` needs the `onnx` package.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import numpy as np
from flax import nnx

from ...modeling.common import MLPBlock, gelu as exact_gelu
from .files import PRODUCER


class Node(NamedTuple):
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict


class GraphBuilder:
    """Appends nodes and initializers; every method returns the name of its (first) output.

    model: the nnx module whose variables are emitted (it names them); opset: the ONNX opset
    (11 or later); gelu_approximate: emit GELU as its tanh approximation (for runtimes without Erf)."""

    def __init__(self, model: nnx.Module, opset: int, gelu_approximate: bool = False):
        self.opset = opset
        self.gelu_approximate = gelu_approximate
        self.nodes: list[Node] = []
        self.initializers: dict[str, np.ndarray] = {}
        self._paths = {id(v): ".".join(map(str, p)) for p, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable)}
        self._params: dict[tuple, str] = {}
        self._consts: dict[tuple, str] = {}
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def param(self, var: nnx.Variable, perm: Sequence[int] | None = None, shape: Sequence[int] | None = None) -> str:
        """A model variable as a float32 initializer (transposed by `perm`, then reshaped), once."""
        key = (id(var), tuple(perm or ()), tuple(shape or ()))
        if key not in self._params:
            value = np.asarray(var[...], np.float32)
            value = value.transpose(perm) if perm is not None else value
            value = value.reshape(shape) if shape is not None else value
            name = self._paths[id(var)]
            name = name if name not in self.initializers else f"{name}.{len(self._params)}"
            self.initializers[name] = value
            self._params[key] = name
        return self._params[key]

    def const(self, value, dtype=np.float32) -> str:
        """A constant initializer; equal constants share one."""
        value = np.asarray(value, dtype=dtype)
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self._consts:
            self._consts[key] = self._name("const")
            self.initializers[self._consts[key]] = value
        return self._consts[key]

    def ints(self, values) -> str:
        return self.const(values, np.int64)

    def op(self, op_type: str, *inputs: str, n_out: int = 1, **attrs):
        outs = tuple(self._name(op_type) for _ in range(n_out))
        self.nodes.append(Node(op_type, inputs, outs, attrs))
        return outs[0] if n_out == 1 else outs

    def cast(self, x: str, dtype) -> str:
        return self.op("Cast", x, to=np.dtype(dtype))

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int) -> str:
        # ReduceSum takes axes as an input from opset 13, the other reductions from opset 18.
        if self.opset >= (13 if op_type == "ReduceSum" else 18):
            return self.op(op_type, x, self.ints(axes), keepdims=keepdims)
        return self.op(op_type, x, axes=list(axes), keepdims=keepdims)

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", x, self.ints(axes))
        return self.op("Unsqueeze", x, axes=list(axes))

    def slice(self, x: str, starts, ends, axes: Sequence[int]) -> str:
        """x[starts:ends] along `axes`; starts and ends are lists or names of int64 values."""
        as_input = lambda v: v if isinstance(v, str) else self.ints(v)
        return self.op("Slice", x, as_input(starts), as_input(ends), self.ints(axes))

    def small_matmul(self, x: str, w: str) -> str:
        """x (..., K) @ w (K, F) for a tiny K, as a broadcast product and a sum over K: the same
        sums as the modeling code's written-out product, and left in float32 by dynamic
        quantization (which rounds every MatMul to uint8)."""
        return self.reduce("ReduceSum", self.op("Mul", self.unsqueeze(x, [-1]), w), [-2], 0)

    def resize(self, x: str, sizes: str) -> str:
        """torch's F.interpolate(mode="bilinear", align_corners=False, antialias=False) to `sizes`
        (the name of an int64 NCHW shape)."""
        empty = "" if self.opset >= 13 else self.const(np.zeros(0, np.float32))
        return self.op("Resize", x, empty, empty, sizes, mode="linear", coordinate_transformation_mode="half_pixel")

    def to_model(self, inputs: Sequence[tuple], outputs: Sequence[tuple], graph_name: str, metadata: dict | None = None):
        """The onnx.ModelProto of the graph. inputs: (name, dtype, shape) of each graph input, or
        (name, dtype, shape, doc_string); outputs: (value, name, dtype, shape), each value given
        its public name by an Identity; metadata: the model's metadata_props (str -> str)."""
        from onnx import helper, numpy_helper  # an optional dependency: only writing the model needs it

        to_onnx = lambda v: helper.np_dtype_to_tensor_dtype(v) if isinstance(v, np.dtype) else v
        nodes = [helper.make_node(n.op_type, list(n.inputs), list(n.outputs), **{k: to_onnx(v) for k, v in n.attrs.items()})
                 for n in self.nodes]
        nodes += [helper.make_node("Identity", [value], [name]) for value, name, _, _ in outputs]
        info = lambda name, dtype, shape, doc="": helper.make_tensor_value_info(name, to_onnx(np.dtype(dtype)), list(shape), doc)
        graph = helper.make_graph(
            nodes, graph_name, [info(*i) for i in inputs], [info(name, dtype, shape) for _, name, dtype, shape in outputs],
            initializer=[numpy_helper.from_array(v, k) for k, v in self.initializers.items()],
        )
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name=PRODUCER,
                                  ir_version=helper.find_min_ir_version_for(opsets))
        if metadata:
            helper.set_model_props(model, metadata)
        return model


# ---------------------------------------------------------------------------------- generic layers
def linear(g: GraphBuilder, layer: nnx.Linear, x: str) -> str:
    """nnx.Linear: x (..., in) @ kernel (in, out) + bias."""
    y = g.op("MatMul", x, g.param(layer.kernel))
    return g.op("Add", y, g.param(layer.bias)) if layer.bias is not None else y


def layer_norm(g: GraphBuilder, norm: nnx.LayerNorm, x: str, axis: int = -1) -> str:
    """Two-pass layer norm over one axis, as torch: -1 for nn.LayerNorm on (..., C), 1 for the
    official LayerNorm2d on NCHW maps (our LayerNorm over NHWC channels)."""
    mean = g.reduce("ReduceMean", x, [axis], 1)
    d = g.op("Sub", x, mean)
    var = g.reduce("ReduceMean", g.op("Mul", d, d), [axis], 1)
    y = g.op("Div", d, g.op("Sqrt", g.op("Add", var, g.const(norm.epsilon))))
    shape = (-1,) if axis == -1 else (-1, 1, 1)
    y = g.op("Mul", y, g.param(norm.scale, shape=shape))
    return g.op("Add", y, g.param(norm.bias, shape=shape))


def gelu(g: GraphBuilder, x: str) -> str:
    """torch.nn.GELU(): x * 0.5 * (1 + erf(x / sqrt(2))); with g.gelu_approximate, GELU(approximate="tanh"):
    0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))), which needs no Erf."""
    if g.gelu_approximate:
        cube = g.op("Mul", g.op("Mul", x, x), x)
        inner = g.op("Mul", g.op("Add", x, g.op("Mul", cube, g.const(0.044715))), g.const(math.sqrt(2.0 / math.pi)))
        return g.op("Mul", g.op("Mul", x, g.const(0.5)), g.op("Add", g.op("Tanh", inner), g.const(1.0)))
    e = g.op("Erf", g.op("Div", x, g.const(math.sqrt(2.0))))
    return g.op("Mul", g.op("Mul", x, g.op("Add", e, g.const(1.0))), g.const(0.5))


def relu(g: GraphBuilder, x: str) -> str:
    return g.op("Relu", x)


def conv(g: GraphBuilder, layer: nnx.Conv, x: str) -> str:
    """nnx.Conv (kernel (kh, kw, in / groups, out), bias or none) on an NCHW map, with its strides,
    its groups (TinyViT's depthwise convolutions) and its padding ("VALID", explicit ((top, bottom),
    (left, right)) pairs, or "SAME" for a 1x1 kernel)."""
    kh, kw = layer.kernel_size
    if layer.padding == "VALID" or (kh, kw) == (1, 1):
        pads = [0, 0, 0, 0]
    elif isinstance(layer.padding, Sequence) and not isinstance(layer.padding, str):
        (top, bottom), (left, right) = layer.padding
        pads = [top, left, bottom, right]
    else:
        raise NotImplementedError(f"no ONNX emitter for a {kh}x{kw} convolution with padding {layer.padding!r}")
    strides = layer.strides if isinstance(layer.strides, Sequence) else (layer.strides or 1,) * 2
    inputs = [x, g.param(layer.kernel, perm=(3, 2, 0, 1))] + ([g.param(layer.bias)] if layer.bias is not None else [])
    groups = {"group": layer.feature_group_count} if layer.feature_group_count > 1 else {}
    return g.op("Conv", *inputs, strides=list(strides), pads=pads, **groups)


def mlp_block(g: GraphBuilder, block: MLPBlock, x: str) -> str:
    """common.MLPBlock: lin2(act(lin1(x)))."""
    acts = {id(jax.nn.relu): relu, id(exact_gelu): gelu}
    if id(block.act) not in acts:
        raise NotImplementedError(f"no ONNX emitter for the activation {block.act}")
    return linear(g, block.lin2, acts[id(block.act)](g, linear(g, block.lin1, x)))
