"""Where arrays live: the one reading of "a device" shared by `Sam.to`, the predictor and the CLI."""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding, SingleDeviceSharding

PLATFORM_ALIASES = {"cuda": "gpu", "rocm": "gpu"}


def platform_devices(platform: str) -> list[jax.Device]:
    """The local devices of `platform` ("cpu", "gpu", "cuda", "tpu"), or ValueError naming what exists."""
    name = PLATFORM_ALIASES.get(platform, platform)
    try:
        devices = jax.local_devices(backend=name)
    except RuntimeError:
        devices = []
    if not devices:
        found = ", ".join(sorted({d.platform for d in jax.devices()}))
        raise ValueError(f"no {platform} device here (JAX sees: {found})")
    return devices


def as_device(device: str | jax.Device) -> jax.Device:
    """A jax.Device from a device or a "platform[:index]" string (torch style: "cuda" is "cuda:0")."""
    if isinstance(device, jax.Device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"expected a jax.Device or a platform name, got {type(device).__name__}")
    platform, _, index = device.partition(":")
    devices = platform_devices(platform.lower())
    if not index:
        return devices[0]
    if not index.isdigit() or int(index) >= len(devices):
        raise ValueError(f"{device!r}: {platform} has devices 0..{len(devices) - 1}")
    return devices[int(index)]


def as_sharding(target) -> Sharding:
    """A Sharding for `target`: a device or platform name (that device), a Mesh (replicated over
    it), or a Sharding (as is). None means JAX's default device."""
    if target is None:
        return SingleDeviceSharding(jax.devices()[0] if jax.config.jax_default_device is None else as_device(jax.config.jax_default_device))
    if isinstance(target, Sharding):
        return target
    if isinstance(target, Mesh):
        return NamedSharding(target, PartitionSpec())
    return SingleDeviceSharding(as_device(target))
