"""The comparisons that the parity contract defines (NumPy only)."""

from __future__ import annotations

import numpy as np


def assert_close(ours, ref, tol: float = 1e-4, what: str = ""):
    """Max abs error relative to the reference's largest magnitude."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    err = np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-12)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol}"
    return err


def assert_masks_match(ours, ref_logits, threshold: float = 0.0, margin: float = 1e-4, what: str = ""):
    """Binary masks equal everywhere except where the reference logit is within `margin` of the threshold."""
    ours, ref_logits = np.asarray(ours), np.asarray(ref_logits)
    differ = ours != (ref_logits > threshold)
    bad = differ & (np.abs(ref_logits - threshold) > margin)
    assert not bad.any(), f"{what}: {int(bad.sum())} mask pixels differ away from the threshold"
