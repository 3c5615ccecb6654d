"""The native checkpoint format (host-side I/O): a folder holding `config.json` and `params/`, an
Orbax tree of the model's parameters keyed by their paths. Written by `sam-jax convert`, by
training, and by the weights-by-name cache; read by `sam_jax.load`.

A folder is written atomically (`utils.io.atomic_dir`): one with the final name is complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .config import SamConfig
from .utils.io import atomic_dir

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True when `path` is a folder in this format (its two parts are there)."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir()


def save(output: str | os.PathLike, config: SamConfig, params: dict[tuple, np.ndarray], overwrite: bool = False) -> Path:
    """Writes config.json and the Orbax parameters ({path: array}) to the folder `output`."""
    import orbax.checkpoint as ocp

    output = Path(output).absolute()
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists (pass overwrite=True / --overwrite to replace it)")
    with atomic_dir(output, overwrite=overwrite) as tmp:
        config.save(tmp / CONFIG_FILE)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / PARAMS_DIR, _nest(params))
            ckptr.wait_until_finished()
    return output


def read_config(directory: str | os.PathLike) -> SamConfig:
    directory = Path(directory)
    if not is_checkpoint(directory):
        raise FileNotFoundError(f"{directory} is not a sam-jax checkpoint (expected {CONFIG_FILE} and {PARAMS_DIR}/)")
    return SamConfig.load(directory / CONFIG_FILE)


def stored_shapes(directory: str | os.PathLike) -> dict[tuple, tuple[int, ...]]:
    """{parameter path: shape} as stored in the folder's Orbax metadata (nothing is read but it)."""
    import jax
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(directory / PARAMS_DIR)
    tree = getattr(meta, "item_metadata", meta)
    return {
        tuple(int(k.key) if k.key.isdigit() else k.key for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def load(directory: str | os.PathLike, abstract: dict[tuple, object]) -> dict[tuple, np.ndarray]:
    """The parameters stored in `directory` for the given abstract {path: ShapeDtypeStruct}
    (Orbax checks the stored shapes against it)."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    read_config(directory)  # a clear error when it is not a checkpoint
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(directory / PARAMS_DIR, _nest(abstract))
    return _flatten(restored)


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
