"""06_compare: the kit's methods and baselines side by side on the same tasks, seeds and budget.

No paper compares MAMF, APEX, SMAT, LLU and CLIP-CITE under one protocol; the kit can, because every
method sits behind :class:`~fslib.methods.base.Method` and one registry. The protocols themselves (tasks,
the runner, choosing every knob by one rule on validation) are in :mod:`fslib.protocols`; this module
holds the comparison's contenders and its summaries:

- :func:`contenders`: every registered method that adapts CLIP from labelled shots, each with the ladder of
  its knob, and the shared training budget (the same epochs for every method that trains a tower; feature
  methods keep their own steps on cached features); :func:`parameter_efficient` names those that train no
  tower;
- :func:`episodic_contenders`: the meta-learners (MAMF, SMAT) beside the methods that need no
  meta-training, on SMAT's benchmark of N-way K-shot episodes (meta-training on the base classes of the
  in-distribution domains, episodes on their novel classes and on held-out domains); each meta-learner's
  declared meta-training step runs once per seed and value (:class:`~fslib.protocols.MetaTrained`);
- :func:`scores`, :func:`leaderboard`, :func:`interquartile_mean`, :func:`probability_of_improvement`,
  :func:`improvement_matrix`: per-seed scores, the table with 95% CIs over seeds, an aggregate robust to
  outlying tasks (the interquartile mean of Agarwal et al., 2021, "rliable"), the probability that one
  method beats another on a task, paired by seed, and its figure.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from scipy import stats

from fslib.bench import Stage, dataset_sizes
from fslib.evaluation import harmonic_mean, mean_ci
from fslib.features import augmented_features
from fslib.methods import Method, Registered, create_method, list_methods, registered
from fslib.methods.llu import TIP_ALPHAS
from fslib.methods.mamf import task_count
from fslib.methods.registry import TOWER_LEARNING_RATES
from fslib.methods.smat_region import ExpertRegion
from fslib.models import Clip
from fslib.protocols import LADDER_TRIES, Benchmark, Contender, MetaTrained
from fslib.world.dials import DIALS

PROTOCOLS = ("few-shot", "base-to-new", "domain shift", "episodic")


def contenders(clip: Clip, epochs: int, steps: int = 300, views: int = 4) -> dict[str, Contender]:
    """Every registered method 06 compares on labelled shots (:func:`~fslib.methods.list_methods`), in
    registration order, each with the ladder of its registered knob. The shared budget goes to every
    method that takes it: ``epochs`` to those that train a tower, ``steps`` and ``views`` (augmented crops,
    cached before the fits are timed) to those on cached features, and the seed to those that draw."""
    crops = lambda support, seed: augmented_features(clip, support, views, seed)  # shared by the methods with views
    budget = dict(epochs=epochs, steps=steps, views=views)
    return {name: _contender(clip, registered(name), budget, crops) for name in list_methods(compared=True)}


def _contender(clip: Clip, method: Registered, budget: dict, crops: Callable) -> Contender:
    shared = {option: value for option, value in budget.items() if method.accepts(option)}
    seeded = method.accepts("seed")

    def make(value: object, seed: int) -> Method:
        knob = {method.knob.name: value} if method.knob else {}
        return create_method(method.name, clip, **shared, **knob, **({"seed": seed} if seeded else {}))

    knob, ladder, start = (method.knob.name, method.knob.ladder, method.knob.start) if method.knob else ("none", (None,), 0)
    return Contender(make, knob, ladder, start, crops if "views" in shared else None)


def parameter_efficient() -> list[str]:
    """06's contenders that adapt without training a tower (registered ``parameter_efficient``): the rivals of
    the claims about "every parameter-efficient method"."""
    return [name for name in list_methods(compared=True) if registered(name).parameter_efficient]


def mamf_episode_count(bench: Benchmark, n_way: int) -> int:
    """MAMF's task count on a benchmark: its rule K(n) (:func:`~fslib.methods.mamf.task_count`) for each
    in-distribution domain's meta-training classes, summed; MAMF meta-trains on that many of the
    benchmark's meta-training episodes."""
    classes = {ep.dataset: set() for ep in bench.train}
    for ep in bench.train:
        classes[ep.dataset].update(ep.classes)
    return sum(task_count(n_way, len(seen)) for seen in classes.values())


