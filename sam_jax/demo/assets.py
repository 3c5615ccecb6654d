"""The web demo's browser runtime: onnxruntime-web, at the version and digest pinned by
`web/package-lock.json`.

It is found in `web/node_modules` (a source checkout after `npm ci`) or in the cache
(`$SAM_JAX_CACHE/web/onnxruntime-web-<version>/`), where `install` puts it on the first
`sam-jax demo` after a plain `pip install`: the pinned npm tarball, downloaded from the registry
(resumable), checked against the lock file's sha512 integrity, and only the files the page loads
unpacked. No npm needed; after that the demo works offline.

Environment: SAM_JAX_NPM_REGISTRY (else npm's own npm_config_registry, else the public registry).
"""

from __future__ import annotations

import base64
import json
import os
import tarfile
from pathlib import Path
from typing import NamedTuple

from ..convert.download import download
from ..io.outputs import atomic_dir
from ..runtime.progress import say
from ..runtime.paths import cache_dir

PACKAGE = "onnxruntime-web"
WEB_DIR = Path(__file__).resolve().parent / "web"
NODE_MODULES_DIST = WEB_DIR / "node_modules" / PACKAGE / "dist"
ENTRY = "ort.wasm.min.mjs"  # the WebAssembly-only build that app.js imports
FILES = (ENTRY, "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")  # what that build loads
REGISTRY = "https://registry.npmjs.org"


class Pin(NamedTuple):
    version: str
    integrity: str  # npm's "sha512-<base64>"


def pin() -> Pin:
    """The onnxruntime-web version and integrity that web/package-lock.json pins."""
    lock = json.loads((WEB_DIR / "package-lock.json").read_text())
    entry = lock["packages"][f"node_modules/{PACKAGE}"]
    return Pin(entry["version"], entry["integrity"])


def installed_dir(p: Pin | None = None) -> Path:
    """Where `install` puts the pinned version in the cache (its `dist/` holds the files)."""
    return cache_dir("web") / f"{PACKAGE}-{(p or pin()).version}"


def find_dist() -> Path | None:
    """The folder with onnxruntime-web's dist files: node_modules first, then the cache; None if neither."""
    for dist in (NODE_MODULES_DIST, installed_dir() / "dist"):
        if all((dist / f).is_file() for f in FILES):
            return dist
    return None


def registry() -> str:
    return (os.environ.get("SAM_JAX_NPM_REGISTRY") or os.environ.get("npm_config_registry") or REGISTRY).rstrip("/")


def install(quiet: bool = False) -> Path:
    """Downloads the pinned onnxruntime-web into the cache; returns its dist folder."""
    p = pin()
    algorithm, _, b64 = p.integrity.partition("-")
    url = f"{registry()}/{PACKAGE}/-/{PACKAGE}-{p.version}.tgz"
    say(f"installing {PACKAGE} {p.version} for the web demo (once) into {installed_dir(p)}", quiet)
    tarball = download(
        url, cache_dir("downloads") / f"{PACKAGE}-{p.version}.tgz", {algorithm: base64.b64decode(b64).hex()},
        quiet=quiet, hint=f"the web demo needs it once; or run `npm ci` in {WEB_DIR}",
    )
    wanted = {f"package/dist/{f}": f"dist/{f}" for f in FILES} | {"package/package.json": "package.json"}
    with atomic_dir(installed_dir(p), overwrite=True) as tmp, tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            if member.name in wanted and member.isfile():  # regular files under fixed names only
                out = tmp / wanted[member.name]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())
        missing = [f for f in wanted.values() if not (tmp / f).is_file()]
        if missing:
            raise ValueError(f"{url} lacks {', '.join(missing)}")
    tarball.unlink()
    return installed_dir(p) / "dist"
