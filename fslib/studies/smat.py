"""03_smat's experiment: SMAT, its ablation and its baselines meta-trained and tested on the same episodes
(Chen et al., ICML 2024, main results, Table 4, Fig. 1), and the sparsity / expert-count trade-off (Fig. 5).

Every variant is a :class:`~fslib.methods.smat.SparseInterpolatedExperts` meta-trained on a seed's
:class:`~fslib.protocols.Benchmark`; :func:`evaluate_experts` scores a dataset's episodes side by side (the
speed path of fitting :class:`~fslib.methods.smat.SMAT` on each episode, equivalence-tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from fslib import parallel
from fslib.bench import Stage
from fslib.evaluation import accuracy, summarise
from fslib.fewshot import Episode
from fslib.methods.smat import SparseInterpolatedExperts, adapt_to_tasks, cosine_logits, meta_train
from fslib.methods.smat_region import ExpertRegion, stack_tasks, task_tensors
from fslib.models import Clip
from fslib.protocols import Benchmark, best_on_validation


def expert_usage(experts: SparseInterpolatedExperts, episodes_by_domain: dict[str, list[Episode]]) -> np.ndarray:
    """Mean gate α per (domain, expert): rows follow ``episodes_by_domain``'s order."""
    rows = []
    for episodes in episodes_by_domain.values():
        with torch.no_grad():
            gates = []
            for ep in episodes:
                t = task_tensors(experts.region, ep)
                gates.append(experts.gates(t.support_pre, t.support_labels, t.num_classes, False)[0])
        rows.append(torch.stack(gates).mean(0).cpu().numpy())
    return np.stack(rows)


def specialisation(usage: np.ndarray) -> float:
    """How much the router's choice depends on the dataset: the largest across-dataset spread (max - min)
    of any expert's mean gate in :func:`expert_usage`'s table."""
    return float((usage.max(axis=0) - usage.min(axis=0)).max())


def mask_overlap(experts: SparseInterpolatedExperts) -> np.ndarray:
    """Jaccard overlap of the experts' test-time binary masks: (M, M)."""
    with torch.no_grad():
        binary = (experts.masks(training=False) > 0).float()
    intersection = binary.T @ binary
    sizes = binary.sum(0)
    union = sizes[:, None] + sizes[None, :] - intersection
    return (intersection / union.clamp_min(1)).cpu().numpy()


def evaluate_experts(experts: SparseInterpolatedExperts, episodes: dict[str, list[Episode]], label: str,
                     finetune: str = "none", steps: int = 5, lr: float = 0.0) -> list[dict]:
    """Query accuracy per episode of every dataset, without or with test-time fine-tuning: what :class:`SMAT`
    fitted on each episode scores, with a dataset's episodes side by side (:func:`adapt_to_tasks`), 25 at a
    time from the cached trunk and one at a time through the whole tower (its activations are large)."""
    chunk = 25 if experts.region.blocks is not None else 1
    rows = []
    for dataset, tasks in episodes.items():
        for start in range(0, len(tasks), chunk):
            part = stack_tasks([task_tensors(experts.region, ep) for ep in tasks[start:start + chunk]])
            params, protos = adapt_to_tasks(experts, part.support, part.support_labels, part.support_pre, part.num_classes,
                                            finetune, steps, lr)
            with torch.no_grad():
                logits = cosine_logits(experts.region.batched_features(params, part.query), protos)
            rows += [{"variant": label, "finetune": finetune, "dataset": dataset, "task": start + i,
                      "accuracy": accuracy(task_logits, task_labels)}
                     for i, (task_logits, task_labels) in enumerate(zip(logits, part.query_labels))]
    return rows


def choose_finetune_lr(rows_by_lr: dict[float, list[dict]]) -> float:
    """The fine-tuning LR whose validation rows (:func:`evaluate_experts` on ``bench.val`` at each LR) have the
    best mean accuracy over every dataset (PMF's HPS, on the validation split rather than the first test
    tasks); 0 means no fine-tuning."""
    rows = pd.DataFrame([{"lr": lr, "accuracy": row["accuracy"]} for lr, rows in rows_by_lr.items() for row in rows])
    return float(best_on_validation(rows, ["lr"]))


