"""The key grid as the kernels see it: rows of keys, padded, in blocks of whole rows (or of
equal parts of one row).

Key j of a (k_h, k_w) grid sits at (ky, kx) = divmod(j, k_w), and its bias for query i is
rel_h[i, ky] + rel_w[i, kx]. When a key block is made of whole rows, the rel_w part of the
bias is the same tile in every block (loaded once per query block) and the rel_h part is one
value per row (broadcast along the row): the bias is two broadcast adds, never a product. A
block that is part p of a row takes part p of the rel_w tile and the row's one rel_h value.

Rows are padded to `row` keys (a power of two for Triton, a multiple of 16 for Mosaic), the row
count to a multiple of `rows` (the rows of one key block). Padded keys are zeros in K and V and
are masked through the factors: their rel_w column (or rel_h column, for padded rows) is -inf,
so the bias adds mask them at no cost of their own. Queries are padded to whole query blocks
(zero rows, sliced off the output).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class KeyRows(NamedTuple):
    k_h: int
    k_w: int
    row: int  # keys per padded row
    rows: int  # rows per key block (1 when a row is cut into parts)
    parts: int  # key blocks per row (1 when a block holds whole rows)
    k_h_padded: int

    @property
    def block_k(self) -> int:
        return self.row * self.rows // self.parts

    @property
    def n_keys(self) -> int:
        return self.k_h_padded * self.row

    @property
    def blocks(self) -> int:
        return self.k_h_padded * self.parts // self.rows


def key_rows(k_size: tuple[int, int], row: int, block_k: int) -> KeyRows:
    """Rows padded to `row` keys, in key blocks of `block_k` keys: several whole rows, or a
    row cut into equal parts (row and block_k powers of two)."""
    k_h, k_w = k_size
    rows, parts = max(1, block_k // row), max(1, row // block_k)
    return KeyRows(k_h, k_w, row, rows, parts, -(-k_h // rows) * rows)


def pow2(n: int, minimum: int = 16) -> int:
    return max(minimum, 1 << (n - 1).bit_length())


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def lane_rows(k_w: int, sublane: int = 16, lanes: int = 128) -> tuple[int, int]:
    """(row, block_k) for Mosaic: rows padded to whole sublane tiles, key blocks a multiple of
    the 128 lanes (so V^T slices along lanes stay tile-aligned)."""
    row = round_up(k_w, sublane)
    return row, math.lcm(row, lanes)


def pad_keys(x: jax.Array, layout: KeyRows, c_pad: int) -> jax.Array:
    """(G, k_h * k_w, C) keys or values -> (G, n_keys, c_pad), zeros in the padding."""
    G, _, C = x.shape
    x = x.reshape(G, layout.k_h, layout.k_w, C)
    x = jnp.pad(x, ((0, 0), (0, layout.k_h_padded - layout.k_h), (0, layout.row - layout.k_w), (0, c_pad - C)))
    return x.reshape(G, layout.n_keys, c_pad)


def pad_queries(x: jax.Array, n_q: int, c_pad: int) -> jax.Array:
    """(G, N, C) -> (G, n_q, c_pad), zeros in the padding."""
    return jnp.pad(x, ((0, 0), (0, n_q - x.shape[1]), (0, c_pad - x.shape[2])))


def pad_factors(rel_h, rel_w, layout: KeyRows, n_q: int, G: int, N: int) -> tuple[jax.Array, jax.Array]:
    """rel_h (G, N, k_h) and rel_w (G, N, k_w) (None: no bias) -> float32 (G, n_q, k_h_padded)
    and (G, n_q, row): padded query rows zero, padded key rows and columns -inf."""
    if rel_h is None:
        rel_h = jnp.zeros((G, N, layout.k_h), jnp.float32)
        rel_w = jnp.zeros((G, N, layout.k_w), jnp.float32)

    def pad(x, width):
        x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, n_q - N), (0, 0)))
        return jnp.pad(x, ((0, 0), (0, 0), (0, width - x.shape[2])), constant_values=-jnp.inf)

    return pad(rel_h, layout.k_h_padded), pad(rel_w, layout.row)
