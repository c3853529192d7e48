"""Where a run writes: ``runs/`` (executed notebooks, claim records, figures). The tracked ``figures/`` folder
holds the committed runs' figures; only ``python -m fslib.report --record`` writes there."""
from __future__ import annotations

import os
from pathlib import Path

import fslib


def checkout_dir() -> Path:
    """The source checkout holding fslib, or the current folder for an installed package."""
    checkout = Path(fslib.__file__).resolve().parents[1]
    return checkout if (checkout / "pyproject.toml").exists() else Path.cwd()


def project_dir(kind: str) -> Path:
    """``runs`` or ``figures``: ``$FSLIB_<KIND>`` if set, else ``runs/`` beside the checkout (figures in
    ``runs/figures/``), so a run never rewrites tracked files. The tests point both at a temporary folder."""
    env = os.environ.get(f"FSLIB_{kind.upper()}")
    if env:
        return Path(env)
    return checkout_dir() / "runs" / ("figures" if kind == "figures" else "")
