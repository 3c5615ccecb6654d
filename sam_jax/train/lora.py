"""LoRA (Hu et al., 2021) on the image encoder's attention: each chosen linear layer (`qkv`,
`proj`) computes `x W + b + scale * (x A) B` with W and b frozen and only A (in, r) and B (r, out)
trained. B starts at zero, so training starts from the base model exactly; A starts uniform in
+-1/sqrt(in) (the bound of PEFT's default, `kaiming_uniform(a=sqrt(5))`). An exported model has
the product merged into plain weights (`merge_lora`): an ordinary SAM that `sam_jax.load` opens.

    model = add_lora(sam, LoraSettings(rank=8, scale=2.0, targets=("qkv", "proj")), seed=0)
    plain = merge_lora(model)      # a Sam of the base structure, W + scale * A B

The factors live beside the layer's own parameters (`.../attn/qkv/lora_a`, `.../lora_b`), so
the layer-wise learning-rate decay numbers them with their block and a regular expression over
the paths finds them; `LORA_BASE` freezes everything else of the encoder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..build_sam import model_from_params
from ..modeling import Sam
from ..modeling.image_encoder import Attention
from ..modeling.tiny_vit_sam import Attention as TinyViTAttention
from .config import TARGETS, LoraSettings

LORA_LEAVES = ("lora_a", "lora_b")
# Every image-encoder parameter but the LoRA factors: frozen under LoRA (a `--freeze` pattern).
LORA_BASE = r"^image_encoder/(?!.*/lora_[ab]$)"


class LoraLinear(nnx.Linear):
    """An `nnx.Linear` (its `kernel` and `bias` as they were) plus the factors `lora_a` (in, r)
    and `lora_b` (r, out), computing in the layer's dtype and precision."""

    def __init__(self, base: nnx.Linear, rank: int, scale: float, key: jax.Array):
        fan_in, fan_out = base.kernel.shape
        super().__init__(fan_in, fan_out, use_bias=base.use_bias, dtype=base.dtype, precision=base.precision,
                         kernel_init=nnx.initializers.zeros, rngs=nnx.Rngs(0))
        self.kernel, self.bias = base.kernel, base.bias
        self.scale = float(scale)
        bound = 1.0 / np.sqrt(fan_in)
        self.lora_a = nnx.Param(jax.random.uniform(key, (fan_in, rank), jnp.float32, -bound, bound))
        self.lora_b = nnx.Param(jnp.zeros((rank, fan_out), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        dtype = self.dtype or x.dtype
        update = (x.astype(dtype) @ self.lora_a[...].astype(dtype)) @ self.lora_b[...].astype(dtype)
        return y + (self.scale * update).astype(y.dtype)


def add_lora(model: Sam, settings: LoraSettings, seed: int = 0) -> Sam:
    """A view of `model` (its parameters shared) whose image-encoder attention layers named in
    `settings.targets` carry LoRA factors of rank `settings.rank`; the model itself when rank is 0."""
    if settings.rank == 0:
        return model
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, state)
    attentions = [m for _, m in nnx.iter_modules(model.image_encoder) if isinstance(m, (Attention, TinyViTAttention))]
    key = jax.random.PRNGKey(seed)
    for i, attn in enumerate(attentions):
        for j, name in enumerate(settings.targets):
            k = jax.random.fold_in(key, 2 * i + j)
            setattr(attn, name, LoraLinear(getattr(attn, name), settings.rank, settings.scale, k))
    return model


def lora_scales(model: Sam) -> dict[tuple, float]:
    """{path of a LoRA layer: its scale} (empty for a plain model)."""
    return {tuple(path): m.scale for path, m in nnx.iter_modules(model) if isinstance(m, LoraLinear)}


def merge_params(params: dict[tuple, np.ndarray], scale: float) -> dict[tuple, np.ndarray]:
    """{path: array} of a LoRA model -> the plain model's: each layer's kernel + scale * A B
    (float64 products, stored float32), the factors dropped."""
    out = {p: v for p, v in params.items() if p[-1] not in LORA_LEAVES}
    for p, a in params.items():
        if p[-1] == "lora_a":
            layer = p[:-1]
            b = np.asarray(params[layer + ("lora_b",)], np.float64)
            kernel = np.asarray(out[layer + ("kernel",)], np.float64)
            out[layer + ("kernel",)] = (kernel + scale * (np.asarray(a, np.float64) @ b)).astype(np.float32)
    return out


def merge_lora(model: Sam) -> Sam:
    """The plain Sam that computes what the LoRA model `model` computes (a copy; see `merge_params`)."""
    scales = set(lora_scales(model).values())
    params = {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(nnx.state(model))}
    if not scales:
        return model_from_params(model.config, params)
    (scale,) = scales  # one setting per model
    return model_from_params(model.config, merge_params(params, scale))
