"""Tests for the torch-free, code-free `torch.save` reader (sam_jax.convert.torch_pickle)."""

from __future__ import annotations

import inspect
import io
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch

from sam_jax.convert.torch_pickle import CheckpointFormatError, UnsafeCheckpointError, load_torch_state_dict

FORMATS = ["zip", "legacy"]


def _save(obj, path: Path, fmt: str) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def _assert_same(arrays: dict[str, np.ndarray], tensors: dict[str, torch.Tensor]) -> None:
    """Exact equality of keys (in order), dtype, shape and every value."""
    assert list(arrays) == list(tensors)
    for key, t in tensors.items():
        a, t = arrays[key], t.detach()
        assert isinstance(a, np.ndarray) and a.flags.c_contiguous and a.flags.owndata, key
        assert a.shape == tuple(t.shape), key
        if t.dtype == torch.bfloat16:
            assert a.dtype == ml_dtypes.bfloat16, key
            np.testing.assert_array_equal(a.astype(np.float32), t.float().numpy(), err_msg=key)
        else:
            assert a.dtype == t.numpy().dtype, key
            np.testing.assert_array_equal(a, t.numpy(), err_msg=key)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 7, generator=g)  # shared by the next three entries
    return {
        "f32": torch.randn(3, 4, 5, generator=g),
        "f16": torch.randn(4, 3, generator=g).half(),
        "bf16": torch.randn(2, 9, generator=g).bfloat16(),
        "i64": torch.randint(-(2**40), 2**40, (5,), generator=g),
        "bool": torch.rand(3, 3, generator=g) > 0.5,
        "base": base,
        "transposed": base.t(),  # non-contiguous view, strides (1, 7)
        "slice": base[2:5, 3:],  # storage offset 17, strides (7, 1)
        "strided": base[::2, 1::3],  # step slicing: strides (14, 3)
        "bf16_t": torch.randn(3, 5, generator=g).bfloat16().t(),
        "scalar": torch.tensor(3.25),
        "scalar_i64": torch.tensor(7),
        "empty": torch.zeros(0, 4),
        "param": torch.nn.Parameter(torch.randn(2, 2, generator=g)),
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_dtypes_views_and_shared_storage(tmp_path, fmt):
    tensors = _tensors()
    arrays = load_torch_state_dict(_save(tensors, tmp_path / "t.pth", fmt))
    _assert_same(arrays, tensors)
    assert arrays["transposed"].shape == (7, 6) and arrays["slice"].shape == (3, 4)
    assert arrays["scalar"].shape == () and arrays["scalar"].dtype == np.float32
    # Shared storage comes back as independent copies, not aliases of one buffer.
    arrays["base"][0, 0] = 1e6
    assert arrays["transposed"][0, 0] == tensors["base"][0, 0].item()


@pytest.mark.parametrize("fmt", FORMATS)
def test_real_module_state_dict(tmp_path, fmt):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.LayerNorm(6), torch.nn.Linear(6, 5)
    )
    state = model.state_dict()
    assert isinstance(state, OrderedDict) and hasattr(state, "_metadata")
    arrays = load_torch_state_dict(_save(state, tmp_path / "m.pth", fmt))
    _assert_same(arrays, state)
    assert arrays["1.num_batches_tracked"].dtype == np.int64 and arrays["1.num_batches_tracked"].shape == ()
    assert type(arrays) is dict


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_wrapped_state_dict_is_unwrapped(tmp_path, wrapper):
    state = torch.nn.Linear(4, 3).state_dict()
    arrays = load_torch_state_dict(_save({wrapper: state, "epoch": 12}, tmp_path / "w.pth", "zip"))
    _assert_same(arrays, state)


@pytest.mark.parametrize(
    ("obj", "key"),
    [
        ({"w": torch.ones(2), "step": 3}, "'step'"),
        ({"w": torch.ones(2), "sub": {"b": torch.ones(1)}}, "'sub'"),
        ({"model": {"enc": {"w": torch.ones(1)}}}, "'enc'"),
    ],
)
def test_non_tensor_values_are_errors_naming_the_key(tmp_path, obj, key):
    path = _save(obj, tmp_path / "bad.pth", "zip")
    with pytest.raises(CheckpointFormatError) as info:
        load_torch_state_dict(path)
    assert key in str(info.value) and str(path) in str(info.value)


# --- big-endian storages ---------------------------------------------------------------------


