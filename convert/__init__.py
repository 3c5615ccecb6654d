"""The checkpoint pipeline, installed as `sam_jax.convert`: from a file or a model name to a
model's parameters, and back to files. `pipeline.py` reads top to bottom:

    model name ─▶ weights.py, download.py   the published files: URL, digests, license; download, verify
                                         ─▶ the cache (folder.py's format, in $SAM_JAX_CACHE/checkpoints)
    file ───────▶ torch_pickle.py           official .pth, read without torch and without running its pickle
                  safetensors.py, hf.py     Hugging Face checkpoints, renamed to official keys
                  folder.py                 sam-jax's own folders (config.json, Orbax params/, record.json)
             ─▶ keys.py, families/          official keys -> parameter paths, the config from the shapes
             ─▶ shapes.py                   every parameter checked against the model
             ─▶ image_size.py               resampled to another input size

    and back: export.py                     a model in its family's reference layout (keys.py's table
                                            read backwards), torch_save.py (.pth) or safetensors.py

Of sam_jax it uses the config, the model's structure (for the shapes), the resampling maths and
the host I/O helpers; nothing above it (the predictor, the CLI) is imported here.
"""

from __future__ import annotations

from .export import Export, export_checkpoint, export_model
from .families.common import ConversionError
from .folder import content_digest, is_checkpoint, read_config, read_record, stored_digest
from .image_size import with_image_size
from .keys import official_to_params, params_to_official, reference_state_dict
from .pipeline import (
    HF_WEIGHTS, Checkpoint, convert_checkpoint, convert_state_dict, fetch, read, read_config_file, read_file, read_state_dict,
    weights_file,
)
from .safetensors import read_safetensors, write_safetensors
from .shapes import check_params, parameter_shapes
from .torch_pickle import CheckpointFormatError, UnsafeCheckpointError
from .torch_save import write_pth

__all__ = [
    "Checkpoint", "CheckpointFormatError", "ConversionError", "Export", "HF_WEIGHTS", "UnsafeCheckpointError",
    "check_params", "content_digest", "convert_checkpoint", "convert_state_dict", "export_checkpoint", "export_model",
    "fetch", "is_checkpoint", "official_to_params", "parameter_shapes", "params_to_official", "read", "read_config",
    "read_config_file", "read_file", "read_record", "read_safetensors", "read_state_dict", "reference_state_dict",
    "stored_digest", "weights_file", "with_image_size", "write_pth", "write_safetensors",
]