VARIANTS: dict[str, tuple[str, dict]] = {  # label -> (masks mode, meta_train overrides), in the notebook's order
    "pretrained ProtoNet": ("none", {}),
    "dense meta-tuning": ("dense", {}),
    "SMAT": ("learned", {}),
    "SMAT w/o teachers": ("learned", {"kd_weight": 0.0}),  # the paper's "without dense teachers" ablation
    "random masks": ("random", {}),
    "magnitude masks": ("magnitude", {}),
}
CURVE_VARIANTS = ("dense meta-tuning", "SMAT", "SMAT w/o teachers")  # learning curves (the paper's Fig. 1)
UNIT_COST = {"pretrained ProtoNet": 1, "dense meta-tuning": 3, "SMAT": 4, "SMAT w/o teachers": 2, "random masks": 2,
             "magnitude masks": 2}  # relative run time of a variant's unit (measured), to hand out the longest first


@dataclass
class SeedRun:
    """Everything one seed of :func:`compare_variants` produced."""

    results: pd.DataFrame           # accuracy per (variant, finetune, dataset, task)
    experts: dict[str, SparseInterpolatedExperts]
    finetune_lr: dict[str, float]   # the LR each fine-tuned variant chose on validation
    curves: pd.DataFrame            # validation accuracy per (variant, tasks, domain) during meta-training


def domain_accuracy(experts: SparseInterpolatedExperts, bench: Benchmark, split: str = "val") -> dict[str, float]:
    """Mean accuracy without fine-tuning per domain (ID and OOD) on ``split``'s episodes (the learning-curve
    monitor; a test-side dial's levels are left out)."""
    episodes = {name: eps for name, eps in getattr(bench, split).items() if bench.domain(name) != "dial"}
    rows = pd.DataFrame(evaluate_experts(experts, episodes, ""))
    return rows.groupby(rows["dataset"].map(bench.domain)).accuracy.mean().to_dict()


def warm_region(region: ExpertRegion, benches: Sequence[Benchmark]) -> None:
    """Cache the trunk's tokens and θ_pre features of every image the benchmarks' episodes use (:meth:`ExpertRegion.warm`)."""
    episodes = [e for bench in benches for e in [*bench.train, *(e for split in (bench.val, bench.test) for eps in split.values()
                                                                for e in eps)]]
    region.warm([part for episode in episodes for part in (episode.support, episode.query)])


def _shared_region(clip: Clip, benches: dict[int, Benchmark], blocks: int | None) -> ExpertRegion:
    """The expert region of :func:`compare_variants` and :func:`sparsity_tradeoff`: its trunk cache warmed for every
    seed's benchmark, and it and the model shared by reference with :mod:`fslib.parallel`'s workers."""
    region = ExpertRegion(clip, blocks)
    warm_region(region, list(benches.values()))
    parallel.share(clip, region)
    return region


def _scored(experts: SparseInterpolatedExperts, bench: Benchmark, split: str, label: str, *finetune) -> list[dict]:
    """:func:`evaluate_experts` on ``split``'s episodes of ``bench``, each row saying its ``split``."""
    return [{**row, "split": split} for row in evaluate_experts(experts, getattr(bench, split), label, *finetune)]


