"""Every parameter checked against the model its config builds: the pipeline's third stage. A
file's claims are not trusted: nothing is built or read further until the names and shapes it
holds are exactly the model's."""

from __future__ import annotations

import functools

import jax
from flax import nnx

from sam_jax.config import SamConfig
from sam_jax.modeling import Sam

from .keys import ConversionError, official_key, official_shape


def abstract_model(config: SamConfig) -> Sam:
    """The model's structure with shape-only variables: no memory allocated, no random init (a
    new copy each call: callers fill its variables)."""
    return nnx.merge(*_abstract_model(config), copy=True)


@functools.lru_cache(maxsize=8)
def _abstract_model(config: SamConfig) -> tuple[nnx.GraphDef, nnx.State]:
    # Tracing the model's construction takes seconds (most of it in flax asking each traced RNG
    # counter for its sharding, which a tracer answers with a costly error message); a load
    # needs the structure twice (the shape check and the restore), and a session often loads
    # the same configuration again.
    return nnx.split(nnx.eval_shape(lambda: Sam(config, rngs=nnx.Rngs(0))))


def parameter_shapes(config: SamConfig) -> dict[tuple, jax.ShapeDtypeStruct]:
    """{variable path: shape and dtype} of the model `config` builds."""
    return dict(_parameter_shapes(config))


def _parameter_shapes(config: SamConfig) -> tuple[tuple[tuple, jax.ShapeDtypeStruct], ...]:
    return tuple((p, jax.ShapeDtypeStruct(v.shape, v.dtype)) for p, v in nnx.to_flat_state(_abstract_model(config)[1]))


def repeat_counts(config: SamConfig) -> dict[tuple, tuple[str, int]]:
    """{path of a list of layers: (the config field that sizes it, its length)}: what a config
    claims about a checkpoint's structure, known without building the model."""
    counts = {
        ("mask_decoder", "transformer", "layers"): ("decoder_depth", config.decoder_depth),
        ("mask_decoder", "output_hypernetworks_mlps"): ("num_multimask_outputs + 1", config.num_multimask_outputs + 1),
        ("mask_decoder", "iou_prediction_head", "layers"): ("iou_head_depth", config.iou_head_depth),
    }
    if config.encoder == "vit":
        counts[("image_encoder", "blocks")] = ("encoder_depth", config.encoder_depth)
    else:
        counts[("image_encoder", "layers")] = ("the number of tiny_vit_depths", len(config.tiny_vit_depths))
        for i, depth in enumerate(config.tiny_vit_depths):
            counts[("image_encoder", "layers", i, "blocks")] = (f"tiny_vit_depths[{i}]", depth)
    return counts


def check_structure(config: SamConfig, stored: dict[tuple, object]) -> None:
    """ConversionError in one line when the stored parameter paths hold another number of layers
    than `config` claims (encoder blocks, decoder layers, output heads): checked before the model
    is built, which for a hostile depth would not end."""
    found: dict[tuple, set[int]] = {}
    for path in stored:
        for i, key in enumerate(path):
            if isinstance(key, int):
                found.setdefault(tuple(path[:i]), set()).add(key)
    wrong = [f"{field} is {n} but the parameters hold {len(found.get(prefix, ()))} {'.'.join(map(str, prefix))}"
             for prefix, (field, n) in repeat_counts(config).items() if len(found.get(prefix, ())) != n]
    if wrong:
        raise ConversionError("; ".join(wrong))


def check_params(config: SamConfig, params: dict[tuple, object]) -> None:
    """Raises ConversionError naming, by official key, every parameter of the model `config`
    builds that `params` lacks, every entry it has that the model does not, and every shape that
    differs (`params` values: arrays, anything with a `.shape`, or shape tuples)."""
    expected = {p: tuple(v.shape) for p, v in parameter_shapes(config).items()}
    shapes = {p: tuple(v) if isinstance(v, tuple) else tuple(v.shape) for p, v in params.items()}
    key = lambda p: official_key(p)[0]
    missing = sorted(key(p) for p in expected.keys() - shapes.keys())
    unexpected = sorted(key(p) if isinstance(p, tuple) else str(p) for p in shapes.keys() - expected.keys())
    misshaped = [
        f"{key(p)}: checkpoint {official_shape(p, shapes[p])}, model expects {official_shape(p, shape)}"
        for p, shape in expected.items() if p in shapes and shapes[p] != shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if misshaped:
        problems.append(f"wrong shapes ({len(misshaped)}): {'; '.join(sorted(misshaped))}")
    if problems:
        raise ConversionError("checkpoint does not match the model config: " + " | ".join(problems))
