"""The official module path `segment_anything.utils.transforms`: `ResizeLongestSide` lives in
`sam_jax.transforms` and is re-exported here."""

from ..transforms import ResizeLongestSide, get_preprocess_shape

__all__ = ["ResizeLongestSide", "get_preprocess_shape"]
