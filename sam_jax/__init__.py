"""sam-jax: Segment Anything (SAM v1) in JAX / Flax NNX.

The official package's names, from the same places: `sam_model_registry`, `build_sam_vit_{h,l,b}`,
`SamPredictor`, `SamAutomaticMaskGenerator`; plus `load`, the one entry point for every kind of
checkpoint, and `enable_compilation_cache`, the opt-in persistent XLA cache. Importing sam_jax
changes no JAX setting, registers no listener and writes no file.
"""

__version__ = "0.1.0"

from . import assets  # sam_jax.assets.SHAPES_TINY after a plain `import sam_jax`
from .automatic_mask_generator import SamAutomaticMaskGenerator
from .build_sam import (
    build_sam,
    build_sam_from_config,
    build_sam_vit_b,
    build_sam_vit_h,
    build_sam_vit_l,
    load,
    sam_model_registry,
)
from .config import SamConfig, get_config
from .modeling import Sam
from .predictor import SamPredictor
from .runtime.compilation_cache import enable_compilation_cache
from .transforms import ResizeLongestSide

__all__ = [
    "ResizeLongestSide", "Sam", "SamAutomaticMaskGenerator", "SamConfig", "SamPredictor", "build_sam",
    "build_sam_from_config", "build_sam_vit_b", "build_sam_vit_h", "build_sam_vit_l", "enable_compilation_cache",
    "get_config", "load", "sam_model_registry",
]
