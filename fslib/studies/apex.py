"""02_apex's experiment: the efficient-transfer families and APEX on CoCoOp's base-to-new protocol along two
dials, transfer difficulty and class distance, and on domain shift (Yang, Ko, Yun, 2023, §3, §4.2, §5,
Tables 1, 4, 5, 13, Fig. 8).

Every family is fitted once per (level, seed) at the learning rate the kit's one rule chose on validation
(:func:`family_contenders`); APEX, its one-modality variants and the fixed-α sweep are test-time settings
of VPT+TA's fit (:class:`~fslib.methods.apex.Ensemble`), so they score the same prompts and adapter.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from sklearn.metrics import precision_score

from fslib import evidence
from fslib.bench import Stage, dataset_sizes
from fslib.data import ImageDataset, load_dataset
from fslib.evaluation import summarise
from fslib.fewshot import base_new_split
from fslib.methods.apex import (ENSEMBLES, FAMILY_METHODS, Ensemble, distance_table, make_family,
                                relative_transfer_difficulty)
from fslib.methods.registry import registered
from fslib.models import Clip
from fslib.protocols import LADDER_TRIES, Contender, MakeMethod, domain_shift, new_class_levels
from fslib.protocols import base_to_new as base_to_new_protocol


def zero_shot_difficulty(clip: Clip, test: ImageDataset) -> dict:
    """Zero-shot accuracy and macro precision (%) over all classes, and RTD from the accuracy (Def. 1)."""
    predictions = make_family(clip, "zero-shot").fit(test).logits(test).argmax(dim=-1).numpy()
    acc = float((predictions == test.labels).mean())
    precision = precision_score(test.labels, predictions, average="macro", zero_division=0)
    return {"dataset": test.name, "zero_shot_accuracy": 100 * acc, "zero_shot_precision": 100 * precision,
            "rtd": relative_transfer_difficulty(acc, test.num_classes)}


def family_contenders(clip: Clip, families: Sequence[str], epochs: int, augment: bool = False) -> dict[str, Contender]:
    """Every family of ``families`` (:data:`FAMILIES`) with its registered learning-rate ladder, for the kit's
    one tuning rule (:func:`fslib.protocols.choose_hyperparameters`): the same budget and augmentation for
    every family, only the learning rate chosen on validation."""
    contenders = {}
    for family in families:
        knob = registered(FAMILY_METHODS[family]).knob
        make = (lambda value, seed, f=family: make_family(clip, f, epochs=epochs, lr=value, augment=augment, seed=seed))
        contenders[family] = Contender(make, knob.name, knob.ladder, knob.start) if knob else Contender(
            lambda value, seed: make_family(clip, "zero-shot"), "none", (None,))
    return contenders


def ensemble_settings(alphas: Sequence[float] = ()) -> tuple[dict[str, Ensemble], dict[float, Ensemble]]:
    """The test-time settings VPT+TA's fit is scored with: APEX and its one-modality variants (Table 5,
    :data:`ENSEMBLES`), and a fixed α shared by every class for each of ``alphas`` (Table 13)."""
    return ({label: Ensemble(modality) for label, modality in ENSEMBLES.items()},
            {alpha: Ensemble("both", fixed_alpha=alpha) for alpha in alphas})


def _variations(ensembles: dict[str, Ensemble], fixed: dict[float, Ensemble]) -> list[dict]:
    return [{"ensemble": None}, *({"ensemble": e} for e in [*ensembles.values(), *fixed.values()])]


def _split_rows(rows: pd.DataFrame, ensembles: dict[str, Ensemble], fixed: dict[float, Ensemble]):
    """``run``'s rows with ensemble variations -> (every method as itself and APEX's variants relabelled,
    the fixed-α rows of VPT+TA's fit on new classes with a column ``alpha``)."""
    own = rows[rows.ensemble.isna()]
    vpt_ta = rows[rows.method == "VPT+TA"]
    results = pd.concat([own, *(vpt_ta[vpt_ta.ensemble == e].assign(method=label) for label, e in ensembles.items())],
                        ignore_index=True)
    new = vpt_ta[vpt_ta.part == "new"]
    sweep = pd.concat([new[new.ensemble == e].assign(alpha=alpha) for alpha, e in fixed.items()], ignore_index=True)
    return results.drop(columns="ensemble"), sweep.drop(columns="ensemble")


def base_to_new(methods: Mapping[str, MakeMethod], levels: Mapping[object, str], shots: int, seeds: Sequence[int],
                alphas: Sequence[float] = (), test_per_class: int | None = None, progress: bool = True,
                splits: Sequence[str] = ("test",)):
    """CoCoOp's base-to-new protocol (APEX §5) at every level of a dial (or named dataset): each family of
    ``methods`` fitted on ``shots`` images per base class, scored on base and new classes of each of
    ``splits``. APEX and its one-modality variants are VPT+TA's fit scored with the adaptive ensemble; the
    fixed-α sweep too. Returns ``(results, sweep)``: rows with ``level, seed, method, part, accuracy`` (and
    ``split`` with more than the test split), and VPT+TA's new-class rows at each fixed α (``alpha``)."""
    ensembles, fixed = ensemble_settings(alphas)
    rows = base_to_new_protocol(methods, levels, shots, seeds, test_per_class, _variations(ensembles, fixed), progress,
                                splits)
    return _split_rows(rows, ensembles, fixed)


