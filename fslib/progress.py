"""Progress bars that read well live and leave nothing stale in a saved notebook.

``$FSLIB_PROGRESS`` picks the kind:

- ``auto`` (default): tqdm's widget bar in a Jupyter kernel, text in a terminal (``tqdm.auto``);
- ``text``: plain text bars that appear only once a loop has run ``TEXT_INTERVAL_S`` seconds and redraw at
  most that often. ``make reproduce`` and ``make test`` set it: a widget bar saved by papermill has no
  widget state behind it and reopens in JupyterLab as a frozen "0%", while a short loop leaves no text
  at all and a long one a few real snapshots, erased when it finishes (``leave=False``);
- ``off``: no bars.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

from tqdm import tqdm as text_tqdm
from tqdm.auto import tqdm as auto_tqdm

KINDS = ("auto", "text", "off")
TEXT_INTERVAL_S = 30.0  # a saved notebook keeps every redraw of a text bar: bound their number


def progress_kind() -> str:
    kind = os.environ.get("FSLIB_PROGRESS", "auto").lower()
    if kind not in KINDS:
        raise ValueError(f"FSLIB_PROGRESS={kind!r} is not a progress kind; allowed: {', '.join(KINDS)}")
    return kind


def tqdm(iterable: Iterable | None = None, **options: Any):
    """``tqdm(iterable, **options)`` of the kind ``$FSLIB_PROGRESS`` asks for (see the module docstring)."""
    kind = progress_kind()
    if kind == "off":
        return text_tqdm(iterable, **{**options, "disable": True})
    if kind == "text":
        return text_tqdm(iterable, **{"mininterval": TEXT_INTERVAL_S, "delay": TEXT_INTERVAL_S, **options})
    return auto_tqdm(iterable, **options)
