"""Looking inside traced programs: every equation of a jaxpr, nested ones included, with how many
times it runs."""

from __future__ import annotations

from typing import Iterator

import jax


def iter_eqns(jaxpr, times: int = 1) -> Iterator[tuple[object, int]]:
    """(equation, executions) for every equation of `jaxpr` (a Jaxpr or ClosedJaxpr) and of the
    jaxprs nested in it. A scan body (`lax.map`, `fori_loop` with static bounds) runs `length`
    times per execution of the scan; a `while_loop` body, whose trip count is not static, is
    counted once; every branch of a `cond` (and of `lax.platform_dependent`) is yielded with the
    executions of the cond itself, so callers that want one branch must choose."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        yield eqn, times
        inner = times * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
                    yield from iter_eqns(sub, inner)
