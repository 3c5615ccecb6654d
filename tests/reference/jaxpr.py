"""Looking inside traced programs: every equation of a jaxpr, nested ones included, with how many
times it runs; and the FLOPs of a program's matmuls and convolutions counted that way."""

from __future__ import annotations

import math
from typing import Callable, Iterator

import jax


def _sub_jaxprs(eqn) -> Iterator[object]:
    for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
                yield sub


def _repeats(eqn) -> int:
    """How many times one execution of `eqn` runs its nested jaxprs: a scan body (`lax.map`,
    `fori_loop` with static bounds) `length` times, a Pallas kernel once per grid point; a
    `while_loop` body, whose trip count is not static, counts once."""
    if eqn.primitive.name == "scan":
        return eqn.params["length"]
    if eqn.primitive.name == "pallas_call":
        return math.prod(eqn.params["grid_mapping"].grid)
    return 1


def iter_eqns(jaxpr, times: int = 1) -> Iterator[tuple[object, int]]:
    """(equation, executions) for every equation of `jaxpr` (a Jaxpr or ClosedJaxpr) and of the
    jaxprs nested in it (see `_repeats`). Every branch of a `cond` (and of
    `lax.platform_dependent`) is yielded with the executions of the cond itself."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        yield eqn, times
        for sub in _sub_jaxprs(eqn):
            yield from iter_eqns(sub, times * _repeats(eqn))


def _product_flops(eqn) -> int:
    """2 x multiply-adds of a dot_general or a convolution (0 for anything else)."""
    out = eqn.outvars[0].aval
    if eqn.primitive.name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        k = math.prod(eqn.invars[0].aval.shape[d] for d in lhs_contract)
        return 2 * math.prod(out.shape) * k
    if eqn.primitive.name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
        return 2 * math.prod(out.shape) * (math.prod(rhs) // out_features)
    return 0


def jaxpr_flops(jaxpr) -> int:
    """Matmul and convolution FLOPs of a jaxpr, as torch's FlopCounterMode counts them (2 x
    multiply-adds, nothing for elementwise work): loop bodies once per iteration, and of the
    branches of a cond (one runs) the most expensive."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "cond":
            total += max(jaxpr_flops(b) for b in eqn.params["branches"])
        else:
            total += _product_flops(eqn) + _repeats(eqn) * sum(jaxpr_flops(s) for s in _sub_jaxprs(eqn))
    return total


def matmul_flops(fn: Callable, *args, static_argnums: tuple[int, ...] = (), **kwargs) -> int:
    """`jaxpr_flops` of fn(*args, **kwargs) (arguments may be arrays or ShapeDtypeStructs)."""
    return jaxpr_flops(jax.make_jaxpr(fn, static_argnums=static_argnums)(*args, **kwargs))
