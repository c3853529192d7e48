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
  Where a claim is staged on a dial of the embedded world (01, 03 and 06's domain shift), the dial stays: a graded
  situation has no real counterpart, and real CLIP sees the dial's images at its own input size.

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
        "epochs": dict(paper=1, lesson=1),
        "shots": dict(paper=2, lesson=2),
        "seeds": dict(paper=[1, 2, 3], lesson=[1, 2, 3]),
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
        "id_datasets": dict(paper=["shapes", "colors", "textures"], lesson=["shapes", "colors", "textures"]),
        "ood_datasets": dict(paper=["shapes_sketch", "novel_shapes", "counting"],
                             lesson=["shapes_sketch", "novel_shapes", "counting"]),
        "experts": dict(paper=4, lesson=4),
        "novel_classes": dict(paper=5, lesson=5),
        "expert_blocks": dict(paper=1, lesson=1),
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
        "tune_on": dict(paper="shapes_sketch", lesson="shapes_sketch"),
        "novel_classes": dict(paper=5, lesson=5),
        "episode_id_datasets": dict(paper=["shapes", "colors", "textures"], lesson=["shapes", "colors", "textures"]),
        "episode_ood_datasets": dict(paper=["counting", "shapes_sketch"], lesson=["counting", "shapes_sketch"]),
    },
}


# CoOp's eleven datasets (Zhou et al. 2022), the base-to-new benchmark of APEX, CLIP-CITE and CoCoOp; fslib loads
# nine of them by torchvision name, ImageNet and UCF101 only from a folder (-p datasets /data/imagenet,...)
COOP_DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "flowers102", "food101", "fgvc_aircraft",
                 "sun397", "dtd", "eurosat", "ucf101")
COOP_BY_NAME = [name for name in COOP_DATASETS if name not in ("imagenet", "ucf101")]

# Meta-Dataset's training sources and SMAT's held-out test sets that torchvision ships (under fslib's names)
SMAT_ID_BY_NAME = ["fgvc_aircraft", "dtd", "flowers102"]
SMAT_OOD_BY_NAME = ["food101", "oxford_pets", "stanford_cars"]

# notebook -> the paper's protocol for real CLIP: the values that differ from the paper scale's
REAL: dict[str, dict[str, Any]] = {
    # CoOp's few-shot protocol: 1-16 shots of all classes
    "00_tour": dict(datasets=COOP_BY_NAME, shots=[1, 2, 4, 8, 16]),
    # MAMF's official code (notes §2-5) on the kit's two dials, which real CLIP sees at its own image size (a
    # graded spurious cue or style shift has no real counterpart): 8 epochs per task for every arm, the whole
    # train split of a level (32 images per class), K(4) = 14 test tasks per level and seed, 3 support images per
    # class (10% of a class), 5 seeds, and the official LR 1e-6 among those validation chooses from
    "01_mamf": dict(epochs=8, official_epochs=8, train_per_class=32, tasks=14, val_tasks=14, shots=3,
                    seeds=[1, 2, 3, 4, 5], lr_grid=[1e-6, 3e-5, 3e-4], adapt_grid=[0, 5]),
    # APEX §5: 16 shots of the base classes, 15 epochs, 20 seeds, the whole test splits
    "02_apex": dict(datasets=COOP_BY_NAME, shots=16, epochs=15, seeds=list(range(1, 21)), test_per_class=0),
    # SMAT §4 on the Meta-Dataset domains torchvision ships (ID: 3 of its 8 training sources; OOD: 3 of its 10
    # held-out sets; the others from folders): 50,000 meta-training episodes, 120 validation and 600 test
    # episodes per domain, |M| = 8 experts over the whole tower, and the trade-off figure's |M| = 4 and 16; 15
    # novel classes per ID domain, about Meta-Dataset's test share (Aircraft 15, Flowers 16, DTD 7). The shift
    # dial stays the kit's (a graded shift has no real counterpart), scored with the same real model
    "03_smat": dict(id_datasets=SMAT_ID_BY_NAME, ood_datasets=SMAT_OOD_BY_NAME, train_tasks=50_000, test_tasks=600,
                    val_tasks=120, experts=8, expert_blocks="all", expert_counts=[4, 16], novel_classes=15),
    # LLU's base-to-new on the CoOp datasets at 16 shots (its steps and views are the kit's: the paper gives none)
    "04_llu": dict(datasets=COOP_BY_NAME, shots=16),
    # CLIP-CITE §4.1: 16 shots, 20 epochs, 3 seeds, whole test splits; Fig. 3's shot counts on one of its datasets
    "05_clip_cite": dict(datasets=COOP_BY_NAME, shots=16, epochs=20, test_per_class=0, curve_dataset="dtd",
                         curve_shots=[1, 2, 4, 8, 16]),
    # CLIP-CITE's protocols side by side (§4.1: its shots, 20 epochs for every method that trains, whole test
    # splits), each on every CoOp dataset the rule admits; the knobs chosen on DTD's validation split; SMAT's
    # benchmark for the meta-learners (as 03's preset); domain shift on the kit's style dial at 16 shots
    "06_compare": dict(datasets=COOP_BY_NAME, datasets_per_protocol=len(COOP_BY_NAME), shots=[1, 2, 4, 8, 16],
                       base_to_new_shots=16, dg_shots=16, epochs=20, test_per_class=0, tune_on="dtd",
                       episode_id_datasets=SMAT_ID_BY_NAME, episode_ood_datasets=SMAT_OOD_BY_NAME, novel_classes=15,
                       train_tasks=50_000, test_tasks=600, val_tasks=120),
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
            raise ValueError(f"scale={REAL_SCALE!r} is not available for {notebook!r}; it is available for "
                             f"{', '.join(REAL)}")
        return {**preset(notebook, "paper"), **REAL[notebook]}
    return {name: values[scale] for name, values in PRESETS.get(notebook, {}).items()}
