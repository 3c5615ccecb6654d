"""Image embeddings of a training set, computed once when the image encoder is frozen (the
decoder then trains on them instead of re-running the encoder every step), kept in the run's
`embeddings.npy`. Each process embeds its share of the images; process 0 writes the file."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from ..functional import embed_images_jit
from ..io.outputs import atomic_file
from ..modeling import Sam
from ..parallel import process_share
from ..runtime.progress import Progress
from ..transforms import transform_for
from .data import MaskDataset, prepare
from .run_folder import barrier
from .trainable import prepare_model


def embedding_cache(model: Sam, dataset: MaskDataset, path: Path, dtype: str, quiet: bool = False) -> np.ndarray:
    """(N, C, h, w) embeddings of every image of `dataset` by `model` computing in `dtype`, read
    from `path` when it holds them (the right shape), else computed and written there; memory-mapped."""
    cfg = model.config
    g = cfg.image_embedding_size
    shape = (len(dataset), cfg.prompt_embed_dim, g, g)
    if path.is_file():
        cached = np.load(path, mmap_mode="r")
        if cached.shape == shape:
            return cached
    graphdef, params = nnx.split(prepare_model(model, dtype))
    mine = process_share(range(len(dataset)))  # each process embeds its share
    progress = Progress(len(mine), "sam-jax train: embedding", quiet)

    def embed(i: int) -> np.ndarray:
        e, first, t0 = dataset.images[i], i == mine[0], time.perf_counter()
        with progress.running(f"{e.file.name}" + (": compiling the image encoder (once)" if first else ""), log=first):
            ex = prepare(dataset.image(i), np.zeros((0, 1, 1), bool), transform_for(cfg), 1, np.random.default_rng(0), (e.height, e.width))
            out = np.asarray(embed_images_jit(graphdef, params, jnp.asarray(ex["image"][None]), jnp.asarray(ex["input_size"][None])))[0]
        progress.step(f"{e.file.name}: {time.perf_counter() - t0:.1f} s")
        return out

    if jax.process_count() == 1:
        with atomic_file(path) as tmp:  # written as computed: the cache never has to fit in memory
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            for i in mine:
                out[i] = embed(i)
            out.flush()
            del out
    else:
        count = -(-shape[0] // jax.process_count())
        local = np.zeros((count,) + shape[1:], np.float32)
        for k, i in enumerate(mine):
            local[k] = embed(i)
        shares = multihost_utils.process_allgather(local)  # (processes, count, C, h, w); share p holds p, p + P, ...
        if jax.process_index() == 0:
            with atomic_file(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
                np.save(f, shares.transpose(1, 0, 2, 3, 4).reshape((-1,) + shape[1:])[: shape[0]])
        barrier("sam-jax train: embeddings written")
    progress.close()
    return np.load(path, mmap_mode="r")
