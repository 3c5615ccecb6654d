"""Small files shipped with the package: the tiny SAM trained on generated shapes (README.md here
says how it was made), for examples, notebooks and tests that need meaningful masks.

    model = sam_jax.load(sam_jax.assets.SHAPES_TINY)
"""

from pathlib import Path

SHAPES_TINY = Path(__file__).resolve().parent / "shapes_tiny"
