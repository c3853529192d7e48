"""Notebook helpers for teaching: the method's own code beside its equation, and checks for exercises.

The code shown is read from fslib when the cell runs (``inspect.getsource``), never copied into the
notebook, so what a student reads is what the experiments below it execute. An "Implement" exercise
asks for a small function whose reference lives in fslib; :func:`check` compares the student's
version with it on seeded random inputs (:data:`CASES`).
"""
from __future__ import annotations

import inspect
import math
import textwrap
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from IPython.display import Code

from fslib.methods import apex, clip_cite, llu, mamf, smat
from fslib.models import ensemble_prompts
from fslib.studies import compare


def show_code(*objects: Any) -> Code:
    """The source of functions, classes or methods, highlighted in Jupyter (plain text elsewhere), with a
    comment naming the module each one lives in."""
    if not objects:
        raise ValueError("show_code needs at least one function, class or method")
    parts = []
    for obj in objects:
        target = inspect.unwrap(getattr(obj, "__func__", obj))
        try:
            source = textwrap.dedent(inspect.getsource(target))
        except TypeError as error:
            raise TypeError(f"show_code shows functions, classes or methods, not {type(obj).__name__} ({obj!r})") from error
        parts.append(f"# {target.__module__}.{target.__qualname__}\n{source}")
    return Code("\n\n".join(parts), language="python")


def _unit(g: torch.Generator, *shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


# Per reference function: seeded argument tuples that cover its cases (edges included).
CASES: dict[Callable, Callable[[torch.Generator], list[tuple]]] = {
    ensemble_prompts: lambda g: [(_unit(g, 5, 3, 8),), (_unit(g, 2, 1, 4),)],
    mamf.task_count: lambda g: [(2, 10), (5, 10), (10, 10), (3, 47, 0.01), (2, 3, 0.5)],
    apex.class_distances: lambda g: [(_unit(g, 4, 8), _unit(g, 3, 8)), (lambda same: (same, same))(_unit(g, 2, 8))],
    smat.hard_concrete: lambda g: [(3 * torch.randn(64, generator=g), True), (3 * torch.randn(64, generator=g), False)],
    llu.locality_weight: lambda g: [(torch.randn(10, 8, generator=g), _unit(g, 3, 8), 0.5, 10.0),
                                    (torch.randn(6, 8, generator=g), _unit(g, 1, 8), 1.0, 0.0)],
    clip_cite.vld_loss: lambda g: [(torch.randn(6, 6, generator=g), torch.randn(6, 6, generator=g)),
                                   (10 * torch.randn(4, 9, generator=g), 10 * torch.randn(4, 9, generator=g))],
    compare.interquartile_mean: lambda g: [(torch.rand(n, generator=g).tolist(),) for n in (4, 7, 10, 13)],
}


def _same(got: Any, expected: Any) -> bool:
    if isinstance(expected, tuple):
        return isinstance(got, tuple) and len(got) == len(expected) and all(map(_same, got, expected))
    if isinstance(expected, torch.Tensor):
        return isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.allclose(got.float(), expected.float(), atol=1e-5)
    if isinstance(expected, float):
        return isinstance(got, (int, float)) and math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12)
    return got == expected


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}" if value.numel() > 4 else repr(value)
    return repr(value)


def check(student: Callable, reference: Callable, seed: int = 0) -> None:
    """Compare ``student`` with fslib's ``reference`` on the seeded cases of :data:`CASES`.

    Prints one line: that every case matches, or (without failing the notebook, so the student version
    runs end to end) that the exercise still raises NotImplementedError. Raises AssertionError naming
    the first case that differs.
    """
    if reference not in CASES:
        known = ", ".join(f"{f.__module__}.{f.__name__}" for f in CASES)
        raise ValueError(f"no exercise checks {reference.__module__}.{reference.__name__}; exercises: {known}")
    cases = CASES[reference](torch.Generator().manual_seed(seed))
    for number, args in enumerate(cases, 1):
        try:
            got = student(*args)
        except NotImplementedError:
            print(f"{student.__name__}: not implemented yet; fill in the function above and run this cell again")
            return
        expected = reference(*args)
        if not _same(got, expected):
            raise AssertionError(f"{student.__name__}, case {number} of {len(cases)}, arguments "
                                 f"({', '.join(map(_describe, args))}): expected {expected!r}, got {got!r}")
    print(f"✓ {student.__name__} matches {reference.__module__}.{reference.__name__} on all {len(cases)} cases")


_IMPORTED_AT = time.monotonic()


def elapsed_minutes() -> float:
    """Minutes since this kernel imported fslib.teaching (each notebook's first cell does): the run's wall time."""
    return (time.monotonic() - _IMPORTED_AT) / 60
