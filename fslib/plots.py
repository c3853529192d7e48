"""One plotting style for every notebook, ``save`` into ``runs/figures/<notebook>/``, and the figures several
notebooks draw (a notebook's own figures live beside its experiment, in :mod:`fslib.studies`)."""
from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from scipy import stats

from fslib.evaluation import summarise
from fslib.evidence import level_name
from fslib.paths import project_dir

if TYPE_CHECKING:
    import pandas as pd


def use_style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 130, "axes.titleweight": "bold"})


def save(fig: plt.Figure, notebook: str, name: str) -> None:
    """Save ``fig`` as ``<figures>/<notebook>/<name>.png`` (:func:`fslib.paths.project_dir`; nothing is shown:
    the figure itself is the cell's output)."""
    path = project_dir("figures") / notebook / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")


def facet_lines(results: "pd.DataFrame", x: str, xlabel: str, facet: str = "dataset", hue: str = "method",
                value: str = "accuracy", ncols: int = 5, log2_x: bool = False,
                panel_size: tuple[float, float] = (2.8, 2.5)) -> plt.Figure:
    """One panel per ``facet`` (``panel_size`` inches wide and high), one line per ``hue`` of mean ``value`` vs ``x``;
    bands are Student-t 95% CIs over the rows of each point (seeds, or seeds x test tasks)."""
    summary = summarise(results, [facet, hue, x], value)
    panels = list(dict.fromkeys(results[facet]))
    nrows = -(-len(panels) // ncols)
    ncols = min(ncols, len(panels))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False)
    colours = dict(zip(dict.fromkeys(results[hue]), sns.color_palette()))
    xs = sorted(results[x].unique())
    for ax, panel in zip(axes.flat, panels):
        for line, rows in summary[summary[facet] == panel].groupby(hue, sort=False):
            rows = rows.sort_values(x)
            ax.plot(rows[x], rows["mean"], marker="o", ms=3, color=colours[line], label=line)
            # a t-interval over a few tasks can pass 0 or 100 %; accuracy cannot, so neither does the band
            low, high = (rows["mean"] - rows["ci95"]).clip(0, 100), (rows["mean"] + rows["ci95"]).clip(0, 100)
            ax.fill_between(rows[x], low, high, color=colours[line], alpha=0.2)
        if log2_x:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, labels=[level_name(v) for v in xs], fontsize=8, rotation=45 if len(xs) > 4 else 0)
        ax.set_title(panel, fontsize=10)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{value} (%)")
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def shot_curves(results: "pd.DataFrame", ncols: int = 5) -> plt.Figure:
    """Accuracy vs shots per dataset, one line per method, 95% CI over seeds."""
    return facet_lines(results, "shots", "shots per class", ncols=ncols, log2_x=True)


