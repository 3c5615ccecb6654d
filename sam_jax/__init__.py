"""sam-jax: Segment Anything (SAM v1) in JAX / Flax NNX."""

from .build_sam import build_sam, load, sam_model_registry
from .config import SamConfig, get_config
from .modeling import Sam
from .predictor import SamPredictor
from .transforms import ResizeLongestSide

__all__ = ["ResizeLongestSide", "Sam", "SamConfig", "SamPredictor", "build_sam", "get_config", "load", "sam_model_registry"]
__version__ = "0.1.0"