def _rewrite_zip(src: Path, dst: Path, edit) -> None:
    """Copies a torch zip checkpoint entry by entry; `edit(name, data)` returns the new bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, edit(info.filename, zin.read(info.filename)))


def test_big_endian_byteorder_record(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "h": torch.randn(4).bfloat16()}
    src = _save(tensors, tmp_path / "le.pth", "zip")
    itemsize = {"0": 4, "1": 8, "2": 2}

    def to_big(name, data):
        if name.endswith("/byteorder"):
            return b"big"
        if "/data/" in name:
            return np.frombuffer(data, np.dtype(f"u{itemsize[name.rsplit('/', 1)[1]]}")).byteswap().tobytes()
        return data

    dst = tmp_path / "be.pth"
    _rewrite_zip(src, dst, to_big)
    _assert_same(load_torch_state_dict(dst), torch.load(dst))  # torch swaps back too
    _assert_same(load_torch_state_dict(dst), tensors)


# --- malicious pickles -----------------------------------------------------------------------


class _Payload:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


def _recorded_global(data: bytes) -> str:
    """The `module.name` a pickle records for its first global (what the error must name)."""
    import pickletools

    strings = []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            return arg.replace(" ", ".")
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        if op.name == "STACK_GLOBAL":
            return ".".join(strings[-2:])
    raise AssertionError("no global in pickle")


def _torch_like_zip(tmp_path: Path, pkl: bytes, name: str) -> Path:
    """A real torch.save zip with its data.pkl replaced by `pkl` (same prefix, records, layout)."""
    real = _save({"w": torch.ones(2)}, tmp_path / "real.pth", "zip")
    dst = tmp_path / name
    _rewrite_zip(real, dst, lambda n, d: pkl if n.endswith("/data.pkl") else d)
    return dst


def _legacy_file(path: Path, pkl: bytes) -> Path:
    """The legacy torch.save layout around `pkl`: magic, protocol, sys_info, pkl, key list."""
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
        f.write(pkl)
        pickle.dump([], f, protocol=2)
    return path


def _check_refused(path: Path, sentinel: Path, expected: str) -> None:
    with pytest.raises(UnsafeCheckpointError) as info:
        load_torch_state_dict(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "refusing to load" in msg
    assert expected in msg, msg
    assert not sentinel.exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_os_system_payload_is_refused_and_not_run(tmp_path, protocol):
    sentinel = tmp_path / "pwned"
    pkl = pickle.dumps({"x": _Payload(os.system, f"touch {sentinel}")}, protocol=protocol)
    recorded = _recorded_global(pkl)
    assert recorded in ("posix.system", "os.system", "nt.system")  # posix.system on Linux
    path = _torch_like_zip(tmp_path, pkl, "evil.pth")
    _check_refused(path, sentinel, recorded)

    # Control: the payload is live, so the refusal above is what kept the sentinel away.
    control = tmp_path / "PWNED"  # same length: the pickle's string lengths stay valid
    pickle.loads(pkl.replace(str(sentinel).encode(), str(control).encode()))
    assert control.exists()


def test_builtins_eval_payload_is_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    code = f"open({str(sentinel)!r}, 'w').close()"
    pkl = pickle.dumps(_Payload(eval, code), protocol=2)  # protocol 2 records __builtin__.eval
    assert _recorded_global(pkl) == "__builtin__.eval"
    path = _torch_like_zip(tmp_path, pkl, "evil.pth")
    _check_refused(path, sentinel, "builtins.eval")  # reported under its Python 3 name

    pkl4 = pickle.dumps(_Payload(eval, code), protocol=4)
    assert _recorded_global(pkl4) == "builtins.eval"
    _check_refused(_torch_like_zip(tmp_path, pkl4, "evil4.pth"), sentinel, "builtins.eval")


def test_legacy_format_payload_is_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    pkl = pickle.dumps({"w": _Payload(os.system, f"touch {sentinel}")}, protocol=2)
    path = _legacy_file(tmp_path / "evil_legacy.pth", pkl)
    _check_refused(path, sentinel, _recorded_global(pkl))


def test_other_torch_globals_are_refused(tmp_path):
    # A real torch global that is not needed for a state dict (it rebuilds arbitrary subclasses).
    path = _save({"w": torch.ones(2).as_subclass(torch.nn.Buffer)}, tmp_path / "sub.pth", "zip")
    with pytest.raises(UnsafeCheckpointError, match=r"torch\._tensor\._rebuild_from_type_v2"):
        load_torch_state_dict(path)


def test_malformed_persistent_id_is_format_error(tmp_path):
    class PidPickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", "not-a-storage-type", "0", "cpu", 2) if obj == "marker" else None

    buf = io.BytesIO()
    PidPickler(buf, protocol=2).dump({"w": "marker"})
    path = _torch_like_zip(tmp_path, buf.getvalue(), "pid.pth")
    with pytest.raises(CheckpointFormatError, match="malformed storage persistent id") as info:
        load_torch_state_dict(path)
    assert str(path) in str(info.value)


# --- torch is not needed -----------------------------------------------------------------------


def _checksum(arrays) -> str:
    total = 0.0
    for key in sorted(arrays):
        a = np.asarray(arrays[key]).astype(np.float64)
        total += float((a * (1 + np.arange(a.size).reshape(a.shape))).sum()) + len(key)
    return repr(total)


@pytest.mark.parametrize("fmt", FORMATS)
def test_loads_with_torch_unimportable(tmp_path, fmt):
    tensors = _tensors()
    path = _save(tensors, tmp_path / "t.pth", fmt)
    script = textwrap.dedent(
        """
        import sys

        class NoTorch:  # makes `import torch` (and any torch submodule) fail
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")

        sys.meta_path.insert(0, NoTorch())
        sys.modules.pop("torch", None)
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch is still importable")

        import numpy as np
        from sam_jax.convert.torch_pickle import load_torch_state_dict
        """
    ) + inspect.getsource(_checksum) + f"\nprint(_checksum(load_torch_state_dict({str(path)!r})))\n"
    script += "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    reference = {k: (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()).numpy() for k, v in tensors.items()}
    assert out.stdout.strip().splitlines()[-1] == _checksum(reference)


# --- malformed files ---------------------------------------------------------------------------


def test_random_bytes_is_format_error(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(b"\x01\x02" + np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointFormatError, match="not a PyTorch checkpoint") as info:
        load_torch_state_dict(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file_is_format_error(tmp_path, fmt):
    path = _save({"w": torch.randn(64, 64)}, tmp_path / "t.pth", fmt)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 30):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointFormatError, match="truncated") as info:
            load_torch_state_dict(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_short_storage_record_is_format_error(tmp_path):
    src = _save({"w": torch.randn(8, 8)}, tmp_path / "t.pth", "zip")
    dst = tmp_path / "short.pth"
    _rewrite_zip(src, dst, lambda n, d: d[:100] if "/data/" in n else d)
    with pytest.raises(CheckpointFormatError, match="holds 100 bytes, expected 256") as info:
        load_torch_state_dict(dst)
    assert str(dst) in str(info.value)


def test_unsupported_dtype_is_format_error(tmp_path):
    with warnings.catch_warnings():  # "ComplexHalf support is experimental"
        warnings.simplefilter("ignore")
        path = _save({"q": torch.zeros(2, dtype=torch.complex32)}, tmp_path / "c32.pth", "zip")
    with pytest.raises(CheckpointFormatError, match=r"unsupported dtype torch\.complex32"):
        load_torch_state_dict(path)


def test_float8_and_uint16_round_trip(tmp_path):
    tensors = {"f8": torch.randn(4, 3).to(torch.float8_e4m3fn), "u16": torch.arange(6).reshape(2, 3).to(torch.uint16)}
    arrays = load_torch_state_dict(_save(tensors, tmp_path / "f8.pth", "zip"))
    assert arrays["f8"].dtype == ml_dtypes.float8_e4m3fn and arrays["u16"].dtype == np.uint16
    np.testing.assert_array_equal(arrays["f8"].astype(np.float32), tensors["f8"].float().numpy())
    np.testing.assert_array_equal(arrays["u16"], tensors["u16"].numpy())


# --- no state poisoning ------------------------------------------------------------------------


def _unicode(text: str) -> bytes:
    return b"X" + len(text).to_bytes(4, "little") + text.encode()


def _build_attr(module: str, name: str, attr: str, value: bytes) -> bytes:
    """A pickle that applies BUILD (None, {attr: value}) to the global module.name: on a plain
    function, the unpickler's setattr would change it for every later load."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"N}" + _unicode(attr) + value + b"s\x86b."


_POISONED_DEFAULTS = b"}" + _unicode("poison") + b"K\x01s\x85"  # ({"poison": 1},)


@pytest.mark.parametrize(("module", "name", "attr", "value"), [
    ("collections", "OrderedDict", "__defaults__", _POISONED_DEFAULTS),  # every state dict would gain a key
    ("torch._utils", "_rebuild_tensor_v2", "__defaults__", b"K\x01\x85"),  # metadata=1: every tensor refused
    ("torch", "FloatStorage", "dtype", b"N"),
    ("torch", "float8_e4m3fn", "dtype", b"N"),
])
def test_pickle_cannot_alter_the_stand_ins(tmp_path, module, name, attr, value):
    tensors = torch.nn.Linear(2, 3).state_dict()  # an OrderedDict, as every module's state dict
    good = _save(tensors, tmp_path / "good.pth", "zip")
    _assert_same(load_torch_state_dict(good), tensors)
    hostile = _torch_like_zip(tmp_path, _build_attr(module, name, attr, value), "hostile.pth")
    with pytest.raises(CheckpointFormatError) as info:
        load_torch_state_dict(hostile)
    assert "\n" not in str(info.value)
    _assert_same(load_torch_state_dict(good), tensors)  # the same valid load, after the hostile one
