"""The image encoder as a serialized `jax.export` artifact (StableHLO), runnable without sam-jax.

    export_encoder_stablehlo(sam_jax.load("sam_vit_b"), "sam_vit_b_encoder")

writes a folder (atomically) holding:
    encoder.jaxexport   `jax.export.Exported.serialize()`: the encoder's StableHLO program for the
                        chosen platforms, with its calling convention
    weights.npz         its weights (float32, sam-jax's layout, keys "image_encoder.<path>"; a
                        TinyViT's BatchNorm statistics too): inputs, not constants, so the program
                        stays small (vit_h's weights are 2.5 GB) and one program serves any weights
                        of the same shapes
    signature.json      the interface: input and output shapes, how the input is preprocessed,
                        platforms, the model config, the weight names

The program is `f(weights: dict[str, array], image) -> image_embeddings`, or for an HQ-SAM model
`-> (image_embeddings, interm_embeddings)`, for every encoder family (ViT, TinyViT): `image`
float32 (B, 3, S, S) preprocessed as the model's profile says (`encoder_interface`: the official
mean/std, or LiteMedSAM's and MedSAM's min-max, applied before the encoder as in their own code)
and zero-padded, the ONNX encoder's input; image_embeddings (B, C, g, g) float32, g = S / the
patch size (or TinyViT's stride); interm_embeddings (1, B, g, g, D), the HQ decoder's early
feature in sam-hq's layout. B is symbolic unless a batch size is fixed. Running it needs only jax
and numpy (`run_encoder_stablehlo`, or the five lines in docs/export.md).

Matmuls are lowered at float32 precision (`jax.default_matmul_precision("highest")`), so the
artifact is float32-exact on every backend. The attention layout is the one of the backend that
exports (blocked row ranges on CPU, batched on accelerators); both are the same maths.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..modeling import Sam
from ..io.outputs import atomic_dir, check_output
from ..options import PLATFORMS
from .encoder_interface import encoder_outputs, image_input

PROGRAM = "encoder.jaxexport"
WEIGHTS = "weights.npz"
SIGNATURE = "signature.json"
FORMAT = "sam-jax image encoder, jax.export"
ARTIFACT_OUTPUT = "an exported encoder folder"


def is_own_artifact(path: Path) -> bool:
    """A folder of exactly the three files `export_encoder_stablehlo` writes, its signature ours."""
    try:
        names = {p.name for p in path.iterdir()}
        return names == {PROGRAM, WEIGHTS, SIGNATURE} and json.loads((path / SIGNATURE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def encoder_function(model: Sam) -> tuple[Callable, dict[str, np.ndarray]]:
    """(f, weights): the pure encoder `f(weights, image)` of the module docstring (for an HQ-SAM
    model, its two outputs) and this model's weights for it, {name: float32 array}."""
    graphdef, state = nnx.split(model.image_encoder)
    pairs, treedef = jax.tree_util.tree_flatten_with_path(state)
    names = ["image_encoder." + jax.tree_util.keystr(p, simple=True, separator=".").removesuffix(".value") for p, _ in pairs]
    weights = {n: np.asarray(v, np.float32) for n, (_, v) in zip(names, pairs)}

    hq = model.config.decoder == "hq"

    def encode(weights: dict[str, jax.Array], image: jax.Array):
        encoder = nnx.merge(graphdef, jax.tree.unflatten(treedef, [weights[n] for n in names]))
        if not hq:
            return encoder(image)
        embeddings, early = encoder.with_early_features(image)
        return embeddings, early[None]  # sam-hq's stack of early features, holding the one its decoder reads

    return encode, weights


def export_encoder_stablehlo(
    model: Sam,
    output_dir: str | os.PathLike,
    *,
    batch_size: int | None = None,
    platforms: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes the encoder artifact folder (see the module docstring) and returns its path.

    batch_size: a fixed batch, or None for a symbolic one (any B at run time).
    platforms: the platforms the artifact may run on, any of "cpu", "cuda", "rocm", "tpu"
    (default: the backend exporting it). overwrite: replace an existing artifact folder written by
    sam-jax (one holding exactly its three files, its signature of this format), nothing else."""
    platforms = tuple(platforms or (jax.default_backend(),))
    unknown = sorted(set(platforms) - set(PLATFORMS))
    if unknown:
        raise ValueError(f"unknown platform(s) {', '.join(unknown)}; choose from {', '.join(PLATFORMS)}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    output = Path(output_dir)
    check_output(output, kind="dir", overwrite=overwrite, is_own=is_own_artifact, what=ARTIFACT_OUTPUT)
    cfg = model.config
    S = cfg.image_size
    encode, weights = encoder_function(model)
    batch = jax.export.symbolic_shape("B")[0] if batch_size is None else batch_size
    image = jax.ShapeDtypeStruct((batch, cfg.in_chans, S, S), jnp.float32)
    specs = {n: jax.ShapeDtypeStruct(w.shape, w.dtype) for n, w in weights.items()}
    with jax.default_matmul_precision("highest"):
        exported = jax.export.export(jax.jit(encode), platforms=platforms)(specs, image)
    B = "B" if batch_size is None else batch_size
    outputs = encoder_outputs(cfg, B)
    signature = {
        "format": FORMAT,
        "call": "exported.call(weights, image) -> " + ", ".join(name for name, _ in outputs),
        "image": {"shape": [B, cfg.in_chans, S, S], "dtype": "float32", "preprocessing": image_input(cfg)},
        **{name: {"shape": shape, "dtype": "float32"} for name, shape in outputs},
        "platforms": list(platforms),
        "calling_convention_version": exported.calling_convention_version,
        "weights": {n: list(w.shape) for n, w in sorted(weights.items())},
        "config": cfg.to_dict(),
    }
    with atomic_dir(output, overwrite=overwrite) as tmp:
        (tmp / PROGRAM).write_bytes(exported.serialize())
        np.savez(tmp / WEIGHTS, **weights)
        (tmp / SIGNATURE).write_text(json.dumps(signature, indent=1) + "\n")
    return output


def run_encoder_stablehlo(directory: str | os.PathLike) -> Callable[[np.ndarray], jax.Array]:
    """A function image (B, 3, S, S) -> image_embeddings (B, C, g, g) (for an HQ-SAM model the pair
    (image_embeddings, interm_embeddings)) running the artifact in `directory` with its weights
    (placed on the default device once); uses no model code."""
    directory = Path(directory)
    if not (directory / PROGRAM).is_file() or not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(f"{directory} is not an exported encoder (expected {PROGRAM} and {WEIGHTS})")
    exported = jax.export.deserialize(bytearray((directory / PROGRAM).read_bytes()))
    with np.load(directory / WEIGHTS) as data:
        weights = jax.device_put({k: data[k] for k in data.files})
    call = jax.jit(exported.call)
    return lambda image: call(weights, image)
