"""Many devices on one host: the test session simulates 8 CPU devices (conftest.py). Sharded
results must equal the single-device ones (floats within 1e-5 relative; masks equal away from the
threshold), for batch sizes that do not divide the device count."""

from __future__ import annotations

import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.reference.compare import assert_close, assert_masks_match
from sam_jax import SamPredictor
from sam_jax.parallel import DATA, FSDP, make_mesh, pad_batch, replicate, run_on_devices


def _images(n, seed=0):
    r = np.random.default_rng(seed)
    return [r.integers(0, 255, (int(r.integers(40, 120)), int(r.integers(40, 120)), 3), dtype=np.uint8) for _ in range(n)]


def test_mesh_shapes():
    assert len(jax.devices()) == 8
    mesh = make_mesh(fsdp=4)
    assert dict(mesh.shape) == {DATA: 2, FSDP: 4}
    with pytest.raises(ValueError, match="must divide"):
        make_mesh(fsdp=3)
    assert pad_batch(np.ones((3, 2)), 8).shape == (8, 2) and pad_batch(np.ones((8, 2)), 8).shape == (8, 2)


@pytest.mark.parametrize("n", [3, 5])
def test_sharded_embedding_equals_single_device(tiny, n):
    sharded, single = SamPredictor(tiny.model), SamPredictor(tiny.model, mesh=None)
    assert sharded.mesh is not None and sharded.mesh.size == 8 and single.mesh is None
    images = _images(n, seed=n)
    a, b = sharded.embed_images(images), single.embed_images(images)
    assert a.features.shape == b.features.shape == (n, 32, 16, 16)
    assert len(a.features.sharding.device_set) > 1  # really spread over the devices
    assert_close(a.features, b.features, tol=1e-5, what="sharded embedding")
    assert a.input_sizes == b.input_sizes and a.original_sizes == b.original_sizes
    # Switching to an image of the sharded batch brings it back to the model's device.
    sharded.set_image_embedding(a, n - 1)
    assert sharded.features.devices() == {tiny.model.device}


def test_sharded_prompts_equal_single_device(tiny):
    image = _images(1, seed=9)[0]
    sharded, single = SamPredictor(tiny.model), SamPredictor(tiny.model, mesh=None)
    for p in (sharded, single):
        p.set_image(image)
    h, w = image.shape[:2]
    boxes = np.array([[0, 0, w // 2, h // 2], [w // 4, h // 4, w - 1, h - 1], [5, 5, 30, 30]])
    points = np.random.default_rng(1).uniform(0, min(h, w), size=(3, 2, 2))
    labels = np.array([[1, 0], [1, 1], [0, 1]])
    out = sharded.predict_batch(points, labels, boxes, return_logits=True)
    ref = single.predict_batch(points, labels, boxes, return_logits=True)
    for o, r, what in zip(out, ref, ("masks", "iou", "low_res")):
        assert o.shape == r.shape
        assert_close(o, r, tol=1e-5, what=f"sharded {what}")
    masks = sharded.predict_batch(points, labels, boxes)[0]
    assert_masks_match(masks, ref[0], what="sharded masks")


def test_one_device_uses_no_mesh(tmp_path):
    """With a single device there is nothing to split: the predictor keeps to the model's device."""
    code = (
        "import sam_jax; from sam_jax import SamPredictor; "
        "m = sam_jax.build_sam_from_config('test_tiny'); p = SamPredictor(m); "
        "import numpy as np; e = p.embed_images([np.zeros((20, 30, 3), np.uint8)] * 3); "
        "print(p.mesh, e.features.shape)"
    )
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu", "PATH": ""}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "None" and "(3, 32, 16, 16)" in r.stdout


def test_run_on_devices_gives_each_worker_its_device():
    devices = jax.local_devices()
    seen = {}

    def work(k, item):  # an uncommitted array lands on the worker's own device
        seen[item] = (k, jax.numpy.zeros(()).devices())
        time.sleep(0.05)  # long enough for every worker to start before the queue is empty
        return item * item

    results = dict(run_on_devices(work, range(19), devices))
    assert results == {i: i * i for i in range(19)}
    assert all(where == {devices[k]} for k, where in seen.values())
    assert {k for k, _ in seen.values()} == set(range(8))  # 19 items: every worker took some


def test_run_on_devices_stops_on_an_error():
    devices = jax.local_devices()

    def work(k, item):
        if item == 3:
            raise KeyError("item 3")
        time.sleep(0.05)
        return item

    done = []
    with pytest.raises(KeyError, match="item 3"):
        for item, _ in run_on_devices(work, range(100), devices):
            done.append(item)
    assert 3 not in done and len(done) < 50  # the hand-out stopped; the items under way were reported


def test_replicate_places_a_copy_on_each_device(tiny):
    copies = replicate(tiny.model, jax.local_devices()[:3])
    assert [m.device for m in copies] == jax.local_devices()[:3]
    assert tiny.model.device == jax.local_devices()[0]  # the original stays where it was
