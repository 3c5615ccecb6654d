"""Which model a job loads, and how it computes: the settings every runner and command shares."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax

from ..build_sam import load
from ..convert import content_digest, fetch, is_checkpoint, read, stored_digest
from ..modeling import Sam
from ..runtime.progress import status


class ModelSpec(NamedTuple):
    """checkpoint: a path or a model name (see `sam_jax.load`); model_type checks it (or, alone,
    names the official weights); image_size resamples it; dtype and precision say how it
    computes (`sam_jax.numerics`)."""

    checkpoint: str | None = None
    model_type: str | None = None
    image_size: int | None = None
    dtype: str = "float32"
    precision: str = "exact"

    @property
    def name(self) -> str:
        name = self.checkpoint or self.model_type
        if name is None:
            raise ValueError("give a checkpoint (a path, or a model name such as vit_b) or a model type")
        return str(name)

    def path(self, quiet: bool = False) -> Path:
        """The checkpoint on disk: the path itself, or a name's converted folder (fetched once)."""
        path = Path(self.name)
        return path if path.exists() else fetch(self.name, quiet=quiet)

    def digest(self, quiet: bool = False) -> str:
        """The content digest of the model (`convert.content_digest`): read from a sam-jax folder's
        record when there is one, so that nothing else is loaded; otherwise computed from the
        weights. The input size is part of the model: a resampled model has another digest."""
        path = self.path(quiet)
        digest = stored_digest(path) if is_checkpoint(path) and self.image_size is None else None
        if digest:
            return digest
        with status(f"reading {self.name} for its content digest", quiet):
            return content_digest(*read(path, self.model_type, image_size=self.image_size)[:2])

    def load(self, device: jax.Device | None = None, quiet: bool = False) -> Sam:
        """The model, on `device` when given, with a status line while it loads."""
        path = self.path(quiet)
        with status(f"loading {self.name}", quiet):
            model = load(path, model_type=self.model_type, image_size=self.image_size, dtype=self.dtype,
                         precision=self.precision)
        return model if device is None else model.to(device)
