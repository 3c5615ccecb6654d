"""LoRA on the image encoder's attention: only the factors (and what --freeze leaves) train, their
gradients equal a PyTorch transcription on the official encoder, the merged model computes what
the LoRA model computes and is an ordinary checkpoint, and a run's outputs are merged."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from sam_jax import build_sam_from_config, get_config, load
from sam_jax.convert import folder
from sam_jax.train.config import TrainConfig
from sam_jax.train.lora import LORA_BASE, LoraLinear, LoraSettings, add_lora, merge_lora
from sam_jax.train.trainable import encoder_frozen, split_trainable
from tests.reference import training as ref
from tests.reference.compare import assert_close

SETTINGS = LoraSettings(rank=2, scale=1.5, targets=("qkv", "proj"))


def _with_random_b(model, seed=0):
    """B starts at zero (no gradient reaches A then): random B for the gradient comparison."""
    r = np.random.default_rng(seed)
    for _, m in nnx.iter_modules(model):
        if isinstance(m, LoraLinear):
            m.lora_b[...] = jnp.asarray(r.normal(size=m.lora_b.shape) * 0.05, jnp.float32)
    return model


@nnx.jit
def _embed(model, x):
    return model.image_encoder(x)


def _paths(state) -> list[str]:
    return ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(state)]


def test_only_the_factors_train(tiny):
    model = add_lora(tiny.model, SETTINGS, seed=0)
    depth = tiny.config.encoder_depth
    _, trainable, fixed = split_trainable(model, (LORA_BASE,))
    names = _paths(trainable)
    lora = [n for n in names if n.endswith(("lora_a", "lora_b"))]
    assert len(lora) == depth * 2 * 2 and all(n.startswith("image_encoder/blocks/") for n in lora)
    assert not [n for n in names if n.startswith("image_encoder/") and n not in lora]  # the base encoder is frozen
    assert any(n.startswith("mask_decoder/") for n in names)  # what --freeze leaves trains as usual
    _, trainable, _ = split_trainable(model, (LORA_BASE, "prompt_encoder", "mask_decoder"))
    assert sorted(_paths(trainable)) == sorted(lora)
    assert not encoder_frozen((LORA_BASE,), model)  # the factors are the encoder's: no cached embeddings
    # B starts at zero: the LoRA model starts as the base model; the base is untouched.
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, tiny.config.image_size, tiny.config.image_size)), jnp.float32)
    assert_close(_embed(model, x), _embed(tiny.model, x), 1e-6, "LoRA at init")
    assert not any(isinstance(m, LoraLinear) for _, m in nnx.iter_modules(tiny.model))
    # TinyViT's attention gets factors the same way.
    vit_t = add_lora(build_sam_from_config("test_tiny_vit"), LoraSettings(rank=1), seed=0)
    depths = get_config("test_tiny_vit").tiny_vit_depths
    assert sum(isinstance(m, LoraLinear) for _, m in nnx.iter_modules(vit_t)) == sum(depths[1:])  # stage 0 is convolutions
    with pytest.raises(ValueError, match="do not also freeze image_encoder"):
        TrainConfig(lora=SETTINGS, freeze=("image_encoder",))
    with pytest.raises(ValueError, match="lora targets"):
        TrainConfig(lora=LoraSettings(rank=2, targets=("mlp",)))


def test_lora_gradients_match_torch(tiny):
    """sum(embeddings * R) through the official encoder with the transcribed LoRA layers, against
    ours: every factor's gradient within 1e-4 (CONVENTIONS), the embeddings within 1e-5."""
    model = _with_random_b(add_lora(tiny.model, SETTINGS, seed=3))
    graphdef, trainable, fixed = split_trainable(model, (LORA_BASE, "prompt_encoder", "mask_decoder"))
    S = tiny.config.image_size
    x = np.random.default_rng(1).normal(size=(1, 3, S, S)).astype(np.float32)
    R = np.random.default_rng(2).normal(size=(1, tiny.config.prompt_embed_dim, S // 16, S // 16)).astype(np.float32)

    def loss(params):
        return jnp.sum(nnx.merge(graphdef, params, fixed).image_encoder(jnp.asarray(x)) * R)

    grads = {"/".join(map(str, p)): np.asarray(g.get_value()) for p, g in nnx.to_flat_state(jax.jit(jax.grad(loss))(trainable))}

    official = copy.deepcopy(tiny.official.image_encoder)
    factors = {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(trainable)}
    for i, block in enumerate(official.blocks):
        for name in SETTINGS.targets:
            a, b = (torch.tensor(factors[f"image_encoder/blocks/{i}/attn/{name}/lora_{k}"]) for k in "ab")
            setattr(block.attn, name, ref.LoraLinear(getattr(block.attn, name), a, b, SETTINGS.scale))
    with torch.enable_grad():
        emb = official(torch.from_numpy(x))
        (emb * torch.from_numpy(R)).sum().backward()
    ours = np.asarray(_embed(nnx.merge(graphdef, trainable, fixed), jnp.asarray(x)))
    assert_close(ours, emb.detach().numpy(), 1e-5, "LoRA embeddings")
    for i, block in enumerate(official.blocks):
        for name in SETTINGS.targets:
            for k in "ab":
                path = f"image_encoder/blocks/{i}/attn/{name}/lora_{k}"
                rg = getattr(getattr(block.attn, name), f"lora_{k}").grad.numpy()
                err = np.linalg.norm(grads[path] - rg) / np.linalg.norm(rg)
                assert np.linalg.norm(rg) > 0 and err <= 1e-4, f"{path}: relative gradient error {err:.2e}"


def test_merged_model_equals_the_lora_model(tiny, tmp_path):
    from sam_jax import SamPredictor

    model = _with_random_b(add_lora(tiny.model, SETTINGS, seed=5), seed=1)
    merged = merge_lora(model)
    assert not any(isinstance(m, LoraLinear) for _, m in nnx.iter_modules(merged))
    S = tiny.config.image_size
    x = jnp.asarray(np.random.default_rng(4).normal(size=(1, 3, S, S)), jnp.float32)
    lora_emb, merged_emb = np.asarray(_embed(model, x)), np.asarray(_embed(merged, x))
    assert_close(merged_emb, lora_emb, 1e-5, "merged embeddings")
    assert np.abs(lora_emb - np.asarray(_embed(tiny.model, x))).max() > 1e-3  # LoRA changed them
    # Written as a plain checkpoint folder it loads as an ordinary SAM of the base's config, with the same masks.
    folder.save(tmp_path / "merged", merged.config, {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(merged))})
    loaded = load(tmp_path / "merged")
    assert loaded.config == tiny.config
    image = np.random.default_rng(6).integers(0, 256, size=(S, S - 8, 3), dtype=np.uint8)
    outs = []
    for m in (model, loaded):
        p = SamPredictor(m)
        p.set_image(image)
        outs.append(p.predict(point_coords=np.array([[20.0, 30.0]]), point_labels=np.array([1]), return_logits=True)[0])
    assert_close(outs[1], outs[0], 1e-4, "mask logits")
