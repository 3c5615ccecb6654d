"""First-call (compilation) time of a fresh process, without and then with a warm persistent
XLA compilation cache: the second process must skip compiling.

    python -m benchmarks.compile_cache [--model vit_b]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
import jax, numpy as np
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
import sam_jax
p = sam_jax.SamPredictor(sam_jax.build_sam_from_config(sys.argv[2]))
img = np.zeros((480, 640, 3), np.uint8)
out = {}
for name, fn in [("embed", lambda: (p.set_image(img), p.features.block_until_ready())),
                 ("predict", lambda: p.predict(np.array([[10.0, 20.0]]), np.array([1])))]:
    t = time.perf_counter(); fn(); first = time.perf_counter() - t
    t = time.perf_counter(); fn(); again = time.perf_counter() - t
    out[name] = {"first": first, "steady": again, "compile": first - again}
print(json.dumps(out))
"""


def measure(model: str) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        runs = []
        for _ in range(2):
            r = subprocess.run([sys.executable, "-c", CHILD, cache, model], capture_output=True, text=True, check=True)
            runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return {"cold": runs[0], "warm_cache": runs[1]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="vit_b")
    result = measure(ap.parse_args(argv).model)
    for phase in ("cold", "warm_cache"):
        for name, t in result[phase].items():
            print(f"{phase:10s} {name:8s} first call {t['first']:.2f} s, steady {t['steady']:.2f} s, compile {t['compile']:.2f} s")


if __name__ == "__main__":
    main()
