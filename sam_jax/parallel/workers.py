"""Many local devices for work that comes in independent items (images to segment): one worker
thread per device, each with its own copy of the model's parameters, taking items from a shared
queue. Each item runs whole on one device, as it would alone, so the results are exactly the
one-device results; JAX releases the GIL while a device computes, so the devices work at once.

The simpler alternative, one sharded program over a mesh, would need every item in a batch to
have the same shapes (AMG's crops and masks differ per image) and would move each image's masks
between devices; a queue also balances images of different cost by itself.

Each device compiles its own copy of the programs on first use (an XLA executable is built for
its device): once per device and shape, not per item.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import jax
from flax import nnx

T, R, M = TypeVar("T"), TypeVar("R"), TypeVar("M", bound=nnx.Module)

_FINISHED = object()  # a worker's last message


def replicate(model: M, devices: Sequence[jax.Device]) -> list[M]:
    """One copy of `model` per device, its parameters placed there once (the model itself is
    left where it is; a copy on the device that already holds it shares its arrays)."""
    graphdef, state = nnx.split(model)
    return [nnx.merge(graphdef, jax.device_put(state, device)) for device in devices]


def run_on_devices(work: Callable[[int, T], R], items: Iterable[T], devices: Sequence[jax.Device]) -> Iterator[tuple[T, R]]:
    """Calls `work(k, item)` for every item, in worker k's thread with `devices[k]` as JAX's
    default device; yields (item, result) in the calling thread as each finishes (in no fixed
    order). Items are handed out in their order, one at a time, to whichever worker is free.

    An exception raised by `work` (or Ctrl-C in the caller) stops the hand-out: the items under
    way finish, then it is raised here. With one device everything runs in the calling thread."""
    items = list(items)
    if len(devices) == 1 or len(items) <= 1:
        with jax.default_device(devices[0]):
            for item in items:
                yield item, work(0, item)
        return
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for item in items:
        todo.put(item)
    done: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    def loop(k: int) -> None:
        try:
            with jax.default_device(devices[k]):  # thread-local: uncommitted arrays of this worker go there
                while not stop.is_set():
                    try:
                        item = todo.get_nowait()
                    except queue.Empty:
                        break
                    done.put((item, work(k, item)))
        except BaseException as e:  # handed to the caller, who raises it
            stop.set()
            done.put(e)
        finally:
            done.put(_FINISHED)

    n = min(len(devices), len(items))
    threads = [threading.Thread(target=loop, args=(k,), name=f"sam-jax device {k}", daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    running, error = n, None
    try:
        while running:
            message = done.get()
            if message is _FINISHED:
                running -= 1
            elif isinstance(message, BaseException):
                error = error or message
            else:  # also after an error: these outputs are done, and said so
                yield message
        if error is not None:
            raise error
    finally:
        stop.set()  # also when the caller stops early: no new items; those under way finish
        for t in threads:
            t.join()
