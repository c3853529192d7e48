"""04_llu's analyses beside the shared protocols: how local LLU's update really is (Ibing, Lim, Kobbelt, 2022, §3)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from fslib.bench import Stage, dataset_sizes
from fslib.data import load_dataset
from fslib.evaluation import summarise
from fslib.evidence import level_name
from fslib.fewshot import base_to_new_sets, few_shot
from fslib.methods.llu import LLU
from fslib.models import Clip


def locality_table(clip: Clip, datasets: Sequence[str], shots: int, seed: int, **llu_options):
    """Per dataset: the mean locality weight an LLU fitted on the base classes gives base and new test
    images and class prompts (:meth:`LLU.update_weights`). Near-equal weights mean the kernel cannot
    keep the update away from new classes in this embedding space."""
    rows = []
    for name in datasets:
        base_train, base_test, new_test = base_to_new_sets(load_dataset(name, "train"), load_dataset(name, "test"))
        llu = LLU(clip, **llu_options).fit(few_shot(base_train, shots, seed))
        for part, test in (("base", base_test), ("new", new_test)):
            rows += [{"dataset": name, "part": part, "of": of, "w": w} for of, w in llu.update_weights(test, test.classnames).items()]
    return pd.DataFrame(rows).pivot_table(index="dataset", columns=["of", "part"], values="w", sort=False)


# -- figures ---------------------------------------------------------------------------------------
def kappa_tradeoff(sweep: pd.DataFrame, zero_shot: "pd.Series") -> plt.Figure:
    """LLU's base and new accuracy over κ (``sweep``: rows ``seed, method`` = κ, ``part, accuracy``), with
    95% CI bands over seeds and zero-shot as dashed references."""
    per_seed = sweep.groupby(["seed", "method", "part"], as_index=False)["accuracy"].mean()
    summary = summarise(per_seed, ["method", "part"]).sort_values("method")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for colour, part in zip(sns.color_palette(), ("base", "new")):
        rows = summary[summary["part"] == part]
        ax.plot(rows["method"], rows["mean"], marker="o", color=colour, label=f"LLU {part}")
        ax.fill_between(rows["method"], rows["mean"] - rows["ci95"], rows["mean"] + rows["ci95"], color=colour, alpha=0.2)
        ax.axhline(zero_shot[part], color=colour, ls="--", lw=1, label=f"zero-shot {part}")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(-0.2, 1.3 * summary["method"].max())  # κ >= 0: no negative half of the symlog axis
    ax.set(xlabel="κ (kernel sharpness; 0 = global)", ylabel="accuracy (%)", title="From global to local updates (95% CI over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def locality_along_dial(locality: pd.DataFrame, levels: Mapping[float, str], kappa: float) -> plt.Figure:
    """The mechanism check: the mean locality weight on base and new test images (:func:`locality_table`) at
    every level of a dial (``levels``: level -> dataset). Locality can only spare new classes where their
    images get clearly less weight than the base images."""
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    xs = list(levels)
    for colour, part in zip(sns.color_palette(), ("base", "new")):
        ax.plot(range(len(xs)), [locality.loc[name, ("images", part)] for name in levels.values()], marker="o", color=colour,
                label=f"{part} test images")
    ax.set_xticks(range(len(xs)), labels=[level_name(x) for x in xs])
    ax.set(xlabel="dial level (or dataset)", ylabel="mean locality weight w", ylim=(0, None),
           title=f"Where LLU's update acts (κ = {kappa:g}; first seed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def update_fields(fields: dict) -> plt.Figure:
    """LLU's toy picture: for each κ, unit vectors on a circle and their update arrows (``{κ: (points, moves)}``)."""
    fig, axes = plt.subplots(1, len(fields), figsize=(3.3 * len(fields), 3.3))
    for ax, (kappa, (points, moves)) in zip(np.atleast_1d(axes), fields.items()):
        ax.add_patch(plt.Circle((0, 0), 1, fill=False, color="grey", lw=0.8))
        ax.quiver(points[:, 0], points[:, 1], moves[:, 0], moves[:, 1], angles="xy", scale_units="xy", scale=1,
                  color=sns.color_palette()[0], width=0.006)
        ax.scatter([1], [0], color=sns.color_palette()[3], s=60, zorder=3, label="training centre")
        ax.set(xlim=(-1.4, 1.4), ylim=(-1.4, 1.4), aspect="equal", title=f"κ = {kappa:g}", xticks=[], yticks=[])
    np.atleast_1d(axes)[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def planned_work(P: SimpleNamespace) -> list[Stage]:
    """04's work at parameters ``P`` with named ``datasets`` (:func:`fslib.bench.expected_cost`): LLU and its rivals
    train on cached features, so the cost is encoding: ``views`` augmented crops of every shot per seed, and each
    dataset's validation and test images once. The fits (seconds each on features) and CoOp's prompt steps
    through the text tower are left out."""
    sizes = dataset_sizes(P.datasets, None)
    crops = len(P.seeds) * max(P.views, 1) * P.shots * sizes.base
    return [Stage("encoding: augmented shots, validation and test images", 0, 0,
                  int((crops + sizes.val + sizes.test).sum()))]
