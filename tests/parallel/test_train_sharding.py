"""Training on many devices (the session's 8 simulated CPU devices, conftest.py): three AdamW
steps on a (8,) data mesh and on a (2, 4) data x fsdp mesh equal the single-device steps (loss
and parameters within 1e-5 relative), for a global batch of 3 images that 8 does not divide;
under fsdp the big parameters and their AdamW moments really are split."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from tests.reference.compare import assert_close
from sam_jax import build_sam_from_config
from sam_jax.parallel import FSDP, fsdp_shardings, fsdp_spec, make_mesh, place, replicated
from sam_jax.train.data import prepare
from sam_jax.train.trainable import split_trainable
from sam_jax.train.optim import OptimizerSettings
from sam_jax.train.prompts import PromptSettings
from sam_jax.train.sharding import pad_batch, padded_size
from sam_jax.train.synthetic_shapes import make_example
from sam_jax.train.rollout import Batch
from sam_jax.train.sharding import batch_shardings, state_shardings
from sam_jax.train.step import StepSettings, init_state, train_step_jit

# One round of prompting (a click or a box); AdamW with weight decay, layer decay and clipping by the
# global norm (itself a sum over every device's gradients). Adam divides each entry by its own
# magnitude, so an entry whose gradient is rounding noise (the attention key biases', zero in exact
# arithmetic) would move by +-lr on either side: eps = 1e-4 keeps those proportional to their
# gradient, as in test_train_model's AdamW parity.
SETTINGS = StepSettings(
    PromptSettings(correction_points=0, mask_only_steps=0),
    optimizer=OptimizerSettings(learning_rate=1e-3, warmup_steps=0, schedule="constant", eps=1e-4, weight_decay=0.1,
                                clip_norm=1.0, layer_decay=0.8),
    encoder_depth=4,
)
STEPS = 3


def _batch(model, n, objects=2):
    S = model.config.image_size
    rng = np.random.default_rng(0)
    examples = [prepare(*make_example(seed=7, index=i), S, objects, rng) for i in range(n)]
    stack = lambda k: np.stack([e[k] for e in examples])
    return Batch(stack("image"), None, stack("input_size"), stack("masks"), stack("valid"))


def _train(model, batch, mesh):
    """STEPS steps on `batch`; returns (losses, trained parameters as numpy, final state)."""
    graphdef, trainable, fixed = split_trainable(model)
    state = init_state(trainable, SETTINGS, seed=0)
    noise = np.random.default_rng(1)  # every parameter nonzero (biases start at 0), so that 1e-5 relative means something
    state = state._replace(params=jax.tree.map(lambda x: x + 0.02 * noise.standard_normal(x.shape, np.float32), state.params))
    if mesh is not None:
        batch = pad_batch(batch, padded_size(len(batch.valid), mesh))
        state = place(state, state_shardings(state, mesh))
        fixed = place(fixed, fsdp_shardings(fixed, mesh))
        batch = place(batch, batch_shardings(batch, mesh))
    losses = []
    for _ in range(STEPS):
        state, metrics = train_step_jit(graphdef, state, fixed, batch, settings=SETTINGS, mesh=mesh)
        losses.append(float(metrics["loss"]))
    return np.array(losses), {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state.params)}, state


@pytest.fixture(scope="module")
def single():
    model = build_sam_from_config("shapes_tiny", seed=3)  # the real structure at 64 x 64
    batch = _batch(model, 3)
    return model, batch, _train(model, batch, None)


@pytest.mark.parametrize("fsdp", [1, 4])
def test_sharded_steps_equal_single_device(single, fsdp):
    model, batch, (ref_losses, ref_params, _) = single
    mesh = make_mesh(fsdp=fsdp)
    assert mesh.size == 8 and len(batch.valid) == 3
    losses, params, state = _train(model, batch, mesh)
    assert_close(losses, ref_losses, tol=1e-5, what=f"loss on a {dict(mesh.shape)} mesh")
    for path, ref in ref_params.items():
        assert_close(params[path], ref, tol=1e-5, what="/".join(map(str, path)))

    kernel = state.params["image_encoder"]["blocks"][0]["mlp"]["lin1"]["kernel"].get_value()  # (64, 256)
    mu = jax.tree.leaves(state.opt_state)
    if fsdp == 1:
        assert kernel.sharding.is_fully_replicated
    else:
        assert kernel.sharding.spec == PartitionSpec(None, FSDP)
        assert {s.data.shape for s in kernel.addressable_shards} == {(64, 64)}  # a quarter on each device
        split = [x for x in mu if x.shape == (64, 256)]
        assert split and all(x.sharding.spec == PartitionSpec(None, FSDP) for x in split)  # AdamW moments alike


def test_fsdp_rule():
    assert fsdp_spec((64, 256), 4) == PartitionSpec(None, FSDP)  # the largest divisible dimension
    assert fsdp_spec((256, 64), 4) == PartitionSpec(FSDP)
    assert fsdp_spec((3, 3, 32, 32), 4) == PartitionSpec(None, None, FSDP)  # the first of equals
    assert fsdp_spec((1, 16, 16, 64), 3) == PartitionSpec()  # nothing divisible: replicated
    assert fsdp_spec((64,), 4) == PartitionSpec()  # small: replicated
    assert fsdp_spec((64, 256), 1) == PartitionSpec()
    mesh = make_mesh(fsdp=2)
    assert fsdp_shardings({"a": np.zeros((2, 1024))}, mesh)["a"].spec == PartitionSpec(None, FSDP)
    assert replicated(mesh).is_fully_replicated
