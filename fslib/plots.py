"""One plotting style for every notebook, and ``save`` into ``figures/<notebook>/``."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from fslib.data import ImageDataset
from fslib.report import project_dir

if TYPE_CHECKING:
    import pandas as pd


def use_style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 130, "axes.titleweight": "bold"})


def save(fig: plt.Figure, notebook: str, name: str) -> Path:
    """Save ``fig`` as ``figures/<notebook>/<name>.png`` and return the path."""
    path = project_dir("figures") / notebook / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def sample_grid(datasets: Sequence[ImageDataset], per_dataset: int = 8, seed: int = 0) -> plt.Figure:
    """One row per dataset: ``per_dataset`` images from distinct classes, titled by class name."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(datasets), per_dataset, figsize=(1.3 * per_dataset, 1.45 * len(datasets)), squeeze=False)
    for row, dataset in zip(axes, datasets):
        classes = rng.permutation(dataset.num_classes)[:per_dataset]
        for ax, c in zip(row, classes):
            ax.imshow(dataset.image(int(rng.choice(np.flatnonzero(dataset.labels == c)))))
            ax.set_title(dataset.classnames[c], fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[len(classes):]:
            ax.axis("off")
        row[0].set_ylabel(dataset.name, rotation=0, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    return fig


def difficulty_spectrum(table: "pd.DataFrame") -> plt.Figure:
    """Horizontal bars of zero-shot accuracy per dataset (columns ``dataset, domain, zero_shot, chance``)."""
    table = table.sort_values("zero_shot")
    fig, ax = plt.subplots(figsize=(7, 0.38 * len(table) + 1))
    colours = {"id": sns.color_palette()[0], "ood": sns.color_palette()[3]}
    ax.barh(table["dataset"], table["zero_shot"], color=[colours.get(d, "grey") for d in table["domain"]])
    ax.scatter(table["chance"], table["dataset"], marker="|", s=300, color="black", label="chance", zorder=3)
    for y, value in enumerate(table["zero_shot"]):
        ax.text(value + 1, y, f"{value:.0f}", va="center", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles + ax.get_legend_handles_labels()[0], ["in-distribution", "out-of-distribution", "chance"],
              loc="lower right", fontsize=8)
    ax.set(xlim=(0, 105), xlabel="zero-shot accuracy (%)", title="Transfer difficulty of the embedded suite")
    fig.tight_layout()
    return fig


def shot_curves(results: "pd.DataFrame", ncols: int = 5) -> plt.Figure:
    """Accuracy vs shots per dataset, one line per method; bands are the Student-t 95% CI over seeds."""
    from fslib.evaluation import summarise

    summary = summarise(results, ["dataset", "method", "shots"])
    datasets = list(dict.fromkeys(results["dataset"]))
    nrows = -(-len(datasets) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.7 * ncols, 2.4 * nrows), squeeze=False)
    colours = dict(zip(dict.fromkeys(results["method"]), sns.color_palette()))
    for ax, name in zip(axes.flat, datasets):
        for method, rows in summary[summary["dataset"] == name].groupby("method", sort=False):
            ax.plot(rows["shots"], rows["mean"], marker="o", ms=3, color=colours[method], label=method)
            ax.fill_between(rows["shots"], rows["mean"] - rows["ci95"], rows["mean"] + rows["ci95"],
                            color=colours[method], alpha=0.2)
        ax.set_xscale("log", base=2)
        shots = sorted(results["shots"].unique())
        ax.set_xticks(shots, labels=shots)
        ax.set_title(name, fontsize=10)
    for ax in axes.flat[len(datasets):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    for ax in axes[-1]:
        ax.set_xlabel("shots per class")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
