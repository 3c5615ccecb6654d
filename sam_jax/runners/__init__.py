"""Library runners: whole jobs over folders, with typed arguments, that the commands call after
parsing their flags (and that a notebook or a pipeline calls directly).

    spec = ModelSpec("vit_b")
    result = generate_folder(spec, "photos/", "masks/")          # what `sam-jax amg` runs
    result = evaluate_to_folder(spec, "val.json", "results/")    # what `sam-jax eval` runs
"""

from .amg import AmgFolderResult, OUTPUT_FORMATS, generate_folder, generation_settings
from .evaluate import EvalFolderResult, evaluate_to_folder
from .model import ModelSpec

__all__ = [
    "AmgFolderResult", "EvalFolderResult", "ModelSpec", "OUTPUT_FORMATS", "evaluate_to_folder", "generate_folder",
    "generation_settings",
]