def new_class_dial(clip: Clip, make_vpt_ta: MakeMethod, levels: Mapping[object, str], shots: int, seeds: Sequence[int],
                   alphas: Sequence[float] = (), test_per_class: int | None = None, progress: bool = True):
    """The class-distance dial, test-side: zero-shot CLIP (APEX's prompt) and one VPT+TA fit per seed on the
    shared base classes, scored on every level's new classes, validation and test images (the premise is
    decided on validation). Returns ``(results, sweep)`` as :func:`base_to_new`, rows with ``split``."""
    ensembles, fixed = ensemble_settings(alphas)
    methods = {"zero-shot": lambda seed: make_family(clip, "zero-shot"), "VPT+TA": make_vpt_ta}
    rows = new_class_levels(methods, levels, shots, seeds, test_per_class, _variations(ensembles, fixed), progress,
                            splits=("val", "test"))
    return _split_rows(rows, ensembles, fixed)


def best_fixed_alpha(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, level): the fixed α with the highest new-class accuracy (Fig. 8's y), the mean of the tied
    best where several tie (zero-shot at the ceiling ties every α), so no tie-break leans either way."""
    def best(rows: pd.DataFrame) -> float:
        accuracy = rows.groupby("alpha").accuracy.mean()
        return float(accuracy.index[np.isclose(accuracy, accuracy.max())].to_numpy().mean())
    return (sweep.groupby(["seed", "level"]).apply(best, include_groups=False).rename("best_alpha").reset_index())


def difficulty_by_level(clip: Clip, levels: Mapping[object, str]) -> pd.DataFrame:
    """Per level: zero-shot accuracy and macro precision on its whole test split, and RTD (Def. 1)."""
    return pd.DataFrame([{"level": level, **zero_shot_difficulty(clip, load_dataset(name, "test"))}
                         for level, name in levels.items()])


def alpha_by_level(clip: Clip, levels: Mapping[object, str]) -> pd.DataFrame:
    """Per level: each new class's distances to the base classes and APEX's α (β = 4, ε = 0.05): what the
    ensemble sees of a level, from class names alone."""
    tables = []
    for level, name in levels.items():
        base, new = base_new_split(load_dataset(name, "test"))
        tables.append(distance_table(clip, base.classnames, new.classnames).assign(level=level))
    return pd.concat(tables, ignore_index=True)


def domain_generalisation(clip: Clip, source: str, targets: Sequence[str], shots: int, seeds: Sequence[int],
                          epochs: int, lr: float, visual_depth: int = 3, augment: bool = False,
                          test_per_class: int | None = None, progress: bool = True) -> pd.DataFrame:
    """APEX's domain-generalisation protocol (§5, Table 4) on the kit's domains: fit APEX with shallower
    visual prompts (``J_V = 3``, the official cross-domain config) on all classes of ``source`` and score
    each target with the same class names. Every target class is then a training class (``d_nn = 0``), so
    α = 1 and APEX is its VPT+TA: the test is whether the prompts and adapter survive the shift.
    Returns rows ``method, seed, target, accuracy`` for zero-shot CLIP and APEX (the source's own test
    split among the targets)."""
    methods = {"zero-shot": lambda seed: make_family(clip, "zero-shot"),
               "APEX": lambda seed: make_family(clip, "VPT+TA", visual_depth=visual_depth, ensemble=True, epochs=epochs,
                                                lr=lr, augment=augment, seed=seed)}
    rows = domain_shift(methods, source, [source, *targets], shots, seeds, test_per_class, progress)
    return rows.rename(columns={"part": "target"})[["method", "seed", "target", "accuracy"]]


def gains_over_zero_shot(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (seed, level, part, method): accuracy minus zero-shot CLIP's on the same test images, the
    units of the paper's difficulty analyses (§3, Table 1)."""
    wide = results.pivot_table(index=["seed", "level", "part"], columns="method", values="accuracy")
    return wide.sub(wide["zero-shot"], axis=0).drop(columns="zero-shot").stack().rename("gain").reset_index()


def difficulty_trend(claim: evidence.Claim, table: pd.DataFrame, y: str, difficulty: pd.DataFrame,
                     named_datasets: bool) -> evidence.Verdict:
    """A trend of ``y`` with difficulty: over the dial's designed levels, or, where named datasets stand for the
    levels (``-p datasets``), over each dataset's RTD (Def. 1, from ``difficulty``: :func:`difficulty_by_level`),
    which :func:`fslib.evidence.decide_trend` shows with its interval but never decides: the datasets are fixed,
    not designed levels."""
    if not named_datasets:
        return evidence.decide_trend(claim, table, y, "level", group="level", too_few="record")
    rtd = table.level.map(difficulty.set_index("level").rtd)
    return evidence.decide_trend(claim, table.assign(rtd=rtd), y, "rtd", group="level")


# -- figures ---------------------------------------------------------------------------------------
def gains_along_dial(gains: pd.DataFrame, part: str, families: Sequence[str], xlabel: str,
                     title: str = "Which family gains, by difficulty") -> plt.Figure:
    """Gain over zero-shot on ``part`` ("base" or "new") per level, one line per family with 95% CIs over
    seeds: the paper's gain-vs-difficulty figure (Fig. 3, Table 1) on designed levels."""
    summary = summarise(gains[(gains.part == part) & gains.method.isin(families)], ["method", "level"], "gain")
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for colour, family in zip(sns.color_palette(), families):
        rows = summary[summary.method == family].sort_values("level")
        ax.errorbar(rows["level"], rows["mean"], yerr=rows["ci95"], marker="o", ms=4, capsize=2, color=colour,
                    label=family)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xlabel=f"{xlabel} (harder →)", ylabel=f"{part}-class gain over zero-shot (points)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def alpha_sweep(sweep: pd.DataFrame, best: pd.DataFrame, apex_alpha: pd.Series, xlabel: str) -> plt.Figure:
    """Left: new-class accuracy against a fixed α, one line per level (mean over seeds; Table 13). Right: the
    best fixed α per level with its 95% CI over seeds (Fig. 8), and the α APEX's rule gives that level's new
    classes (mean over them)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    levels = sorted(sweep.level.unique())
    for colour, level in zip(sns.color_palette("viridis", len(levels)), levels):
        means = sweep[sweep.level == level].groupby("alpha").accuracy.mean()
        left.plot(means.index, means.values, marker="o", ms=3, color=colour, label=evidence.level_name(level))
    left.set(xlabel="fixed α (0: zero-shot, 1: VPT+TA)", ylabel="new-class accuracy (%)", title="Table 13 per level")
    left.legend(title=xlabel, fontsize=7, ncols=2)
    band = summarise(best, ["level"], "best_alpha").sort_values("level")
    right.errorbar(band["level"], band["mean"], yerr=band["ci95"], marker="o", capsize=2, label="best fixed α")
    right.plot(apex_alpha.index, apex_alpha.values, marker="s", ls="--", color="grey", label="APEX's α (β = 4)")
    right.set(xlabel=xlabel, ylabel="α", ylim=(-0.05, 1.05), title="Fig. 8: the best α per level")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def transfer_bars(transfer: pd.DataFrame,
                  title: str = "After fine-tuning on the source: shifted styles and an unrelated dataset") -> plt.Figure:
    """Accuracy per target dataset for each method (rows ``method, seed, target, accuracy``): grouped bars
    with 95% CIs over seeds."""
    summary = summarise(transfer, ["method", "target"])
    methods, targets = list(dict.fromkeys(transfer["method"])), list(dict.fromkeys(transfer["target"]))
    fig, ax = plt.subplots(figsize=(1.6 * len(targets) + 2.5, 3.6))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        rows = summary[summary["method"] == method].set_index("target").loc[targets]
        ax.bar(np.arange(len(targets)) + (i - (len(methods) - 1) / 2) * width, rows["mean"], width, yerr=rows["ci95"],
               capsize=2, label=method)
    ax.set_xticks(np.arange(len(targets)), targets)
    ax.set(ylabel="accuracy (%)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# the families whose prompts go through the image tower (forward and backward every step): VPT and VPT+TA;
# CoOp, TPT and TA train through the text tower or on cached features, and are left out of the count
IMAGE_TOWER_FAMILIES = 2
FAMILIES = 6  # zero-shot, CoOp, TPT, VPT, TA, VPT+TA: each scores every image of its dataset once per seed


def planned_work(P: SimpleNamespace) -> list[Stage]:
    """02's work at parameters ``P`` with named ``datasets`` (:func:`fslib.bench.expected_cost`): the families'
    LR search (first seed, one dataset), their base-to-new fits, and the embedded world's class-distance dial and
    domain shift, run on the same model."""
    sizes = dataset_sizes(P.datasets, P.test_per_class)
    embedded = dataset_sizes([*P.dg_targets, P.dg_source], P.test_per_class)
    seeds, per_fit = len(P.seeds), P.shots * sizes.base * P.epochs
    searched = IMAGE_TOWER_FAMILIES * LADDER_TRIES
    return [
        Stage("choosing the LRs (first seed, one dataset)", searched, int(searched * per_fit.max()),
              int(searched * sizes.val.max() // 2)),
        Stage("base-to-new: the families", IMAGE_TOWER_FAMILIES * seeds * len(sizes),
              int(IMAGE_TOWER_FAMILIES * seeds * per_fit.sum()),
              int(FAMILIES * seeds * (sizes.val + sizes.test).sum())),
        Stage("class-distance dial and domain shift (embedded images)", 2 * seeds,
              int(2 * seeds * P.shots * embedded.classes.max() * P.epochs), int(2 * seeds * embedded.test.sum())),
    ]
