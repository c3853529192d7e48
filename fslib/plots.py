"""One plotting style for every notebook, and ``save`` into ``runs/figures/<notebook>/``."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from scipy import stats

from fslib.data import ImageDataset
from fslib.evaluation import harmonic_mean_by_seed, summarise
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
    """Horizontal bars of zero-shot accuracy per dataset (columns ``dataset, domain, zero_shot, chance``,
    and ``ci_low, ci_high`` for 95% error bars over the test images)."""
    table = table.sort_values("zero_shot")
    fig, ax = plt.subplots(figsize=(7, 0.38 * len(table) + 1))
    colours = {"id": sns.color_palette()[0], "ood": sns.color_palette()[3]}
    error = [table["zero_shot"] - table["ci_low"], table["ci_high"] - table["zero_shot"]] if "ci_low" in table else None
    ax.barh(table["dataset"], table["zero_shot"], xerr=error, capsize=2,
            color=[colours.get(d, "grey") for d in table["domain"]])
    ax.scatter(table["chance"], table["dataset"], marker="|", s=300, color="black", label="chance", zorder=3)
    for y, value in enumerate(table["zero_shot"]):
        ax.text(min(value + 3, 101), y, f"{value:.0f}", va="center", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles + ax.get_legend_handles_labels()[0], ["in-distribution", "out-of-distribution", "chance"],
              loc="lower right", fontsize=8)
    ax.set(xlim=(0, 108), xlabel="zero-shot accuracy (%)", title="Transfer difficulty (zero-shot, 95% CI)")
    fig.tight_layout()
    return fig


def facet_lines(results: "pd.DataFrame", x: str, xlabel: str, facet: str = "dataset", hue: str = "method",
                value: str = "accuracy", ncols: int = 5, log2_x: bool = False) -> plt.Figure:
    """One panel per ``facet``, one line per ``hue`` of mean ``value`` vs ``x``; bands are Student-t 95% CIs
    over the rows of each point (seeds, or seeds x test tasks)."""
    summary = summarise(results, [facet, hue, x], value)
    panels = list(dict.fromkeys(results[facet]))
    nrows = -(-len(panels) // ncols)
    ncols = min(ncols, len(panels))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.8 * ncols, 2.5 * nrows), squeeze=False)
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
        ax.set_xticks(xs, labels=[f"{v:g}" for v in xs], fontsize=8, rotation=45 if len(xs) > 4 else 0)
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


def gain_vs_difficulty(gains: "pd.DataFrame", ylabel: str = "base-class gain over zero-shot (points)",
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


def ablation_sweeps(sweeps: "pd.DataFrame") -> plt.Figure:
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


def domain_bars(results: "pd.DataFrame") -> plt.Figure:
    """Mean accuracy per variant, ID vs OOD, without and with fine-tuning; error bars are 95% CIs over tasks."""
    summary = summarise(results, ["finetune", "domain", "variant"])
    panels = list(dict.fromkeys(summary["finetune"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), sharey=True, squeeze=False)
    variants = list(dict.fromkeys(results["variant"]))
    top = (summary["mean"] + summary["ci95"].fillna(0)).max()
    for ax, mode in zip(axes[0], panels):
        part = summary[summary["finetune"] == mode]
        for offset, (domain, rows) in zip((-0.2, 0.2), part.groupby("domain", sort=False)):
            rows = rows.set_index("variant").reindex(variants)  # NaN (no bar) where a variant was not run
            ax.bar(np.arange(len(variants)) + offset, rows["mean"], 0.4, yerr=rows["ci95"], label=domain, capsize=2)
        ax.set_xticks(np.arange(len(variants)), variants, rotation=25, ha="right")
        ax.set_title("no fine-tuning" if mode == "none" else f"+ {mode} fine-tuning")
    axes[0][0].set(ylabel="accuracy (%)", ylim=(0, 1.2 * top))  # headroom so the legend covers no bar
    axes[0][0].legend(ncols=2, fontsize=8, loc="upper center")
    fig.tight_layout()
    return fig


def tradeoff(results: "pd.DataFrame") -> plt.Figure:
    """SMAT's ID vs OOD accuracy over sparsity τ, one line per expert count M (points labelled by τ); error
    bars are 95% CIs over seeds (when ``results`` has a ``seed`` column)."""
    fig, ax = plt.subplots(figsize=(5, 4))
    keys = ["experts", "tau", "domain"]
    per_seed = results.groupby(keys + ["seed"], as_index=False)["accuracy"].mean() if "seed" in results else results
    summary = summarise(per_seed, keys)
    mean = summary.pivot_table(index=["experts", "tau"], columns="domain", values="mean").reset_index()
    ci = summary.pivot_table(index=["experts", "tau"], columns="domain", values="ci95").reset_index()
    for colour, (m, rows) in zip(sns.color_palette(), mean.groupby("experts")):
        errors = ci.loc[rows.index]
        ax.errorbar(rows["ID"], rows["OOD"], xerr=errors["ID"], yerr=errors["OOD"], marker="o", color=colour,
                    capsize=3, label=f"M = {m}")
        for i, (_, row) in enumerate(rows.iterrows()):  # labels alternate above and below the line: no overlap
            ax.annotate(f"τ={row['tau']:g}", (row["ID"], row["OOD"]), fontsize=7, xytext=(4, 4 if i % 2 else -10),
                        textcoords="offset points")
    ax.set(xlabel="in-distribution accuracy (%)", ylabel="out-of-distribution accuracy (%)",
           title="Sparsity trade-off (95% CI over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def learning_curves(curves: "pd.DataFrame") -> plt.Figure:
    """Validation accuracy over meta-training tasks, one panel per domain, one line per variant; bands are
    95% CIs over seeds (columns ``variant``, ``tasks``, ``domain``, ``accuracy``, ``seed``)."""
    domains = list(dict.fromkeys(curves["domain"]))
    fig, axes = plt.subplots(1, len(domains), figsize=(5 * len(domains), 3.6), squeeze=False)
    summary = summarise(curves, ["domain", "variant", "tasks"])
    for ax, domain in zip(axes[0], domains):
        for colour, (variant, rows) in zip(sns.color_palette(), summary[summary["domain"] == domain].groupby("variant", sort=False)):
            ax.plot(rows["tasks"], rows["mean"], marker="o", ms=3, color=colour, label=variant)
            ax.fill_between(rows["tasks"], rows["mean"] - rows["ci95"], rows["mean"] + rows["ci95"], color=colour, alpha=0.2)
        ax.set(title=f"{domain} (validation episodes)", xlabel="meta-training tasks", ylabel="accuracy (%)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def expert_heatmaps(usage: np.ndarray, datasets: Sequence[str], overlap: np.ndarray) -> plt.Figure:
    """Expert-by-dataset router weights, and the experts' mask-overlap matrix."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.35 * len(datasets) + 2.2))
    sns.heatmap(usage, ax=axes[0], annot=True, fmt=".2f", cmap="viridis", yticklabels=datasets,
                xticklabels=[f"e{m}" for m in range(usage.shape[1])], cbar_kws={"label": "mean α"})
    axes[0].set(title="router weight per test dataset", xlabel="expert")
    sns.heatmap(overlap, ax=axes[1], annot=True, fmt=".2f", cmap="mako", vmin=0, vmax=1,
                xticklabels=[f"e{m}" for m in range(len(overlap))], yticklabels=[f"e{m}" for m in range(len(overlap))])
    axes[1].set(title="mask overlap (Jaccard)")
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


