"""Building blocks shared by the encoder and decoder (the official `modeling/common.py`)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx


# erf(x) = x P(x^2) / Q(x^2) on [-4, 4] (and +-1 beyond, where float32 erf is 1): the minimax
# rational approximation float32 libraries use (Eigen's, for one), within 3.2e-7 of erf.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)


def erf(x: jax.Array) -> jax.Array:
    """erf, computed in float32 and returned in the dtype of x, as one elementwise expression:
    XLA's CPU lowering of `lax.erf` splits into three passes over the array (and its consumers
    into a fourth), which made GELU the slowest layer of TinyViT's first stage."""
    dtype, x = x.dtype, jnp.clip(x.astype(jnp.float32), -4.0, 4.0)
    x2 = x * x
    p, q = jnp.float32(_ERF_P[0]), jnp.float32(_ERF_Q[0])
    for c in _ERF_P[1:]:
        p = p * x2 + jnp.float32(c)
    for c in _ERF_Q[1:]:
        q = q * x2 + jnp.float32(c)
    return (x * p / q).astype(dtype)


@jax.custom_jvp
def gelu(x: jax.Array) -> jax.Array:
    """torch.nn.GELU: the exact erf form, x (1 + erf(x / sqrt 2)) / 2, in float32 and returned in
    the dtype of x (jax.nn.gelu defaults to the tanh approximation). Its derivative is torch's
    formula, Phi(x) + x phi(x), not the derivative of the rational approximation of erf."""
    y = x.astype(jnp.float32)
    return (y * _normal_cdf(y)).astype(x.dtype)


def _normal_cdf(y: jax.Array) -> jax.Array:
    """Phi(y) = (1 + erf(y / sqrt 2)) / 2 of float32 y: GELU's gate, and half its derivative."""
    return (erf(y * jnp.float32(0.7071067811865476)) + 1) * jnp.float32(0.5)


@gelu.defjvp
def _gelu_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = x.astype(jnp.float32)
    cdf = _normal_cdf(y)
    pdf = jnp.exp(y * y * jnp.float32(-0.5)) * jnp.float32(0.3989422804014327)
    return (y * cdf).astype(x.dtype), (dx.astype(jnp.float32) * (cdf + y * pdf)).astype(dx.dtype)


def fusion_fence(x: jax.Array) -> jax.Array:
    """x, unchanged (a float32 value rounded to float32), through an operation that the
    compiler's fusions do not cross. `lax.optimization_barrier` does not do this on XLA's CPU
    backend, which removes barriers before it fuses."""
    if x.dtype != jnp.float32:
        return x
    return jax.lax.reduce_precision(x, exponent_bits=8, mantissa_bits=23)


class GELU(nnx.Module):
    """Parameter-free activation layer, so Sequential indexes match the official nn.Sequential."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return gelu(x)


class Sequential(nnx.List):
    """nn.Sequential whose parameter paths are `name/<index>/...` like the official state-dict keys."""

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self:
            x = layer(x)
        return x


class Buffer(nnx.Variable):
    """A non-trainable tensor that the official model keeps in its state dict (a registered buffer)."""


def layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance, like torch: the one-pass E[x^2]-E[x]^2 loses digits on large activations.
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, rngs=rngs)


def LayerNorm2d(dim: int, eps: float = 1e-6, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """The official LayerNorm2d normalises channels of NCHW maps; on our NHWC maps that is a LayerNorm."""
    return layer_norm(dim, eps, rngs)


class MLPBlock(nnx.Module):
    def __init__(self, embedding_dim: int, mlp_dim: int, act: Callable = gelu, *, rngs: nnx.Rngs):
        self.lin1 = nnx.Linear(embedding_dim, mlp_dim, rngs=rngs)
        self.lin2 = nnx.Linear(mlp_dim, embedding_dim, rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.lin2(self.act(self.lin1(x)))
