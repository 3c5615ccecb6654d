"""Library runners: whole jobs over folders, with typed arguments, that the commands call after
parsing their flags (and that a notebook or a pipeline calls directly).

    spec = ModelSpec("vit_b")
    result = generate_folder(spec, "photos/", "masks/")          # what `sam-jax amg` runs
"""

from .amg import AmgFolderResult, OUTPUT_FORMATS, generate_folder, generation_settings
from .model import ModelSpec

__all__ = ["AmgFolderResult", "ModelSpec", "OUTPUT_FORMATS", "generate_folder", "generation_settings"]