def kappa_tradeoff(sweep: "pd.DataFrame", zero_shot: "pd.Series") -> plt.Figure:
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


def transfer_bars(transfer: "pd.DataFrame",
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


def ablation_bars(ablation: "pd.DataFrame", title: str = "loss ablation (95% CI over seeds)") -> plt.Figure:
    """Base, new and HM(mean base, mean new) per method, bars with 95% CIs over seeds (``ablation``:
    base-to-new rows; methods in order of first appearance)."""
    long = harmonic_mean_by_seed(ablation).melt(id_vars=["method", "seed"], value_vars=["base", "new", "HM"], var_name="metric", value_name="accuracy")
    summary = summarise(long, ["method", "metric"])
    methods = list(dict.fromkeys(ablation["method"]))
    fig, ax = plt.subplots(figsize=(1.3 * len(methods) + 2, 3.6))
    for i, metric in enumerate(("base", "new", "HM")):
        rows = summary[summary["metric"] == metric].set_index("method").loc[methods]
        ax.bar(np.arange(len(methods)) + (i - 1) * 0.27, rows["mean"], 0.27, yerr=rows["ci95"], capsize=2, label=metric)
    ax.set_xticks(np.arange(len(methods)), methods)
    ax.set(ylabel="accuracy (%)", title=title, ylim=(0, 1.25 * (summary["mean"] + summary["ci95"]).max()))  # legend headroom
    ax.legend(ncols=3, fontsize=8, loc="upper center")
    fig.tight_layout()
    return fig


def verdicts(results: Sequence, title: str = "Claims: estimate, 95% CI and margin") -> plt.Figure:
    """One row per decided claim (:class:`fslib.evidence.Verdict`): the estimate with its 95% CI, the
    margin as a tick, coloured by verdict. The picture of a notebook's evidence at a glance."""
    colours = {"held": sns.color_palette()[2], "contradicted": sns.color_palette()[3], "inconclusive": "grey"}
    fig, axes = plt.subplots(len(results), 1, figsize=(7.5, 0.95 * len(results) + 0.5), squeeze=False)
    for ax, v in zip(axes[:, 0], results):
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


def improvement_matrix(pairs: "pd.DataFrame") -> plt.Figure:
    """Pairwise probability of improvement (row beats column on a task), annotated with its 95% CI; cells
    whose CI holds 0.5 are ties and drawn pale."""
    methods = list(dict.fromkeys(pairs["method"]))
    value = pairs.pivot(index="method", columns="versus", values="P(better)").loc[methods, methods]
    tie = pairs.pivot(index="method", columns="versus", values="reading").loc[methods, methods] == "tie"
    text = pairs.assign(label=[f"{p:.2f}\n[{lo:.2f}, {hi:.2f}]" for p, lo, hi in
                               zip(pairs["P(better)"], pairs.ci_low.clip(0, 1), pairs.ci_high.clip(0, 1))])
    labels = text.pivot(index="method", columns="versus", values="label").loc[methods, methods].fillna("")
    fig, ax = plt.subplots(figsize=(1.05 * len(methods) + 2, 0.8 * len(methods) + 1.2))
    sns.heatmap(value.where(~tie), annot=labels, fmt="", cmap="RdBu", vmin=0, vmax=1, cbar_kws={"label": "P(row beats column)"},
                annot_kws={"fontsize": 6.5}, ax=ax, linewidths=0.5, linecolor="white")
    sns.heatmap(value.where(tie), annot=labels.where(tie, ""), fmt="", cmap=["#eeeeee"], cbar=False, annot_kws={"fontsize": 6.5,
                "color": "grey"}, ax=ax, linewidths=0.5, linecolor="white")
    ax.set(xlabel="", ylabel="", title="Probability of improvement, paired by seed (grey: a tie, the CI holds 0.5)")
    fig.tight_layout()
    return fig
