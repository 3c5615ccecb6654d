"""One full-size check: the official vit_b (built by the official registry), perturbed, saved,
converted by the CLI with --model-type vit_b, and compared at 1024x1024 under jax.jit."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import sam_jax
from tests.reference.compare import assert_close
from tests.reference.official import perturb


def test_vit_b_full_parity(tmp_path):
    from segment_anything import sam_model_registry

    official = perturb(sam_model_registry["vit_b"]().eval(), seed=7)
    pth = tmp_path / "sam_vit_b.pth"
    torch.save(official.state_dict(), pth)
    out = tmp_path / "vit_b"
    r = subprocess.run(
        [sys.executable, "-m", "sam_jax.cli", "convert", "--checkpoint", str(pth), "--output", str(out), "--model-type", "vit_b"],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    model = sam_jax.load(out)
    assert model.config == sam_jax.get_config("vit_b")
    # The official registry call on the .pth converts in memory to the same parameters.
    registry = sam_jax.sam_model_registry["vit_b"](checkpoint=pth)
    for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(registry))):
        np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(path))
    del registry

    x = np.random.default_rng(0).normal(size=(1, 3, 1024, 1024)).astype(np.float32)
    ref = official.image_encoder(torch.from_numpy(x))
    graphdef, state = nnx.split(model)
    encode = jax.jit(lambda s, im: nnx.merge(graphdef, s).image_encoder(im))
    emb = encode(state, jnp.asarray(x))
    err = assert_close(emb, ref.numpy(), tol=1e-4, what="vit_b image embedding")
    print(f"vit_b embedding relative error {err:.2e}")

    pts = torch.tensor([[[500.0, 375.0], [100.0, 900.0]]])
    labels = torch.tensor([[1, 0]])
    box = torch.tensor([[75.0, 275.0, 1725.0 / 1.76, 850.0 / 1.76]])
    sp, de = official.prompt_encoder(points=(pts, labels), boxes=box, masks=None)
    ref_masks, ref_iou = official.mask_decoder(ref, official.prompt_encoder.get_dense_pe(), sp, de, True)
    pe = model.prompt_encoder
    sparse, dense = pe((jnp.asarray(pts.numpy()), jnp.asarray(labels.numpy())), jnp.asarray(box.numpy()), None)
    masks, iou = model.mask_decoder(emb, pe.get_dense_pe(), sparse, dense, True)
    assert_close(masks, ref_masks.numpy(), what="vit_b low-res masks")
    assert_close(iou, ref_iou.numpy(), what="vit_b iou")