def episodic_contenders(clip: Clip, benches: dict[int, Benchmark], n_way: int, adapt_epochs: int = 5,
                        smat_options: dict | None = None) -> tuple[dict[str, Contender], dict[str, MetaTrained]]:
    """The methods on N-way episodes, each fitted on an episode's support set: zero-shot and Tip-Adapter (no
    training), test-time fine-tuning from the pretrained weights (``adapt_epochs`` epochs, 01's meta-test),
    MAMF (the same test-time fine-tuning from MAMF's meta-trained weights, one knob for both LRs as in 01)
    and SMAT (03's experts and router, meta-trained once per seed with ``smat_options``; its knob is 03's
    test-time fine-tuning LR, 0 = none). Returns the contenders and the meta-training runs by method."""
    options = {"masks": "learned", "num_experts": 4, "sparsity": 0.9, **(smat_options or {})}
    # each meta-learner's declared meta-training step, once per seed (and per LR for MAMF, whose knob is both)
    mamf = MetaTrained(lambda lr, seed: create_method("MAMF", clip, lr=lr, seed=seed).meta_train(
        benches[seed].train[:mamf_episode_count(benches[seed], n_way)]))
    smat = MetaTrained(lambda _, seed: create_method("SMAT", clip, seed=seed, meta=options).meta_train(benches[seed].train),
                       key=lambda test_time_lr: None)
    region = ExpertRegion(clip, options.get("blocks", 1))  # the frozen trunk's cache, shared with every SMAT run
    contenders = {
        "zero-shot": Contender(lambda value, seed: create_method("zero-shot", clip), "none", (None,)),
        "Tip-Adapter": Contender(lambda a, seed: create_method("Tip-Adapter", clip, alpha=a), "alpha", TIP_ALPHAS, 1),
        "fine-tuning (per episode)": Contender(lambda lr, seed: create_method("fine-tuning (per episode)", clip,
                                                                              epochs=adapt_epochs, lr=lr, seed=seed),
                                               "lr", TOWER_LEARNING_RATES, 1),
        "MAMF": Contender(lambda lr, seed: create_method("MAMF", clip, start=mamf(lr, seed).start, epochs=adapt_epochs,
                                                        lr=lr, seed=seed), "lr", TOWER_LEARNING_RATES, 1),
        "SMAT": Contender(lambda lr, seed: create_method("SMAT", clip, experts=smat(lr, seed).experts,
                                                        finetune="full" if lr else "none", steps=adapt_epochs, lr=lr,
                                                        seed=seed), "test-time lr", (0.0, 1e-4, 1e-3, 1e-2), 0,
                          lambda support, seed: region.pretrained_features(support)),
    }
    return contenders, {"MAMF": mamf, "SMAT": smat}


