"""Notebook helpers for teaching: the method's own code, shown where the notebook states its equation.

The code shown is read from fslib when the cell runs (``inspect.getsource``), never copied into the
notebook, so what a student reads is what the experiments below it execute.
"""
from __future__ import annotations

import inspect
import textwrap
from typing import Any

from IPython.display import Code


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
