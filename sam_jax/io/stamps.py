"""Output stamps (host side): what produced an output, so that a rerun can tell finished work
from work done with other settings, and sam-jax's own outputs from anything else.

A record is a JSON object stating the producer, the output format, the settings and the
model's content digest; it holds no timestamps, host names or process ids, and `record_text`
writes it canonically, so the same work always writes the same bytes.

A command that writes one output per input into a folder (`sam-jax amg`) stamps each output
`<folder>/<name>` with `<folder>/.sam-jax/<name>.json`:

    {"record": {...}, "input_sha256": "...", "output_sha256": "..."}

The stamp is written just before the output takes its name, so a stamp proves that sam-jax wrote
(or was writing) that name, and its digests tell whether the output there is the one it describes,
made from the same input by the same work (`inspect`).
"""

from __future__ import annotations

import json
from pathlib import Path

from .outputs import atomic_file, tree_digest

STAMP_DIR = ".sam-jax"

ABSENT = "absent"  # no output: to be made
DONE = "done"  # the output of this very work
OTHER_WORK = "other work"  # sam-jax's output, made with other settings, model or input
CHANGED = "changed"  # sam-jax wrote this name, but the output there is not what it wrote
FOREIGN = "foreign"  # not sam-jax's: never replaced


def record_text(record: dict) -> str:
    """The canonical JSON of a record (sorted keys): the same record gives the same bytes."""
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


def stamp_path(output: Path) -> Path:
    return output.parent / STAMP_DIR / f"{output.name}.json"


def read_stamp(output: Path) -> dict | None:
    try:
        stamp = json.loads(stamp_path(output).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return stamp if isinstance(stamp, dict) else None


def inspect(output: Path, record: dict, input_sha256: str) -> tuple[str, dict | None]:
    """(one of ABSENT, DONE, OTHER_WORK, CHANGED, FOREIGN; the output's stamp or None)."""
    if not (output.exists() or output.is_symlink()):
        return ABSENT, None
    stamp = read_stamp(output)
    if stamp is None or output.is_symlink():
        return FOREIGN, None
    if stamp.get("output_sha256") != tree_digest(output):
        return CHANGED, stamp
    if stamp.get("record") != record or stamp.get("input_sha256") != input_sha256:
        return OTHER_WORK, stamp
    return DONE, stamp


def write_stamp(output: Path, record: dict, input_sha256: str, content: Path) -> None:
    """Stamps `output` as made by `record` from the input of that digest; `content` is the
    finished output under its temporary name (call this just before the rename)."""
    stamp = {"record": record, "input_sha256": input_sha256, "output_sha256": tree_digest(content)}
    with atomic_file(stamp_path(output)) as tmp:
        tmp.write_text(record_text(stamp))


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """`key: old -> new` for every field in which two records differ (nested ones dotted)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r:.40} -> {b!r:.40}")
    return out
