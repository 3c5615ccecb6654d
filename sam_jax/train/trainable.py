"""The model as training sees it: compute dtype and rematerialisation (static, in the graphdef),
which parameters train (the trainable/frozen split), and the decoder call the rollout makes.

    model = prepare_model(model, dtype="bfloat16", remat=True)
    graphdef, trainable, fixed = split_trainable(model, freeze=("image_encoder",))
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
from flax import nnx

from ..functional import Prompts
from ..modeling import Sam, with_numerics

MODULES = ("image_encoder", "prompt_encoder", "mask_decoder")


def prepare_model(model: Sam, dtype: str = "float32", remat: bool = False) -> Sam:
    """A view of `model` for training: compute dtype (`with_numerics`: the whole model's matmuls
    and convolutions; norms, softmax, outputs and therefore the gradients and optimizer state stay
    float32), and `nnx.remat` around each encoder block (activations recomputed in the backward
    pass instead of kept). Parameters are shared."""
    model = with_numerics(model, dtype=dtype)
    if remat:
        graphdef, state = nnx.split(model)
        model = nnx.merge(graphdef, state)
        model.image_encoder.remat = True
    return model


def freeze_filter(freeze: Sequence[str]):
    """(path, value) -> True for frozen parameters. Each entry is a module name (image_encoder,
    prompt_encoder, mask_decoder) or a regular expression searched in the "/"-joined path."""
    patterns = []
    for f in freeze:
        if f in MODULES:
            patterns.append(re.compile(rf"^{f}/"))
        else:
            try:
                patterns.append(re.compile(f))
            except re.error as e:
                raise ValueError(f"--freeze {f!r} is neither {', '.join(MODULES)} nor a valid regular expression ({e})") from None
    return lambda path, value: any(p.search("/".join(map(str, path))) for p in patterns)


def split_trainable(model: Sam, freeze: Sequence[str] = ()) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, trainable parameters, everything else: frozen parameters and buffers)."""
    frozen = freeze_filter(freeze)
    params = nnx.state(model, nnx.Param)
    paths = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(params)]
    for f, one in zip(freeze, (freeze_filter([f]) for f in freeze)):
        if not any(one(tuple(p.split("/")), None) for p in paths):
            raise ValueError(f"--freeze {f!r} matches no parameter (paths look like {paths[0]})")
    trainable = nnx.All(nnx.Param, nnx.Not(frozen))
    graphdef, train, fixed = nnx.split(model, trainable, ...)
    if not jax.tree.leaves(train):
        raise ValueError("every parameter is frozen: nothing to train")
    return graphdef, train, fixed


def encoder_frozen(freeze: Sequence[str], model: Sam) -> bool:
    """True when no image-encoder parameter is trainable (embeddings can then be computed once)."""
    frozen = freeze_filter(freeze)
    return all(frozen(p, None) for p, _ in nnx.to_flat_state(nnx.state(model.image_encoder, nnx.Param)) for p in [("image_encoder",) + p])


def decode_all(model: Sam, image_embeddings: jax.Array, prompts: Prompts) -> tuple[jax.Array, jax.Array]:
    """Every output of the decoder, the single-mask one first: logits (B, M + 1, 4h, 4w) and IoU
    predictions (B, M + 1). `decode_prompts` keeps either output 0 or outputs 1..M; training
    chooses per object, so it takes all of them (the same computation)."""
    pe = model.prompt_encoder
    sparse, dense, token_mask = pe.embed(*prompts)
    return model.mask_decoder.predict_masks(image_embeddings, pe.get_dense_pe(), sparse, dense, token_mask)
