"""02_apex's experiment: the efficient-transfer families and APEX on CoCoOp's base-to-new protocol and on
domain shift (Yang, Ko, Yun, 2023, §3, §5, Tables 1, 4, 5, 12, 13), with each dataset's transfer difficulty.

Every family is fitted once per (dataset, seed) by :func:`fslib.protocols.base_to_new`; APEX and its
one-modality variants, and the sweeps of β and of a fixed α, are test-time settings of VPT+TA's fit
(:class:`~fslib.methods.apex.Ensemble`), so they score the same prompts and adapter.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from sklearn.metrics import precision_score

from fslib.data import ImageDataset, load_dataset
from fslib.evaluation import summarise
from fslib.fewshot import base_to_new_sets
from fslib.methods.apex import ENSEMBLES, FAMILIES, Ensemble, distance_table, make_family, relative_transfer_difficulty
from fslib.models import Clip
from fslib.protocols import base_to_new as base_to_new_protocol
from fslib.protocols import domain_shift


def zero_shot_difficulty(clip: Clip, test: ImageDataset) -> dict:
    """Zero-shot accuracy and macro precision (%) over all classes, and RTD from the accuracy (Def. 1)."""
    predictions = make_family(clip, "zero-shot").fit(test).logits(test).argmax(dim=-1).numpy()
    acc = float((predictions == test.labels).mean())
    precision = precision_score(test.labels, predictions, average="macro", zero_division=0)
    return {"dataset": test.name, "zero_shot_accuracy": 100 * acc, "zero_shot_precision": 100 * precision,
            "rtd": relative_transfer_difficulty(acc, test.num_classes)}


def base_to_new(clip: Clip, datasets: Sequence[str], shots: int, seeds: Sequence[int], epochs: int, lr: float,
                betas: Sequence[float] = (), alphas: Sequence[float] = (), augment: bool = False,
                progress: bool = True, test_per_class: int | None = None):
    """Base-to-new generalisation (CoCoOp's protocol, APEX §5) of every family of :data:`FAMILIES`: fit on
    ``shots`` images of each base class, test on base and new classes separately. APEX and its one-modality
    variants (:data:`ENSEMBLES`) are VPT+TA's fit scored with the adaptive ensemble. Also returns new-class
    accuracy for a sweep of β and of a fixed α (the paper's Tables 12-13), each dataset's zero-shot
    difficulty on its full test split, and the new classes' distances to the base classes with their α.
    ``test_per_class`` scores the methods on a fixed sample of the test split.

    Returns ``(results, sweeps, difficulty, distances)`` DataFrames: ``results`` rows ``dataset, seed, method,
    part, accuracy``, ``sweeps`` rows ``dataset, seed, knob, value, accuracy`` (new classes).
    """
    difficulty, distances = [], []
    for name in datasets:
        test = load_dataset(name, "test")
        difficulty.append(zero_shot_difficulty(clip, test))
        base_train, _, new_test = base_to_new_sets(load_dataset(name, "train"), test)
        distances.append(distance_table(clip, base_train.classnames, new_test.classnames).assign(dataset=name))
    ensembles = {label: Ensemble(modality) for label, modality in ENSEMBLES.items()}
    sweep = {("beta", b): Ensemble("both", beta=b) for b in betas} | {("alpha", a): Ensemble("both", fixed_alpha=a) for a in alphas}
    variations = [{"ensemble": None}, *({"ensemble": e} for e in dict.fromkeys([*ensembles.values(), *sweep.values()]))]
    families = {family: (lambda seed, f=family: make_family(clip, f, epochs=epochs, lr=lr, augment=augment, seed=seed))
                for family in FAMILIES}
    rows = base_to_new_protocol(families, datasets, shots, seeds, test_per_class, variations, progress)
    own = rows[rows.ensemble.isna()]
    vpt_ta = rows[rows.method == "VPT+TA"]
    results = pd.concat([own, *(vpt_ta[vpt_ta.ensemble == ensemble].assign(method=label) for label, ensemble in ensembles.items())])
    new = vpt_ta[vpt_ta.part == "new"]
    sweeps = pd.concat([new[new.ensemble == ensemble].assign(knob=knob, value=value) for (knob, value), ensemble in sweep.items()])
    columns = ["dataset", "seed", "method", "part", "accuracy"]
    return (results.sort_values(["dataset", "seed"], kind="stable")[columns].reset_index(drop=True),
            sweeps[["dataset", "seed", "knob", "value", "accuracy"]].reset_index(drop=True) if len(sweeps) else pd.DataFrame(),
            pd.DataFrame(difficulty), pd.concat(distances, ignore_index=True))


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


def gains_over_zero_shot(results: pd.DataFrame, difficulty: pd.DataFrame) -> pd.DataFrame:
    """One row per (seed, dataset, part, method): accuracy minus zero-shot CLIP's on the same test images,
    with the dataset's RTD: the units of the paper's difficulty analyses (§3, Table 1)."""
    wide = results.pivot_table(index=["seed", "dataset", "part"], columns="method", values="accuracy")
    gains = wide.sub(wide["zero-shot"], axis=0).drop(columns="zero-shot").stack().rename("gain").reset_index()
    return gains.merge(difficulty[["dataset", "rtd"]], on="dataset")


def gain_summary(gains: pd.DataFrame, difficulty: pd.DataFrame, part: str, families: Sequence[str]) -> pd.DataFrame:
    """Mean gain over zero-shot and its 95% CI over seeds per (dataset, method) of ``part`` ("base" or "new"),
    with the dataset's difficulty: the points of the paper's gain-vs-difficulty figure (Fig. 3)."""
    rows = gains[(gains.part == part) & gains.method.isin(families)]
    return summarise(rows, ["dataset", "method"], "gain").rename(columns={"mean": "gain"}).merge(difficulty, on="dataset")


# -- figures ---------------------------------------------------------------------------------------
def gain_vs_difficulty(gains: pd.DataFrame, ylabel: str = "base-class gain over zero-shot (points)",
                       title: str = "Which ETL family helps, by difficulty") -> plt.Figure:
    """Gain over zero-shot (``gain``, with 95% CI half-widths ``ci95``) vs relative transfer difficulty
    (``rtd``), one colour and fit per ``method``."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for colour, (method, rows) in zip(sns.color_palette(), gains.groupby("method", sort=False)):
        ax.errorbar(rows["rtd"], rows["gain"], yerr=rows["ci95"], fmt="o", ms=5, capsize=2, color=colour, label=method,
                    zorder=3)
        if len(rows) >= 2:  # least-squares line in log difficulty: RTD spans orders of magnitude
            slope, intercept = np.polyfit(np.log(rows["rtd"]), rows["gain"], 1)
            xs = np.geomspace(gains["rtd"].min(), gains["rtd"].max(), 20)
            ax.plot(xs, intercept + slope * np.log(xs), color=colour, lw=1, ls="--")
    for _, row in gains.drop_duplicates("dataset").iterrows():
        ax.annotate(row["dataset"], (row["rtd"], gains["gain"].min()), fontsize=7, rotation=90, va="bottom", alpha=0.6)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set(xlabel="relative transfer difficulty (1 / (C · zero-shot accuracy), log scale); harder →",
           ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def ablation_sweeps(sweeps: pd.DataFrame) -> plt.Figure:
    """APEX's ablations: new-class accuracy vs β (adaptive α) and vs a fixed α; thin lines per dataset, the
    mean over datasets with a 95% CI band over seeds (when ``sweeps`` has a ``seed`` column)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, knob, label in zip(axes, ("beta", "alpha"), ("β (adaptive α = exp(-β d_avg))", "fixed α")):
        part = sweeps[sweeps["knob"] == knob]
        for dataset, rows in part.groupby("dataset", sort=False):
            means = rows.groupby("value")["accuracy"].mean()
            ax.plot(means.index, means.values, color="grey", lw=0.8, alpha=0.5)
        per_seed = part.groupby(["seed", "value"], as_index=False)["accuracy"].mean() if "seed" in part else part
        band = summarise(per_seed, ["value"]).sort_values("value")
        colour = sns.color_palette()[0]
        ax.plot(band["value"], band["mean"], color=colour, lw=2.5, marker="o", label="mean over datasets (95% CI over seeds)")
        ax.fill_between(band["value"], band["mean"] - band["ci95"], band["mean"] + band["ci95"], color=colour, alpha=0.2)
        ax.set(xlabel=label, title=f"new-class accuracy vs {knob}")
    axes[0].set_ylabel("new-class accuracy (%)")
    axes[0].legend(fontsize=8)
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
