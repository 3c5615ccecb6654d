"""sam-jax: Segment Anything (SAM v1) in JAX / Flax NNX.

The official package's names, from the same places: `sam_model_registry`, `build_sam_vit_{h,l,b}`,
`SamPredictor`, `SamAutomaticMaskGenerator`; plus `load`, the one entry point for every kind of
checkpoint, and `enable_compilation_cache`, the opt-in persistent XLA cache. Importing sam_jax
changes no JAX setting, registers no listener and writes no file.

The names are imported on first use (PEP 562): `import sam_jax` alone loads no JAX, so that
`sam-jax --help` (and any program that needs one light module of the package) starts at once.
"""

import importlib
import sys
import types

__version__ = "0.1.0"

# Public name -> the module that defines it.
_SOURCES = {
    "ResizeLongestSide": ".transforms",
    "Sam": ".modeling",
    "SamAutomaticMaskGenerator": ".automatic_mask_generator",
    "SamConfig": ".config",
    "SamPredictor": ".predictor",
    "build_sam": ".build_sam",
    "build_sam_from_config": ".build_sam",
    "build_sam_vit_b": ".build_sam",
    "build_sam_vit_h": ".build_sam",
    "build_sam_vit_l": ".build_sam",
    "enable_compilation_cache": ".runtime.compilation_cache",
    "get_config": ".config",
    "load": ".build_sam",
    "sam_model_registry": ".build_sam",
}
_SUBMODULES = ("assets",)  # sam_jax.assets.SHAPES_TINY after a plain `import sam_jax`

__all__ = [
    "ResizeLongestSide", "Sam", "SamAutomaticMaskGenerator", "SamConfig", "SamPredictor", "build_sam",
    "build_sam_from_config", "build_sam_vit_b", "build_sam_vit_h", "build_sam_vit_l", "enable_compilation_cache",
    "get_config", "load", "sam_model_registry",
]


def __getattr__(name: str):
    if name in _SOURCES:
        value = getattr(importlib.import_module(_SOURCES[name], __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # found once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_SOURCES, *_SUBMODULES})


class _Package(types.ModuleType):
    """`sam_jax.build_sam` is the function, as `segment_anything.build_sam` is: importing the
    submodule of that name (`from sam_jax.build_sam import ...`) would otherwise rebind the
    package's attribute to the module."""

    def __setattr__(self, name, value):
        if name == "build_sam" and isinstance(value, types.ModuleType):
            value = value.build_sam
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