def _train_and_test_variant(clip: Clip, bench: Benchmark, region: ExpertRegion, label: str, sparsity: float, num_experts: int,
                            seed: int, density: float | None, finetune_steps: int, finetune_lrs: Sequence[float],
                            finetuned_variants: Sequence[str], curve_every: int, meta_options: dict) -> tuple:
    """One variant of one seed: meta-train, test without (and maybe with) fine-tuning; (rows, experts, LR, curve rows)."""
    mode, overrides = VARIANTS[label]
    monitor = (lambda experts: domain_accuracy(experts, bench)) if label in CURVE_VARIANTS else None
    experts = meta_train(clip, bench.train, mode, num_experts, sparsity, seed=seed, region=region, density=density,
                         monitor=monitor, monitor_every=curve_every, progress=False, **{**meta_options, **overrides})
    curves = [{"variant": label, "tasks": h["tasks"], "domain": d, "accuracy": h[d]} for h in experts.history for d in ("ID", "OOD")]
    rows, chosen = [row for split in ("test", "val") for row in _scored(experts, bench, split, label)], None
    if label in finetuned_variants:
        on_validation = {lr: _scored(experts, bench, "val", label, "full", finetune_steps, lr) for lr in finetune_lrs}
        chosen = choose_finetune_lr(on_validation)
        rows += _scored(experts, bench, "test", label, "full", finetune_steps, chosen) + on_validation[chosen]
    return rows, experts, chosen, curves