def planned_work(P: SimpleNamespace) -> list[Stage]:
    """06's work at parameters ``P`` (:func:`fslib.bench.expected_cost`), counted before the dataset rule has
    picked anything: each protocol as if it ran on the ``datasets_per_protocol`` largest datasets of the pool (an
    upper bound), the contenders that train through a tower (those given ``epochs``) fitted per task, every
    contender scoring each task's test images once, and the meta-learners' episodes; domain shift as one fit on
    the dial's largest level scoring every level's validation and test images. Methods on cached features cost
    their encoding; MAMF's meta-training (its K(n) episodes) is left out."""
    sizes = dataset_sizes(P.datasets, P.test_per_class).sort_values("test", ascending=False)
    runs = sizes.head(P.datasets_per_protocol)
    seeds, trainers = len(P.seeds), sum(registered(name).accepts("epochs") for name in list_methods(compared=True))
    methods = len(list_methods(compared=True))
    tuned = dataset_sizes([P.tune_on]).iloc[0]
    shift = dataset_sizes(list(DIALS[P.shift_dial].datasets(tuple(P.shift_levels)).values()), P.test_per_class)
    per_episode = P.n_way * (P.episode_shots + P.episode_queries)
    test_episodes = seeds * (len(P.episode_id_datasets) + len(P.episode_ood_datasets)) * P.test_tasks
    adapted = 2 * P.adapt_epochs * P.n_way * P.episode_shots  # fine-tuning per episode and MAMF, per episode
    return [
        Stage("choosing the knobs (first seed, one dataset)", trainers * LADDER_TRIES,
              int(trainers * LADDER_TRIES * P.base_to_new_shots * tuned.base * P.epochs),
              int(methods * LADDER_TRIES * tuned.val // 2)),
        Stage("few-shot", trainers * seeds * len(P.shots) * len(runs),
              int(trainers * seeds * sum(P.shots) * runs.classes.sum() * P.epochs),
              int(methods * seeds * len(P.shots) * runs.test.sum())),
        Stage("base-to-new", trainers * seeds * len(runs),
              int(trainers * seeds * P.base_to_new_shots * runs.base.sum() * P.epochs),
              int(methods * seeds * runs.test.sum())),
        Stage("domain shift (every dial level)", trainers * seeds,
              int(trainers * seeds * P.dg_shots * shift.classes.max() * P.epochs),
              int(methods * seeds * (shift.val + shift.test).sum())),
        Stage("episodes: SMAT's meta-training, then every learner", seeds,
              seeds * P.train_tasks * per_episode + test_episodes * adapted, 5 * test_episodes * per_episode),
    ]


def scores(results: pd.DataFrame) -> pd.DataFrame:
    """One score per (protocol, setting, method, seed), averaged over datasets first: few-shot accuracy per
    shot count, base-to-new HM(mean base, mean new) (NaN where a method has no new-class score), the
    mean accuracy over the shifted domains, and the mean episode accuracy per dataset for episodes. Rows ``protocol, setting, method, seed, score``."""
    rows = []
    for (protocol, shots, method, seed), part in results.groupby(["protocol", "shots", "method", "seed"], sort=False):
        if protocol == "base-to-new":
            by_part = part.groupby("part").accuracy.mean()
            score = harmonic_mean(by_part["base"], by_part["new"]) if by_part.notna().all() else np.nan
            setting = "HM"
        else:
            by_dataset = protocol in ("few-shot", "episodic")
            score = part.groupby("dataset").accuracy.mean().mean() if by_dataset else part.accuracy.mean()
            setting = {"few-shot": f"{shots} shots", "episodic": f"{shots}-shot episodes"}.get(protocol, "targets")
        rows.append({"protocol": protocol, "setting": setting, "method": method, "seed": seed, "score": score})
    return pd.DataFrame(rows)


def task_scores(results: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per task unit (protocol, dataset, shots, part) and seed: the units the aggregate and the
    pairwise comparison run over. Columns: one per method."""
    units = results.assign(unit=results.protocol + " · " + results.dataset + " · " + results.shots.astype(str) + " shots · "
                           + results.part)
    return units.pivot_table(index=["seed", "unit"], columns="method", values="accuracy", dropna=False)


def interquartile_mean(values: Sequence[float]) -> float:
    """The mean of the middle 50% of ``values`` (scipy's 25%-trimmed mean): robust to a task or two far out."""
    return float(stats.trim_mean(np.asarray(values, dtype=float), 0.25))


def aggregate(results: pd.DataFrame) -> pd.DataFrame:
    """Per method: the interquartile mean over the task units every method can score, per seed, then its
    mean and 95% CI over seeds. Rows ``method, IQM, ci95, units``."""
    table = task_scores(results).dropna(axis="index", how="any")
    per_seed = table.groupby(level="seed").agg(interquartile_mean)
    units = table.index.get_level_values("unit").nunique()
    rows = [{"method": m, "IQM": (ci := mean_ci(per_seed[m].tolist())).mean, "ci95": ci.half_width, "units": units}
            for m in per_seed.columns]
    return pd.DataFrame(rows).sort_values("IQM", ascending=False, ignore_index=True)


def probability_of_improvement(results: pd.DataFrame, better: str, worse: str) -> tuple[float, float, float, int]:
    """P(``better`` scores higher than ``worse`` on a task), ties counted half, over the task units both can
    score; computed per seed and returned as (mean, CI low, CI high, units) with a 95% t-interval over seeds."""
    table = task_scores(results)[[better, worse]].dropna()
    wins = (np.sign(table[better] - table[worse]) + 1) / 2
    per_seed = wins.groupby(level="seed").mean()
    ci = mean_ci(per_seed.tolist())
    return ci.mean, ci.mean - ci.half_width, ci.mean + ci.half_width, table.index.get_level_values("unit").nunique()


def pairwise(results: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Probability of improvement of every row method over every column method (the diagonal empty), and
    the reading of its CI: ``better``/``worse`` when it clears 0.5, ``tie`` when it holds 0.5."""
    rows = []
    for a in methods:
        for b in methods:
            if a != b:
                p, low, high, units = probability_of_improvement(results, a, b)
                reading = "better" if low > 0.5 else "worse" if high < 0.5 else "tie"
                rows.append({"method": a, "versus": b, "P(better)": p, "ci_low": low, "ci_high": high, "units": units,
                             "reading": reading})
    return pd.DataFrame(rows)


def leaderboard(results: pd.DataFrame) -> pd.DataFrame:
    """One row per method: each protocol's score as ``mean ± 95% CI`` over seeds, the IQM aggregate,
    trainable parameters, the mean fit time per task and the largest peak memory of a fit."""
    per_seed = scores(results)
    summary = {}
    for (protocol, setting), part in per_seed.groupby(["protocol", "setting"], sort=False):
        column = f"{protocol} ({setting})"
        for method, seeds in part.groupby("method", sort=False):
            values = seeds.score.dropna().tolist()
            summary.setdefault(method, {})[column] = str(mean_ci(values)) if values else "n/a"
    table = pd.DataFrame.from_dict(summary, orient="index")
    robust = aggregate(results).set_index("method")
    table["IQM over tasks"] = [f"{robust.IQM[m]:.1f} ± {robust.ci95[m]:.1f}" for m in table.index]
    cost = results.groupby("method").agg(trainable=("trainable", "max"), fit_seconds=("fit_seconds", "mean"),
                                         peak_mb=("peak_mb", "max"))
    table = table.join(cost.round({"fit_seconds": 3, "peak_mb": 1}))
    return table.loc[robust.index].rename_axis("method")


def decide_inputs(per_seed: pd.DataFrame, protocol: str, setting: str, method: str) -> pd.Series:
    """A method's per-seed score in one protocol and setting, indexed by seed (a side of a claim)."""
    rows = per_seed[(per_seed.protocol == protocol) & (per_seed.setting == setting) & (per_seed.method == method)]
    return rows.set_index("seed").score.rename(method)


def scored_in(per_seed: pd.DataFrame, protocol: str, setting: str) -> list[str]:
    """The methods with a score in one protocol and setting (a linear probe has none on new classes): those
    that can be a rival there."""
    rows = per_seed[(per_seed.protocol == protocol) & (per_seed.setting == setting)]
    return list(dict.fromkeys(rows.dropna(subset=["score"]).method))


# -- figures ---------------------------------------------------------------------------------------
def improvement_matrix(pairs: pd.DataFrame) -> plt.Figure:
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
