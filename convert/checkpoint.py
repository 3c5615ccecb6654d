"""Checkpoint files: read official `.pth` and Hugging Face `.safetensors`, write and read our Orbax
directories. Host-side I/O only; nothing here runs on the accelerator.

An output directory holds `config.json` and `params/` (Orbax). It is assembled under a temporary
name beside the target and renamed into place at the end, so a directory with the final name is
always a complete conversion.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from sam_jax.config import SamConfig

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a checkpoint file into an official-named state dict of numpy arrays.

    `.safetensors` files are read as Hugging Face `transformers` SAM checkpoints (or official
    names saved as safetensors); anything else as a `torch.save` file, without torch and
    without executing any of its pickle."""
    from .torch_pickle import load_torch_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from .hf import read_safetensors

        state = read_safetensors(path)
    else:
        state = load_torch_state_dict(path)
    if any(k.startswith("vision_encoder.") for k in state):  # HF names (safetensors or pytorch_model.bin)
        from .hf import hf_to_official

        state = hf_to_official(state)
    return state


def save(output: str | os.PathLike, config: SamConfig, params: dict[tuple, np.ndarray], overwrite: bool = False) -> Path:
    """Writes config.json and the Orbax parameters to `output`, atomically (see module docstring)."""
    import orbax.checkpoint as ocp

    output = Path(output).absolute()
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists (pass overwrite=True / --overwrite to replace it)")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        config.save(tmp / CONFIG_FILE)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / PARAMS_DIR, _nest(params))
            ckptr.wait_until_finished()
        if output.exists():
            old = output.with_name(f".{output.name}.old-{os.getpid()}")
            output.rename(old)
            tmp.rename(output)
            shutil.rmtree(old)
        else:
            tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def load(directory: str | os.PathLike, abstract: dict[tuple, object]) -> tuple[SamConfig, dict[tuple, np.ndarray]]:
    """Reads a directory written by `save`: the config and {path: array} for the given abstract
    {path: ShapeDtypeStruct} (shapes are checked by Orbax against the stored arrays)."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if not (directory / CONFIG_FILE).is_file() or not (directory / PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"{directory} is not a sam-jax checkpoint (expected {CONFIG_FILE} and {PARAMS_DIR}/)")
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(directory / PARAMS_DIR, _nest(abstract))
    return SamConfig.load(directory / CONFIG_FILE), _flatten(restored)


def read_config(directory: str | os.PathLike) -> SamConfig:
    return SamConfig.load(Path(directory) / CONFIG_FILE)


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()



def _nest(flat: dict[tuple, object]) -> dict:
    """{('a', 0, 'b'): x} -> {'a': {'0': {'b': x}}}: Orbax trees with string keys only."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(str(p), {})
        node[str(path[-1])] = value
    return tree


def _flatten(tree: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out = {}
    for k, v in tree.items():
        key = int(k) if k.isdigit() else k
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + (key,)))
        else:
            out[prefix + (key,)] = v
    return out
