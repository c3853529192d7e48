"""Independent units of an experiment (a seed, a variant within a seed) side by side on the CPU's cores.

Why processes, not threads: an episode's tensors are small (tens of images through one block), so torch's
second intra-op thread leaves a core mostly idle. Measured on 03's SMAT (2-core AVX512-BF16 CPU, bf16, shots 5):
one seed took 135 s on two threads and 147 s on one, while two seeds in two one-thread processes finished together
in 147 s, 1.85x the throughput. On a 2-core AVX2 CPU in fp32, :func:`~fslib.studies.smat.compare_variants` over 3
seeds (100 meta-training and 10 test episodes per dataset) took 127 s in one process and 75 s in two (1.7x), with
identical results. Threads sharing one model cannot replace processes here: ``functional_call``
swaps a module's parameters in place, and torch's random generator is global.

The workers are *forked* where the platform allows it (Linux): they inherit the loaded model and every cache
(encoded features, the trunk's tokens), so nothing is reloaded and only results travel back. Where it does not
(Windows, macOS; or ``$FSLIB_START_METHOD=spawn``) they are *spawned*: the job, the shared objects and the
precision in force travel to each worker once, through cloudpickle, and caches fill anew there; a unit's result
is the same either way. Objects passed to :func:`share` (a model, a
frozen trunk) are pickled by reference in both directions, so a result that points at them (trained experts
hold their model) arrives pointing at the parent's own objects. Each unit must set its own seeds (the kit's
drivers do), so a unit's result does not depend on which worker ran it or what ran before: the results equal
a one-process run's on one thread.

``$FSLIB_PROCESSES`` sets the number of processes (default: the cores this process may use; not to be confused
with ``$FSLIB_WORKERS``, the DataLoader's decoding workers). ``make reproduce`` and ``make test`` set it to the
cores per notebook they run side by side (1 on a 2-core machine with two notebooks at a time). One process is
also used on a GPU (CUDA does not survive a fork) and under ``torchrun``.
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, Sequence, TypeVar

import cloudpickle
import torch

from fslib import distributed, training
from fslib.progress import tqdm

T = TypeVar("T")
R = TypeVar("R")

_SHARED: dict[int, Any] = {}     # key -> object; the key is the object's id in the parent process
_KEYS: dict[int, int] = {}       # id(object) -> key, in this process (a spawned worker holds copies)
_REDUCED_TYPES: set[type] = set()
_JOB: tuple[Callable, Sequence] | None = None  # what the workers run: inherited when forked, sent when spawned
_IN_WORKER = False  # set in a worker: a unit that maps units itself runs them in order (no nested pools)


def processes() -> int:
    """How many processes :func:`map_units` uses: ``$FSLIB_PROCESSES``, else the cores this process may use."""
    value = os.environ.get("FSLIB_PROCESSES", "")
    if value == "":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"FSLIB_PROCESSES={value!r} must be a positive integer")
    return int(value)


def start_method() -> str:
    """``$FSLIB_START_METHOD``, else ``fork`` where the platform has it safely (Linux), else ``spawn`` (Windows, macOS)."""
    methods = multiprocessing.get_all_start_methods()
    default = "fork" if "fork" in methods and sys.platform != "darwin" else "spawn"
    method = os.environ.get("FSLIB_START_METHOD", default)
    if method not in ("fork", "spawn") or method not in methods:
        raise ValueError(f"FSLIB_START_METHOD={method!r} is not available here; allowed: "
                         f"{', '.join(m for m in ('fork', 'spawn') if m in methods)}")
    return method


def share(*objects: Any) -> None:
    """Pickle ``objects`` by reference between this process and its workers (see the module docstring)."""
    for obj in objects:
        _SHARED[id(obj)] = obj
        _KEYS[id(obj)] = id(obj)
        share_type(obj)


def _reduce_shared(obj: Any):
    key = _KEYS.get(id(obj))
    if key is not None and _SHARED.get(key) is obj:
        return _shared_object, (key,)
    return obj.__reduce_ex__(pickle.DEFAULT_PROTOCOL)  # not shared: pickled by value, as without this reducer


def _shared_object(key: int) -> Any:
    return _SHARED[key]


def _start_worker(threads: int, payload: bytes | None = None) -> None:
    """A worker's set-up. Spawned, it receives the job, the shared objects (under the parent's keys, in one pickle
    with the job, so a job that holds a shared object holds the same copy) and the precision in force."""
    global _IN_WORKER, _JOB
    _IN_WORKER = True
    torch.set_num_threads(threads)  # before any parallel region: an OpenMP pool does not survive a fork
    if payload is not None:
        shared, _JOB, precision = cloudpickle.loads(payload)
        for key, obj in shared.items():
            _SHARED[key], _KEYS[id(obj)] = obj, key
            share_type(obj)
        training.set_precision(precision)


def rebuilt(cls: type, args: tuple, kwargs: dict, state: dict, attributes: dict, training: bool) -> torch.nn.Module:
    """A module pickled as its constructor's arguments, its ``state_dict`` and plain attributes (a module's
    ``__reduce__`` returns ``rebuilt`` with them), in the training mode it had."""
    module = cls(*args, **kwargs)
    module.load_state_dict(state)
    module.__dict__.update(attributes)
    return module.train(training)


def share_type(obj: Any) -> None:
    if type(obj) not in _REDUCED_TYPES:
        ForkingPickler.register(type(obj), _reduce_shared)
        _REDUCED_TYPES.add(type(obj))


def _run_unit(index: int) -> tuple[int, Any]:
    fn, units = _JOB
    return index, fn(units[index])


def map_units(fn: Callable[[T], R], units: Sequence[T], desc: str = "units", progress: bool = True) -> list[R]:
    """``[fn(u) for u in units]``, computed by :func:`processes` forked processes on one thread each when more than
    one is available (in the order given, so put the longest units first), with a progress bar over units. Called
    inside a unit (a validation search within one seed's fit), it runs in that worker, in order.

    ``fn`` may be any callable, a closure included: forked workers inherit it, spawned ones receive it through
    cloudpickle. Its results must pickle."""
    global _JOB
    count = min(processes(), len(units))
    if count <= 1 or _IN_WORKER or torch.cuda.is_initialized() or distributed.rank_and_world()[1] > 1:
        return [fn(unit) for unit in tqdm(units, desc=desc, disable=not progress, leave=False)]
    _JOB = (fn, units)
    method = start_method()
    payload = cloudpickle.dumps((_SHARED, _JOB, training.current_precision())) if method == "spawn" else None
    results: list[Any] = [None] * len(units)
    try:
        with multiprocessing.get_context(method).Pool(count, _start_worker, (1, payload)) as pool:
            finished = pool.imap_unordered(_run_unit, range(len(units)))
            for index, result in tqdm(finished, total=len(units), desc=desc, disable=not progress, leave=False):
                results[index] = result
    finally:
        _JOB = None
    return results