def scatter_fit(table: "pd.DataFrame", x: str, y: str, label: str, xlabel: str, ylabel: str,
                title: str, yerr: str | None = None, ax: plt.Axes | None = None) -> plt.Figure:
    """Scatter of ``y`` vs ``x`` with a least-squares line and Pearson's r in the legend; points labelled,
    with ``yerr`` (a column of 95% CI half-widths) as error bars when given. Draws into ``ax`` if given."""
    fig, ax = plt.subplots(figsize=(5.2, 3.8)) if ax is None else (ax.figure, ax)
    ax.errorbar(table[x], table[y], yerr=None if yerr is None else table[yerr], fmt="o", ms=5, capsize=2, zorder=3)
    for _, row in table.iterrows():
        ax.annotate(row[label], (row[x], row[y]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if len(table) >= 2:
        fit = stats.linregress(table[x], table[y])
        xs = np.linspace(table[x].min(), table[x].max(), 50)
        ax.plot(xs, fit.intercept + fit.slope * xs, color="grey", ls="--", label=f"fit: slope {fit.slope:.2f}, r = {fit.rvalue:.2f}")
        ax.legend(fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    fig.tight_layout()
    return fig


def verdict_colours() -> dict[str, object]:
    """One colour per verdict, the same in every figure that shows verdicts."""
    return {"held": sns.color_palette()[2], "contradicted": sns.color_palette()[3], "inconclusive": "grey",
            "not staged": "darkgrey"}


def verdicts(results: Sequence, title: str = "Claims: estimate, 95% CI and margin") -> plt.Figure:
    """One row per decided claim (:class:`fslib.evidence.Verdict`): the estimate with its 95% CI, the
    margin as a tick, coloured by verdict. The picture of a notebook's evidence at a glance."""
    colours = verdict_colours()
    fig, axes = plt.subplots(len(results), 1, figsize=(7.5, 0.95 * len(results) + 0.5), squeeze=False)
    for ax, v in zip(axes[:, 0], results):
        if not v.staged:  # nothing was estimated: say why in the row
            ax.set_axis_off()
            ax.set_title(f"not staged: {v.claim.claim}", fontsize=8, loc="left", color=colours[v.verdict])
            ax.text(0, 0.2, "its premise held at no level of the dial", fontsize=8, transform=ax.transAxes)
            continue
        ax.errorbar([v.estimate], [0], xerr=[[v.estimate - v.ci_low], [v.ci_high - v.estimate]], fmt="o",
                    color=colours[v.verdict], capsize=4, lw=2)
        ax.axvline(v.claim.margin, color="black", lw=1.2, ls="--", label="margin")
        lo, hi = min(v.ci_low, v.claim.margin), max(v.ci_high, v.claim.margin)
        pad = 0.15 * (hi - lo) + (0.5 if v.claim.kind == "paired" else 0.05)
        ax.set(xlim=(lo - pad, hi + pad), ylim=(-1, 1), yticks=[])
        ax.set_title(f"{v.verdict}: {v.claim.claim} ({v.claim.quantity})", fontsize=8, loc="left",
                     color=colours[v.verdict], fontweight="bold")
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def premise_along_dial(staging, xlabel: str, title: str = "") -> plt.Figure:
    """A premise decided level by level (:class:`fslib.evidence.Staging`): its estimate with the 95% CI at each
    level, the margin as a dashed line, the levels where it held shaded."""
    levels = list(staging.verdicts)
    numeric = all(isinstance(x, (int, float, np.number)) for x in levels)
    xs = levels if numeric else list(range(len(levels)))  # named datasets: one position each
    fig, ax = plt.subplots(figsize=(5.8, 3.4))
    colours = verdict_colours()
    half_step = min(np.diff(xs)) / 2 if len(xs) > 1 else 0.5
    for x, v in zip(xs, staging.verdicts.values()):
        ax.errorbar([x], [v.estimate], yerr=[[v.estimate - v.ci_low], [v.ci_high - v.estimate]], fmt="o", capsize=4,
                    color=colours[v.verdict])
        if v.verdict == "held":
            ax.axvspan(x - half_step, x + half_step, color=colours["held"], alpha=0.12, lw=0)
    ax.plot(xs, [v.estimate for v in staging.verdicts.values()], color="grey", lw=0.8, zorder=0)
    ax.axhline(staging.premise.margin, color="black", ls="--", lw=1.2, label=f"margin {staging.premise.margin:+g}")
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xticks(xs, labels=[level_name(x) for x in levels])
    ax.set(xlabel=xlabel, ylabel=staging.premise.quantity + " (points)",
           title=title or "\n".join(textwrap.wrap(f"premise: {staging.premise.claim}", 70)
                                     + ["(95% CI over seeds; shaded: held)"]))
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_vs_fit_time(board: "pd.DataFrame", score: str = "IQM", ci: str | None = "ci95",
                         ylabel: str = "IQM accuracy over tasks (%)",
                         title: str = "Accuracy vs fit time (95% CI over seeds)") -> plt.Figure:
    """Per method (``board``'s index), the ``score`` column with its 95% CI column ``ci`` (none if None)
    against the mean fit time per task ``fit_seconds`` on a log axis: 06_compare's IQM over tasks by
    default, 04's harmonic mean."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    seconds = board["fit_seconds"].clip(lower=1e-3)
    ax.errorbar(seconds, board[score], yerr=board[ci] if ci else None, fmt="o", capsize=3, color=sns.color_palette()[0])
    for method, x, y in zip(board.index, seconds, board[score]):
        ax.annotate(method, (x, y), fontsize=8, xytext=(5, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set(xlabel="mean fit time per task (s, log scale; 0 plotted at 1 ms)", ylabel=ylabel, title=title)
    fig.tight_layout()
    return fig


