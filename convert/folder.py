"""Reader and writer of sam-jax's own checkpoint folder: `config.json`, `params/` (an Orbax tree
of the model's parameters keyed by their paths) and `record.json` (what produced it, with the
model's content digest). Written by `sam-jax convert`, by training, and by the weights-by-name
cache; read by `sam_jax.load` through `pipeline.read`.

A folder is written atomically (`sam_jax.io.outputs.atomic_dir`): one with the final name is complete. An
existing folder is replaced only with `overwrite`, and only when it holds a checkpoint and
nothing else (`is_own_folder`).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from sam_jax.config import SamConfig
from sam_jax.io.outputs import atomic_dir, check_output, remove_stale_partials
from sam_jax.io.stamps import record_text

from .keys import ConversionError

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
RECORD_FILE = "record.json"
OWN_OUTPUT = "a checkpoint folder (and nothing else)"  # what `is_own_folder` recognises, for messages
PARAMS_DIGEST = "params_sha256"  # record.json: the digest of the stored arrays (`params_digest`), checked on every read


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True when `path` is a folder in this format (its two parts are there)."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir()


def is_own_folder(path: str | os.PathLike) -> bool:
    """True for a checkpoint folder holding nothing but its own parts: what `save` may replace."""
    path = Path(path)
    if path.is_symlink() or not is_checkpoint(path):
        return False
    return {p.name for p in path.iterdir()} <= {CONFIG_FILE, PARAMS_DIR, RECORD_FILE}


def save(
    output: str | os.PathLike, config: SamConfig, params: dict[tuple, np.ndarray], overwrite: bool = False,
    record: dict | None = None,
) -> Path:
    """Writes config.json, the Orbax parameters ({path: array}) and the `record` of what produced
    them (if given) to the folder `output` (see the module docstring for what it may replace)."""
    output = Path(output).absolute()
    check_output(output, kind="dir", overwrite=overwrite, is_own=is_own_folder, what=OWN_OUTPUT)
    remove_stale_partials(output.parent)
    with atomic_dir(output, overwrite=overwrite) as tmp:
        config.save(tmp / CONFIG_FILE)
        with _checkpointer() as ckptr:
            ckptr.save(tmp / PARAMS_DIR, _nest(params))
            ckptr.wait_until_finished()
        # The content digest names this model to a rerun without reading it; the parameters'
        # digest lets every read check that params/ still holds what was written (`read_params`).
        digests = {"content_sha256": content_digest(config, params), PARAMS_DIGEST: params_digest(params)}
        (tmp / RECORD_FILE).write_text(record_text({**(record or {}), **digests}))
    return output


def _checkpointer() -> ocp.StandardCheckpointer:
    """An Orbax checkpointer for this process alone: a checkpoint folder holds host arrays and is
    written (or read) by one process, also inside a multi-process run, where Orbax's default
    would wait at barriers for processes that are not taking part."""
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me}))


def content_digest(config: SamConfig, params: dict[tuple, object]) -> str:
    """SHA-256 (hex) of a model: its config and every parameter's path, shape and float32 bytes,
    whatever file they came from (an official .pth and its conversion give the same digest)."""
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for path in sorted(params, key=lambda p: tuple(str(k) for k in p)):
        value = np.ascontiguousarray(np.asarray(params[path]), dtype="<f4")
        h.update(f"{path}{value.shape}".encode())
        h.update(memoryview(value).cast("B"))
    return h.hexdigest()


def params_digest(params: dict[tuple, object]) -> str:
    """SHA-256 over the parameters as float32: each one's path, shape and the SHA-256 of its bytes.
    Per-array digests run in parallel (hashlib releases the GIL), so checking a read costs a
    fraction of one pass over the bytes per core. Orbax's own file names and metadata hold a
    timestamp and random names; the values do not, so two saves of one model record one digest."""
    paths = sorted(params, key=lambda p: tuple(str(k) for k in p))
    arrays = [np.ascontiguousarray(np.asarray(params[p]), dtype="<f4") for p in paths]
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(lambda a: hashlib.sha256(memoryview(a).cast("B")).hexdigest(), arrays))
    h = hashlib.sha256()
    for path, array, digest in zip(paths, arrays, digests):
        h.update(f"{path}{array.shape}{digest}\n".encode())
    return h.hexdigest()


def read_record(directory: str | os.PathLike) -> dict:
    """The record that `save` wrote in the folder ({} for an older folder or an unreadable one)."""
    try:
        record = json.loads((Path(directory) / RECORD_FILE).read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}


def stored_digest(directory: str | os.PathLike) -> str | None:
    """The content digest that `save` recorded in the folder, or None (an older folder), once its
    parameters have been read and checked against the record (`read_params`): a rerun keyed to
    this digest is keyed to the weights that would be loaded, not to what record.json says."""
    shapes = stored_shapes(directory)
    read_params(directory, {p: jax.ShapeDtypeStruct(s, np.float32) for p, s in shapes.items()})
    digest = read_record(directory).get("content_sha256")
    return digest if isinstance(digest, str) else None


def read_config(directory: str | os.PathLike) -> SamConfig:
    directory = Path(directory)
    if not is_checkpoint(directory):
        raise FileNotFoundError(f"{directory} is not a sam-jax checkpoint (expected {CONFIG_FILE} and {PARAMS_DIR}/)")
    return SamConfig.load(directory / CONFIG_FILE)


def stored_shapes(directory: str | os.PathLike) -> dict[tuple, tuple[int, ...]]:
    """{parameter path: shape} as stored in the folder's Orbax metadata (nothing is read but it)."""
    directory = Path(directory).absolute()
    try:
        with _checkpointer() as ckptr:
            meta = ckptr.metadata(directory / PARAMS_DIR)
        tree = getattr(meta, "item_metadata", meta)
        shapes = {
            tuple(int(k.key) if k.key.isdigit() else k.key for k in path): tuple(int(n) for n in leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        }
    except Exception as e:  # a damaged or foreign metadata file fails in many Orbax and tensorstore ways
        raise ConversionError(f"{directory}: the metadata of {PARAMS_DIR}/ cannot be read ({type(e).__name__}): "
                              f"not a checkpoint written by sam-jax, or a damaged one") from None
    if not shapes:  # Orbax answers a metadata file it cannot parse with a warning and nothing
        raise ConversionError(f"{directory}: the metadata of {PARAMS_DIR}/ lists no parameters: a damaged checkpoint")
    return shapes


def read_params(directory: str | os.PathLike, abstract: dict[tuple, object]) -> dict[tuple, np.ndarray]:
    """The parameters stored in `directory` for the given abstract {path: ShapeDtypeStruct}
    (Orbax checks the stored shapes against it), checked against the digest `save` recorded:
    ConversionError in one line for a flipped byte or another model's parameters put in place
    (a folder written before the digest was recorded has nothing to check)."""
    directory = Path(directory).absolute()
    read_config(directory)  # a clear error when it is not a checkpoint
    try:
        with _checkpointer() as ckptr:
            restored = ckptr.restore(directory / PARAMS_DIR, _nest(abstract))
    except Exception as e:  # damaged data files (in a folder without a recorded digest) fail deep in tensorstore
        raise ConversionError(f"{directory}: {PARAMS_DIR}/ cannot be read ({type(e).__name__}): a damaged checkpoint") from None
    params = _flatten(restored)
    expected = read_record(directory).get(PARAMS_DIGEST)
    if isinstance(expected, str) and params_digest(params) != expected:
        raise ConversionError(
            f"{directory}: {PARAMS_DIR}/ does not hold the parameters that were written there (their SHA-256 differs "
            f"from {RECORD_FILE}'s): the files were damaged or replaced; convert or save the model again")
    return params


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