def compare_variants(clip: Clip, benches: dict[int, Benchmark], sparsity: float, num_experts: int, blocks: int | None = 1,
                     finetune_steps: int = 5, finetune_lrs: Sequence[float] = (0.0, 1e-4, 1e-3),
                     finetuned_variants: Sequence[str] = ("pretrained ProtoNet", "dense meta-tuning", "SMAT"),
                     curve_every: int = 100, **meta_options) -> dict[int, SeedRun]:
    """SMAT, its ablation and its baselines, meta-trained on the same episodes and tested on the same episodes,
    for every seed of ``benches`` (seed -> its benchmark).

    Hand-designed masks sit in the same router + M-expert framework at the *realised merged density* of
    SMAT's learned masks (so SMAT is trained first). Every variant is scored on the test and the validation
    episodes (column ``split``; validation is where rivals and premises are decided) without fine-tuning;
    ``finetuned_variants`` also with full fine-tuning, at the LR each chose on validation from
    ``finetune_lrs``. ``CURVE_VARIANTS`` are scored on the validation episodes every ``curve_every`` tasks.
    Each (seed, variant) is one unit of :func:`fslib.parallel.map_units`: it sets its own seeds, so where it
    runs does not change its result.
    """
    unknown = sorted(set(finetuned_variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; allowed: {', '.join(VARIANTS)}")
    region = _shared_region(clip, benches, blocks)
    hand_made = [label for label, (mode, _) in VARIANTS.items() if mode in ("random", "magnitude")]
    merged: dict[int, float] = {}  # SMAT's realised merged density per seed: filled before the hand-made masks fork

    def variant(unit: tuple[int, str]) -> tuple:
        seed, label = unit
        return _train_and_test_variant(clip, benches[seed], region, label, sparsity, num_experts, seed,
                                       merged[seed] if label in hand_made else None, finetune_steps, finetune_lrs,
                                       finetuned_variants, curve_every, meta_options)

    longest_first = sorted((label for label in VARIANTS if label not in hand_made), key=lambda label: -UNIT_COST[label])
    first = [(seed, label) for label in longest_first for seed in benches]
    done = dict(zip(first, parallel.map_units(variant, first, desc="SMAT variants x seeds")))
    merged.update({seed: float(done[(seed, "SMAT")][1].density(merged=True)) for seed in benches})
    second = [(seed, label) for label in hand_made for seed in benches]
    done.update(zip(second, parallel.map_units(variant, second, desc="hand-designed masks x seeds")))
    runs = {}
    for seed, bench in benches.items():
        units = [done[(seed, label)] for label in VARIANTS]
        results = pd.DataFrame([row for rows, *_ in units for row in rows])
        results["domain"] = results["dataset"].map(bench.domain)
        runs[seed] = SeedRun(results, {label: unit[1] for label, unit in zip(VARIANTS, units)},
                             {label: unit[2] for label, unit in zip(VARIANTS, units) if unit[2] is not None},
                             pd.DataFrame([row for *_, curves in units for row in curves]))
    return runs


def sparsity_tradeoff(clip: Clip, benches: dict[int, Benchmark], points: Sequence[tuple[float, int]], blocks: int | None = 1,
                      already_trained: dict[tuple[int, float, int], SparseInterpolatedExperts] | None = None,
                      **meta_options) -> pd.DataFrame:
    """Test and validation accuracy (column ``split``) without fine-tuning and realised test-time sparsity of SMAT
    at each ``(τ, M)`` of ``points``
    for every seed of ``benches``, meta-trained on the same episodes; ``already_trained`` maps
    ``(seed, τ, M)`` to experts to reuse. Each (seed, τ, M) is one unit of :func:`fslib.parallel.map_units`."""
    already_trained = already_trained or {}
    region = _shared_region(clip, benches, blocks)

    def point(unit: tuple[int, float, int]) -> list[dict]:
        seed, tau, m = unit
        experts = already_trained.get(unit) or meta_train(clip, benches[seed].train, "learned", m, tau, seed=seed, region=region,
                                                          progress=False, **meta_options)
        realised = 1 - float(experts.density().mean())
        return [{**row, "tau": tau, "experts": m, "realised sparsity": realised, "domain": benches[seed].domain(row["dataset"]),
                 "seed": seed} for split in ("test", "val") for row in _scored(experts, benches[seed], split, "SMAT")]

    units = sorted(((seed, tau, m) for seed in benches for tau, m in points), key=lambda u: (u in already_trained, -u[2]))
    return pd.DataFrame([row for rows in parallel.map_units(point, units, desc="SMAT at (tau, M) x seeds") for row in rows])


def tradeoff_points(P: SimpleNamespace) -> list[tuple[float, int]]:
    """The (τ, M) at which 03 meta-trains SMAT for the trade-off figure: each further τ at ``P.experts``, each
    further M (and one expert, no routing) at ``P.sparsity``, and the main run's own point."""
    points = {(tau, P.experts) for tau in P.taus} | {(P.sparsity, m) for m in [1, *P.expert_counts]}
    return sorted(points | {(P.sparsity, P.experts)})


def planned_work(P: SimpleNamespace) -> list[Stage]:
    """03's work at parameters ``P`` (:func:`fslib.bench.expected_cost`), counted as image passes through the whole
    image tower (``expert_blocks="all"``; with the last blocks only, a cached trunk makes it far less): every
    meta-trained variant and trade-off point reads ``train_tasks`` episodes of support and query images per seed,
    and every model scores the validation and test episodes of each ID, OOD and dial dataset, the fine-tuned
    variants once more per LR tried. Dense teachers' inner steps and the learning curves come on top."""
    seeds, per_way = len(P.seeds), P.n_way
    domains = len(P.id_datasets) + len(P.ood_datasets) + len(P.levels)
    per_scoring = domains * (P.val_tasks + P.test_tasks) * per_way * (P.shots + P.queries)
    trained_variants = len(VARIANTS) - 1  # the pretrained ProtoNet is not meta-trained
    further_points = len(tradeoff_points(P)) - 1  # the main run's point is reused
    per_fit = P.train_tasks * per_way * (P.shots + P.train_queries)
    finetuned = 3 * sum(lr > 0 for lr in P.finetune_lrs)  # compare_variants' three fine-tuned variants per LR
    return [
        Stage("meta-training SMAT, its ablation and baselines", seeds * trained_variants,
              seeds * trained_variants * per_fit, seeds * len(VARIANTS) * per_scoring),
        Stage("test-time fine-tuning (3 variants x LRs)", seeds * finetuned,
              seeds * finetuned * P.finetune_steps * domains * (P.val_tasks + P.test_tasks) * per_way * P.shots,
              seeds * finetuned * per_scoring),
        Stage("the sparsity / expert trade-off", seeds * further_points, seeds * further_points * per_fit,
              seeds * further_points * per_scoring),
    ]


# -- figures ---------------------------------------------------------------------------------------
def domain_bars(results: pd.DataFrame) -> plt.Figure:
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


def tradeoff(results: pd.DataFrame) -> plt.Figure:
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


def learning_curves(curves: pd.DataFrame) -> plt.Figure:
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
