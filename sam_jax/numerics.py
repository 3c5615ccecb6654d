"""How a model computes: its compute dtype, and the matmul precision, one setting for every backend.

dtype "bfloat16" runs every matmul and convolution of the model (encoder, prompt encoder,
decoder) in bfloat16 (bfloat16 inputs and results; the attention logits are taken in float32),
while the parameters, layer norms, softmax, the residual streams and every output stay float32.

JAX runs a float32 matmul or convolution at the backend's default precision unless told
otherwise: one bfloat16 pass on TPU, TF32 on recent NVIDIA GPUs. Either is enough to break
parity with the official float32 model (1e-4) and to flip automatic-mask decisions (IoU and
stability thresholds, NMS order). "exact" asks for float32-equivalent products everywhere:
`Precision.HIGHEST` is full float32 on GPU and the six-pass bfloat16 product on TPU; CPU
computes float32 either way.

The setting is applied at trace time: the model's entry points trace under
`jax.default_matmul_precision`, which every `dot_general` and convolution reads when it is
staged out, so nothing in the model needs a `precision=` argument of its own and a compiled
function carries the precision it was traced with.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .options import DTYPES, PRECISIONS

# The image encoder's attention (see `sam_jax.modeling.image_encoder.attention`).
ATTENTION = ("auto", "xla", "pallas", "interpret")


class Numerics(NamedTuple):
    """Numerical settings of a model (static: part of every compiled function's key).

    dtype: compute dtype of matmuls and convolutions, "float32" or "bfloat16" (a jnp dtype is
    accepted too). precision: "exact" (float32-equivalent matmuls on every backend) or "fast"
    (the backend's default: bfloat16 passes on TPU, TF32 on GPU). attention: the encoder's
    attention implementation, "auto" (the fused Pallas kernel on the platforms where it has been
    verified, the XLA path elsewhere), "xla", "pallas" (the kernel on GPU and TPU) or "interpret"
    (the kernel in Pallas interpret mode on any platform: slow, for tests)."""

    dtype: str = "float32"
    precision: str = "exact"
    attention: str = "auto"

    def check(self) -> "Numerics":
        """These settings with the dtype's canonical name; ValueError naming a bad value."""
        try:
            dtype = self.dtype if isinstance(self.dtype, str) else jnp.dtype(self.dtype).name
        except TypeError:
            dtype = self.dtype
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, got {self.attention!r}")
        return self._replace(dtype=dtype)


def matmul_precision(numerics: Numerics):
    """The context in which `numerics`' matmuls are traced."""
    return jax.default_matmul_precision(PRECISIONS[numerics.precision])


def traced_with_numerics(method):
    """Decorates a module method so that it traces under its module's `numerics` (an entry point
    of the model: the methods it calls inherit the context)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with matmul_precision(self.numerics):
            return method(self, *args, **kwargs)

    return wrapper
