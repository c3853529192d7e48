"""Where a run writes: ``runs/`` (executed notebooks, claim records) and ``figures/``."""
from __future__ import annotations

import os
from pathlib import Path

import fslib


def project_dir(kind: str) -> Path:
    """``runs``/``figures`` folder: ``$FSLIB_<KIND>`` if set, else beside the source checkout, else cwd.

    The tests point both at a temporary folder, so a test run never rewrites tracked figures."""
    env = os.environ.get(f"FSLIB_{kind.upper()}")
    if env:
        return Path(env)
    checkout = Path(fslib.__file__).resolve().parents[1]
    return (checkout if (checkout / "pyproject.toml").exists() else Path.cwd()) / kind
