"""The automatic mask generator refuses, in one line and before allocating anything, settings whose
work passes its bounds (`sam_jax.amg_limits`), saying what they would need; `allow_large=True`
(`--allow-large`) passes the check and stays out of the outputs' stamps."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from sam_jax import amg_limits, assets, load
from sam_jax.automatic_mask_generator import SamAutomaticMaskGenerator
from sam_jax.cli import main
from sam_jax.runners.amg import generation_settings


@pytest.fixture(scope="module")
def model():
    return load(assets.SHAPES_TINY)


def _refused(model, **settings) -> str:
    """The one-line refusal of these settings, checked to come fast and without a large allocation."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ValueError) as info:
            SamAutomaticMaskGenerator(model, **settings)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert time.perf_counter() - t0 < 2 and peak < 20e6, (time.perf_counter() - t0, peak)
    assert "\n" not in message and message.endswith("pass allow_large=True (sam-jax amg --allow-large) to run it anyway")
    return message


def test_huge_point_grids_are_refused_before_they_are_built(model):
    # 10^8 points: the grid alone took 5.6 GB before a MemoryError; the candidates' logits (3 masks
    # of 64 x 64 float32 for this model) would take 4.9 TB.
    message = _refused(model, points_per_side=10**4)
    assert "points_per_side=10000 means 100,000,000 prompts per crop (at most 65,536" in message
    assert "about 4.92 TB of device memory" in message and "5.6 GB of host memory for the point grids" in message
    assert "1,000,000 prompts per crop" in _refused(model, points_per_side=1000)  # was XLA's out-of-memory text
    grids = [np.zeros((300 * 300, 2))]  # given grids are counted too
    assert "point_grids means 90,000 prompts per crop" in _refused(model, points_per_side=None, point_grids=grids)


def test_deep_crop_layers_are_refused_with_their_crops_and_time(model):
    message = _refused(model, crop_n_layers=10)
    assert "crop_n_layers=10 means 1,398,101 crops (image-encoder passes) and 1,431,655,424 prompts: roughly" in message
    assert "on this machine (a rough estimate; at most 1,365 crops and 24 hours run)" in message
    assert "crop_n_layers=6 means 5,461 crops" in _refused(model, points_per_side=4, crop_n_layers=6)  # minutes, but past the crops' bound
    SamAutomaticMaskGenerator(model, points_per_side=4, crop_n_layers=5)  # 1,365 crops: within it


def test_memory_and_time_bounds_and_the_opt_in(model):
    work = amg_limits.estimate(model, 32, 0, 1, 64)
    low = 64 * 64 * 4  # one mask's low-res logits, float32
    assert work.prompts_per_crop == (1024,) and work.crops == 1 and work.prompts == 1024
    assert work.device_bytes == 1024 * 3 * low + 64 * low * (3 + 2 * model.config.prompt_embed_dim // 8)
    amg_limits.check(work, work.device_bytes, work.host_bytes, what="defaults")  # exactly fits
    with pytest.raises(ValueError, match=r"^points_per_side=32 means about 61.9 MB of device memory .* more than the "
                                         r"device's 61.9 MB; pass allow_large"):
        amg_limits.check(work, work.device_bytes - 1, None, what="points_per_side=32")
    with pytest.raises(ValueError, match="more than the host's"):
        amg_limits.check(work, None, work.host_bytes - 1, what="points_per_side=32")
    slow = work._replace(seconds=amg_limits.MAX_HOURS * 3600 + 1)
    with pytest.raises(ValueError, match="roughly 24 hours on this machine"):
        amg_limits.check(slow, None, None, what="crop_n_layers=4")
    for tight in (work._replace(prompts_per_crop=(10**8,)), slow):
        amg_limits.check(tight, 1, 1, what="anything", allow_large=True)
    # The generator with the opt-in: past the prompts bound, built (its grid is small), not run.
    generator = SamAutomaticMaskGenerator(model, points_per_side=300, allow_large=True)
    assert len(generator.point_grids[0]) == 90_000
    # The default work of the crop layers' estimate grows as 1 + 4 + 16 + ... crops.
    assert amg_limits.estimate(model, 32, 3, 2, 64).prompts == 1024 + 4 * 256 + 16 * 64 + 64 * 16


def test_cli_refuses_in_one_line_and_the_opt_in_is_not_stamped(tmp_path, capsys):
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    argv = ["amg", "--checkpoint", "shapes_tiny", "--input", image, "--output", tmp_path / "out", "--cache-dir", "",
            "--points-per-side", "10000"]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    err = "".join(l for l in err.splitlines(keepends=True) if not l.startswith("sam-jax: "))  # past the steps' status lines
    assert err.count("\n") == 1 and err.startswith("sam-jax amg: error: points_per_side=10000 means") and "--allow-large" in err
    settings = generation_settings({"points_per_side": 8, "allow_large": True})
    assert "allow_large" not in settings and settings == generation_settings({"points_per_side": 8})
