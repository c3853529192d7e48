"""The two scales every notebook runs at: one code path, two sizes.

* ``"paper"`` (the default) is the powered protocol: enough seeds, tasks and epochs for the claims to be
  decided where the paper's situation is staged. It takes minutes to an hour per notebook on a 2-core CPU
  (``docs/performance.md``).
* ``"lesson"`` is the same code at the size a class can run: about 3 minutes per notebook on 2 cores in fp32.
  Fewer datasets, tasks, epochs and grid points; its verdicts are labelled as the lesson's, and each is shown
  beside the committed paper-scale verdict of the same claim (:mod:`fslib.records`).

A notebook's parameters cell sets the scale-dependent parameters to ``None``; :func:`fslib.params.validate`
fills them from :data:`PRESETS` for the chosen scale, and a value given explicitly (``-p seeds 1,2,3,4``) wins.
"""
from __future__ import annotations

from typing import Any

SCALES = ("paper", "lesson")

_WORLD = ["colors", "shapes", "positions", "color_shapes", "textures", "counting", "shapes_sketch", "shapes_inverted",
          "novel_shapes", "digits"]  # the embedded world's datasets (fslib.world.suite)

# notebook -> parameter -> {scale: value}, for the parameters whose value depends on the scale
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "00_tour": {
        "datasets": dict(paper=_WORLD, lesson=["colors", "counting", "shapes_sketch"]),
        "shots": dict(paper=[1, 2, 4, 8, 16], lesson=[1, 4, 16]),
    },
    "01_mamf": {
        "levels": dict(paper=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], lesson=[0.0, 0.6, 1.0]),
        "shift_levels": dict(paper=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], lesson=[0.0, 0.6, 1.0]),
        "tasks": dict(paper=8, lesson=2),
        "train_per_class": dict(paper=8, lesson=2),
        "lr_grid": dict(paper=[3e-5, 3e-4], lesson=[3e-4]),
        "adapt_grid": dict(paper=[0, 5], lesson=[0, 1]),
        "val_tasks": dict(paper=4, lesson=1),
        "official_epochs": dict(paper=8, lesson=2),
    },
    "02_apex": {
        "datasets": dict(paper=None, lesson=None),  # None: the difficulty dial's levels
        "levels": dict(paper=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], lesson=[0.0, 0.4, 0.8]),
        # test-side: one fit per seed scores every level, so the lesson keeps all six
        "distance_levels": dict(paper=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], lesson=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        "shots": dict(paper=16, lesson=2),
        "epochs": dict(paper=10, lesson=1),
        "test_per_class": dict(paper=48, lesson=4),
        "dg_targets": dict(paper=["shapes_sketch", "shapes_inverted"], lesson=["shapes_sketch"]),
    },
    "03_smat": {
        # test-side: one meta-training per variant and seed is scored at every level, so the lesson keeps all six
        "levels": dict(paper=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], lesson=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        "train_tasks": dict(paper=500, lesson=8),
        "test_tasks": dict(paper=50, lesson=2),
        "val_tasks": dict(paper=10, lesson=1),
        "taus": dict(paper=[0.5, 0.95], lesson=[0.5]),
        "expert_counts": dict(paper=[1, 8], lesson=[1]),
        "finetune_lrs": dict(paper=[0.0, 1e-4, 1e-3], lesson=[0.0, 1e-3]),
    },
    "04_llu": {
        "datasets": dict(paper=None, lesson=None),  # None: the dial's levels
        "levels": dict(paper=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], lesson=[0.0, 0.4, 0.8]),
        "shots": dict(paper=16, lesson=2),
        "steps": dict(paper=300, lesson=10),
        "views": dict(paper=4, lesson=1),
    },
    "05_clip_cite": {
        "datasets": dict(paper=None, lesson=None),  # None: the dial's levels
        "levels": dict(paper=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], lesson=[0.0, 0.4, 0.8]),
        "shots": dict(paper=16, lesson=2),
        "epochs": dict(paper=10, lesson=1),
        "ratios": dict(paper=[0.5, 1.0], lesson=[0.5, 1.0]),
        "curve_shots": dict(paper=[2, 8], lesson=[1, 2]),
        "test_per_class": dict(paper=16, lesson=4),
        "steps": dict(paper=300, lesson=10),
        "views": dict(paper=4, lesson=1),
    },
    "06_compare": {
        "shots": dict(paper=[2, 8], lesson=[1, 2]),
        # the pool the rule draws each protocol's datasets from: every embedded dataset at both scales
        "datasets": dict(paper=_WORLD, lesson=_WORLD),
        # of the datasets in the zero-shot band (fslib.studies.zero_shot.datasets_by_rule), how many each protocol runs
        "datasets_per_protocol": dict(paper=3, lesson=1),
        "base_to_new_shots": dict(paper=16, lesson=2),
        # test-side: one fit per seed is scored at every level, so the lesson keeps all six
        "shift_levels": dict(paper=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], lesson=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        "dg_shots": dict(paper=4, lesson=1),
        "epochs": dict(paper=10, lesson=1),
        "test_per_class": dict(paper=32, lesson=4),
        "train_tasks": dict(paper=500, lesson=8),
        "test_tasks": dict(paper=5, lesson=1),
        "val_tasks": dict(paper=2, lesson=1),
        "adapt_epochs": dict(paper=5, lesson=1),
    },
}


def scaled(notebook: str) -> list[str]:
    """The parameters of ``notebook`` whose value depends on the scale."""
    return list(PRESETS.get(notebook, {}))


def preset(notebook: str, scale: str) -> dict[str, Any]:
    """``{parameter: value}`` of ``notebook`` at ``scale`` (one of :data:`SCALES`)."""
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is not allowed; allowed: {', '.join(map(repr, SCALES))}")
    return {name: values[scale] for name, values in PRESETS.get(notebook, {}).items()}
