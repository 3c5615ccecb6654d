"""Weights by name, the pipeline's first stage: the published checkpoints, their digests, and
where their converted copies live in the cache.

    sam = sam_jax.load("vit_b")                   # first call: download, verify, convert, cache
    sam = sam_jax.load("facebook/sam-vit-base")   # the Hugging Face copy (pip install "sam-jax[hub]")

Names: `vit_b`, `vit_l`, `vit_h` and `default` (vit_h, as in the official registry), the official
file names (`sam_vit_b_01ec64.pth`, ...) and the Hugging Face ids `facebook/sam-vit-base`,
`facebook/sam-vit-large`, `facebook/sam-vit-huge`. An existing path always wins over a name.
`pipeline.fetch` turns a name into a converted checkpoint folder; this module knows the names
and downloads the raw files. The cache's layout is `sam_jax.runtime.paths`: converted folders
in checkpoints/<name>/, official .pth files in downloads/ while they download and convert.

Environment: SAM_JAX_WEIGHTS_URL replaces the base URL of the official files (a mirror, or the tests'
local server); HF_ENDPOINT, huggingface_hub's own variable, that of the Hugging Face Hub.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

from sam_jax.runtime.paths import cache_dir
from sam_jax.runtime.progress import say

from .download import DownloadError, download

OFFICIAL_URL = "https://dl.fbaipublicfiles.com/segment_anything"
HF_FILE = "model.safetensors"
HUB_HINT = 'pip install "sam-jax[hub]"'


class OfficialWeights(NamedTuple):
    model_type: str  # the shipped config it must match (configs/<model_type>.json)
    file: str  # the published name: sam_<model type>_<first six hex digits of the file's MD5>.pth
    sha256: str


# Where the digests come from. Meta publishes the three URLs (segment-anything README, "Model
# Checkpoints") and no digest file; each file name ends in the first six hex digits of the file's
# MD5 (sam_vit_b_01ec64.pth: MD5 01ec64d2...), which every download checks as well. The SHA-256
# values are the digests of these published files as recorded, identically, by independent
# projects that verify their downloads of them (among others micro-sam's model registry,
# github.com/computational-cell-analytics/micro-sam, and many download scripts). They were not
# recomputed when this table was written (that machine could not reach dl.fbaipublicfiles.com):
# this table is the one place to correct them.
OFFICIAL = {w.file: w for w in (
    OfficialWeights("vit_b", "sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    OfficialWeights("vit_l", "sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    OfficialWeights("vit_h", "sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
)}
ALIASES = {  # short name -> official file
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
    "default": "sam_vit_h_4b8939.pth",
}
HF_IDS = {  # Hugging Face `transformers` SAM repositories -> model type
    "facebook/sam-vit-base": "vit_b",
    "facebook/sam-vit-large": "vit_l",
    "facebook/sam-vit-huge": "vit_h",
}
_NAME_SUFFIX = re.compile(r"^sam_\w+_([0-9a-f]{6})\.pth$")


class WeightsSource(NamedTuple):
    """Where the weights of a model name come from: an official file, or a Hugging Face repository."""

    key: str  # the converted checkpoint's folder name in the cache
    model_type: str
    official: OfficialWeights | None = None
    repo_id: str | None = None


def known_names() -> list[str]:
    return [*ALIASES, *OFFICIAL, *HF_IDS]


def source(name: str) -> WeightsSource:
    """Where the weights of a model name come from; FileNotFoundError (one line, listing the names) otherwise."""
    name = str(name)
    if name in HF_IDS:
        return WeightsSource(name.replace("/", "--"), HF_IDS[name], repo_id=name)
    weights = OFFICIAL.get(ALIASES.get(name, name))
    if weights is None:
        raise FileNotFoundError(
            f"checkpoint not found: {name} is neither a file or folder nor a model name ({', '.join(known_names())})"
        )
    return WeightsSource(weights.file.removesuffix(".pth"), weights.model_type, official=weights)


def official_url(weights: OfficialWeights) -> str:
    return f"{os.environ.get('SAM_JAX_WEIGHTS_URL', OFFICIAL_URL).rstrip('/')}/{weights.file}"


def converted_path(src: WeightsSource) -> Path:
    return cache_dir("checkpoints") / src.key


def download_weights(src: WeightsSource, quiet: bool = False) -> Path:
    """The raw checkpoint file of `src`, downloaded if needed: an official .pth in the cache's
    downloads/ (verified), or the Hugging Face model.safetensors in huggingface_hub's cache."""
    if src.repo_id is not None:
        return _hf_download(src.repo_id, quiet)
    weights = src.official
    digests = {"sha256": weights.sha256}
    suffix = _NAME_SUFFIX.match(weights.file)
    if suffix:
        digests["md5"] = suffix[1]
    return download(
        official_url(weights), cache_dir("downloads") / weights.file, digests, quiet=quiet,
        hint="download it elsewhere and pass its path, or set SAM_JAX_WEIGHTS_URL to a mirror",
    )


def _hf_download(repo_id: str, quiet: bool) -> Path:
    try:  # an optional dependency (the `hub` extra)
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    except ImportError:
        raise ImportError(f"{repo_id}: Hugging Face ids need huggingface_hub: {HUB_HINT}") from None
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not when huggingface_hub was imported
    say(f"fetching {repo_id}/{HF_FILE} from {endpoint or 'the Hugging Face Hub'}", quiet)
    silence = quiet and not are_progress_bars_disabled()
    if silence:
        disable_progress_bars()
    try:
        return Path(hf_hub_download(repo_id, HF_FILE, endpoint=endpoint))
    except (OSError, EntryNotFoundError) as e:  # offline, not found, gated, HTTP errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DownloadError(f"cannot download {repo_id} from the Hugging Face Hub: {first}") from None
    finally:
        if silence:
            enable_progress_bars()
