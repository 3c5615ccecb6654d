"""What every family module uses: the error a mismatch raises and shape look-ups by key."""

from __future__ import annotations

import re


class ConversionError(ValueError):
    """The checkpoint does not match the model: lists every missing, unexpected and mis-shaped key."""


def shape_of(state: dict):
    """key -> its shape, or ConversionError naming the key a config field needs."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise ConversionError(f"cannot infer the model config: checkpoint has no {key!r}")
        return tuple(state[key].shape)

    return shape


def count(state: dict, pattern: str) -> int:
    """How many distinct values the first group of `pattern` takes over the keys (block counts)."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})
