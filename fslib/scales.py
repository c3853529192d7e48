"""The scales a notebook runs at: one code path, three sizes.

* ``"paper"`` (the default) is the powered protocol: enough seeds, tasks and epochs for the claims to be
  decided where the paper's situation is staged. It takes minutes to an hour per notebook on a 2-core CPU
  (``docs/performance.md``).
* ``"lesson"`` is the same code at the size a class can run: about 3 minutes per notebook on 2 cores in fp32.
  Fewer datasets, tasks, epochs and grid points; its verdicts are labelled as the lesson's, and each is shown
  beside the committed paper-scale verdict of the same claim (:mod:`fslib.records`).
* ``"paper-real"`` is the paper's own protocol for real CLIP on real datasets (a GPU run): the papers' shots,
  epochs, seeds, test sets and the CoOp datasets (:data:`REAL`; what it leaves out keeps its paper-scale value).
  It refuses the embedded model, and prints what it will cost (:func:`fslib.bench.expected_cost`) before it starts.
  The notebooks whose claims are staged on the embedded world's dials only do not have it yet (:data:`NOT_REAL`).

A notebook's parameters cell sets the scale-dependent parameters to ``None``; :func:`fslib.params.validate`
fills them from :data:`PRESETS` for the chosen scale, and a value given explicitly (``-p seeds 1,2,3,4``) wins.
"""
from __future__ import annotations

from typing import Any

SCALES = ("paper", "lesson", "paper-real")
REAL_SCALE = "paper-real"

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
        "seeds": dict(paper=[1, 2, 3], lesson=[1, 2, 3]),
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
        "curve_dataset": dict(paper="counting", lesson="counting"),
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
        "dg_source": dict(paper=None, lesson=None),  # None: the shift dial's level the dataset rule picks
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


# CoOp's eleven datasets (Zhou et al. 2022), the base-to-new benchmark of APEX, CLIP-CITE and CoCoOp; fslib loads
# nine of them by torchvision name, ImageNet and UCF101 only from a folder (-p datasets /data/imagenet,...)
COOP_DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "flowers102", "food101", "fgvc_aircraft",
                 "sun397", "dtd", "eurosat", "ucf101")
COOP_BY_NAME = [name for name in COOP_DATASETS if name not in ("imagenet", "ucf101")]

# notebook -> the paper's protocol for real CLIP: the values that differ from the paper scale's
REAL: dict[str, dict[str, Any]] = {
    # CoOp's few-shot protocol: 1-16 shots of all classes
    "00_tour": dict(datasets=COOP_BY_NAME, shots=[1, 2, 4, 8, 16]),
    # APEX §5: 16 shots of the base classes, 15 epochs, 20 seeds, the whole test splits
    "02_apex": dict(datasets=COOP_BY_NAME, shots=16, epochs=15, seeds=list(range(1, 21)), test_per_class=0),
    # LLU's base-to-new on the CoOp datasets at 16 shots (its steps and views are the kit's: the paper gives none)
    "04_llu": dict(datasets=COOP_BY_NAME, shots=16),
    # CLIP-CITE §4.1: 16 shots, 20 epochs, 3 seeds, whole test splits; Fig. 3's shot counts on one of its datasets
    "05_clip_cite": dict(datasets=COOP_BY_NAME, shots=16, epochs=20, test_per_class=0, curve_dataset="dtd",
                         curve_shots=[1, 2, 4, 8, 16]),
}
NOT_REAL = {
    "01_mamf": "its claims are staged on the embedded world's spurious-cue and style dials, which have no real "
               "counterpart in the kit yet",
    "03_smat": "its meta-training domains and its shift dial are the embedded world's; a real run needs "
               "Meta-Dataset's domains (fslib.launch smat trains SMAT on real folders)",
    "06_compare": "its protocols draw their datasets from the embedded world and its domain shift is a dial of it",
}


def scaled(notebook: str) -> list[str]:
    """The parameters of ``notebook`` whose value depends on the scale."""
    return list(PRESETS.get(notebook, {}))


def preset(notebook: str, scale: str) -> dict[str, Any]:
    """``{parameter: value}`` of ``notebook`` at ``scale`` (one of :data:`SCALES`)."""
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is not allowed; allowed: {', '.join(map(repr, SCALES))}")
    if scale == REAL_SCALE:
        if notebook not in REAL:
            raise ValueError(f"scale={REAL_SCALE!r} is not available for {notebook}: {NOT_REAL[notebook]}. It is "
                             f"available for {', '.join(REAL)}; run {notebook} on real CLIP at scale='paper' with "
                             "-p model and -p pretrained instead")
        return {**preset(notebook, "paper"), **REAL[notebook]}
    return {name: values[scale] for name, values in PRESETS.get(notebook, {}).items()}
