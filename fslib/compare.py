"""06_compare: the kit's methods and baselines side by side on the same tasks, seeds and budget.

No paper compares MAMF, APEX, SMAT, LLU and CLIP-CITE under one protocol; the kit can, because every
method sits behind :class:`~fslib.methods.base.Method`. This module holds the comparison's logic:

- :func:`contenders`: every method that adapts CLIP from labelled shots, each with a ladder of values for its
  own hyper-parameter, and the shared training budget (the same epochs for every method that trains a
  tower; feature methods keep their own steps on cached features);
- :func:`choose_hyperparameters`: every ladder searched by the same rule (:func:`search_ladder`), on one
  dataset's validation split (base classes);
- :func:`run`: the protocols as tasks (few-shot, base-to-new, domain shift), one fit per method, task and
  seed on the same sample, with the fit's wall time and peak memory;
- :func:`scores`, :func:`leaderboard`, :func:`interquartile_mean`, :func:`probability_of_improvement`:
  per-seed scores, the table with 95% CIs over seeds, an aggregate robust to outlying tasks (the
  interquartile mean of Agarwal et al., 2021, "rliable"), and the probability that one method beats
  another on a task, paired by seed.

- :func:`episodic_contenders`, :func:`episode_validation`, :func:`episodic_tasks`: the meta-learners (MAMF,
  SMAT) beside the methods that need no meta-training, on SMAT's benchmark of N-way K-shot episodes
  (meta-training on the base classes of the in-distribution domains, episodes on their novel classes and on
  held-out domains); each meta-training runs once per seed and value (:class:`MetaTrained`).
"""
from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import psutil
import torch
from scipy import stats

from fslib import parallel
from fslib.data import ImageDataset, load_dataset
from fslib.evaluation import evaluate, harmonic_mean, mean_ci
from fslib.features import augmented_features, encode_images
from fslib.fewshot import Episode, base_new_split, base_to_new_sets, few_shot, fixed_test_sample
from fslib.methods import Method, Registered, create_method, list_methods, registered
from fslib.methods.llu import TIP_ALPHAS
from fslib.methods.mamf import meta_train_on_episodes, task_count
from fslib.methods.registry import TOWER_LEARNING_RATES
from fslib.methods.smat import Benchmark, ExpertRegion, meta_train
from fslib.models import Clip
from fslib.progress import tqdm

PROTOCOLS = ("few-shot", "base-to-new", "domain shift", "episodic")
PARAMETER_EFFICIENT = ("linear probe", "Tip-Adapter", "CLIP-Adapter", "LLU", "CoOp", "APEX")


@dataclass(frozen=True)
class Contender:
    """``make(value, seed)`` builds the method for one value of its hyper-parameter ``knob``.

    ``ladder`` orders the values the knob may take; the search starts from the three at ``start`` and
    climbs the ladder only while the best value sits at an edge of what was tried (:func:`search_ladder`).
    ``prepare(support, seed)`` fills the caches the method reads beyond the frozen features (augmented
    crops, SMAT's trunk); :func:`run` calls it before the fit is timed, as it encodes the features.
    """

    make: Callable[[object, int], Method]
    knob: str
    ladder: tuple
    start: int = 0
    prepare: Callable[[ImageDataset, int], object] | None = None


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


def search_ladder(score: Callable[[object], float], ladder: Sequence, start: int = 0, width: int = 3) -> dict[int, float]:
    """Scores of the ladder positions tried: ``width`` values from ``start`` first, then one more step past
    whichever edge of the tried range holds the best score (strictly: a tie with another value stays put),
    until the best is inside the range or the ladder ends. The same rule for every method, so no grid's
    edge decides a comparison. Returns ``{position: score}``; the best is the highest score (the lowest
    position on ties)."""
    if not 0 <= start <= max(0, len(ladder) - width):
        raise ValueError(f"start={start} must leave {width} values on a ladder of {len(ladder)} (allowed: 0..{max(0, len(ladder) - width)})")
    tried = {i: score(ladder[i]) for i in range(start, min(len(ladder), start + width))}
    while True:
        best = max(sorted(tried), key=lambda i: tried[i])
        step = -1 if best == min(tried) else 1 if best == max(tried) else 0
        beyond, tied = best + step, sum(value == tried[best] for value in tried.values()) > 1
        if step == 0 or tied or not 0 <= beyond < len(ladder) or len(tried) == 1:
            return tried
        tried[beyond] = score(ladder[beyond])


Validation = Callable[[Callable[[], Method]], float]


def base_class_validation(tune_on: str, shots: int, seed: int) -> Validation:
    """Score a fresh method fitted on ``shots`` per base class of ``tune_on``'s training split (seed ``seed``)
    on its validation split's base classes."""
    train, _ = base_new_split(load_dataset(tune_on, "train"))
    val, _ = base_new_split(load_dataset(tune_on, "val"))
    support = few_shot(train, shots, seed)
    return lambda make: evaluate(make().fit(support), val)


def episode_validation(episodes: dict[str, Sequence[Episode]]) -> Validation:
    """Mean query accuracy of a fresh method per validation episode, over every dataset's episodes."""
    every = [episode for per_dataset in episodes.values() for episode in per_dataset]
    return lambda make: float(np.mean([evaluate(make().fit(ep.support), ep.query) for ep in every]))


def choose_hyperparameters(candidates: dict[str, Contender], score: Validation, seed: int,
                           progress: bool = True) -> pd.DataFrame:
    """Every contender's ladder, searched alike (:func:`search_ladder`), each value built for ``seed`` and
    scored by ``score`` on a validation split (:func:`base_class_validation`, :func:`episode_validation`).
    Returns rows ``method, knob, value, val_accuracy, chosen, ladder_end`` (the value is the first or last
    of its ladder); the test splits are never seen."""
    rows = []
    for label, contender in tqdm(candidates.items(), desc="choosing hyper-parameters", disable=not progress, leave=False):
        if len(contender.ladder) == 1:
            rows.append({"method": label, "knob": contender.knob, "value": contender.ladder[0], "val_accuracy": np.nan,
                         "chosen": True, "ladder_end": False})
            continue
        tried = search_ladder(lambda value: score(lambda: contender.make(value, seed)), contender.ladder, contender.start)
        best = max(sorted(tried), key=lambda i: tried[i])
        rows += [{"method": label, "knob": contender.knob, "value": contender.ladder[i], "val_accuracy": tried[i],
                  "chosen": i == best, "ladder_end": i in (0, len(contender.ladder) - 1)} for i in sorted(tried)]
    return pd.DataFrame(rows)


def tuning_summary(tuning: pd.DataFrame) -> pd.DataFrame:
    """:func:`choose_hyperparameters`' rows as one line per method: its knob, the validation accuracy of each
    value tried, the value chosen, and whether that value is an end of its ladder (the best one may then
    lie beyond every value the ladder offers)."""
    def tried(rows: pd.DataFrame) -> str:
        return " · ".join(f"{v:g}: {a:.1f}" for v, a in zip(rows.value, rows.val_accuracy)) if rows.val_accuracy.notna().any() else "—"

    return pd.DataFrame([{"method": m, "knob": rows.knob.iloc[0], "validation accuracy by value": tried(rows),
                          "values tried": len(rows) if rows.val_accuracy.notna().any() else 0,
                          "chosen": rows.value[rows.chosen].iloc[0],
                          "at the ladder's end": "yes" if rows.ladder_end[rows.chosen].iloc[0] else ""}
                         for m, rows in tuning.groupby("method", sort=False)]).set_index("method")


@dataclass(frozen=True)
class Task:
    """One fit: a protocol's support sample for a seed, and the test sets it is scored on (by part)."""

    protocol: str
    dataset: str
    shots: int
    seed: int
    support: ImageDataset
    tests: dict[str, ImageDataset]


def few_shot_tasks(datasets: Sequence[str], shots: Sequence[int], seeds: Sequence[int],
                   test_per_class: int | None = None) -> Iterator[Task]:
    """All classes: ``k`` shots per class of the training split, scored on the test split."""
    for name in datasets:
        train, test = load_dataset(name, "train"), fixed_test_sample(load_dataset(name, "test"), test_per_class)
        for k in shots:
            for seed in seeds:
                yield Task("few-shot", name, k, seed, few_shot(train, k, seed), {"all": test})


def base_to_new_tasks(datasets: Sequence[str], shots: int, seeds: Sequence[int],
                      test_per_class: int | None = None) -> Iterator[Task]:
    """CoCoOp's protocol: fitted on the base half of the classes, scored on base and on new classes."""
    for name in datasets:
        base_train, base_test, new_test = base_to_new_sets(load_dataset(name, "train"),
                                                           fixed_test_sample(load_dataset(name, "test"), test_per_class))
        for seed in seeds:
            yield Task("base-to-new", name, shots, seed, few_shot(base_train, shots, seed), {"base": base_test, "new": new_test})


def domain_shift_tasks(source: str, targets: Sequence[str], shots: int, seeds: Sequence[int],
                       test_per_class: int | None = None) -> Iterator[Task]:
    """Fitted on all classes of ``source``; scored on the same classes drawn in each target's style."""
    train = load_dataset(source, "train")
    tests = {name: fixed_test_sample(load_dataset(name, "test"), test_per_class) for name in targets}
    for seed in seeds:
        yield Task("domain shift", source, shots, seed, few_shot(train, shots, seed), tests)


class MetaTrained:
    """``train(value, seed)`` run once per (``key(value)``, seed) and shared by every episode of that seed, with
    the wall time of each run kept in ``seconds`` (a meta-learner's one-off cost, beside its per-episode fit).
    ``key`` maps a knob's value to what meta-training depends on (``lambda value: None`` when the knob only
    acts at test time)."""

    def __init__(self, train: Callable[[object, int], object], key: Callable[[object], object] = lambda value: value):
        self.train, self.key, self.runs, self.seconds = train, key, {}, {}

    def __call__(self, value: object, seed: int) -> object:
        run = (self.key(value), seed)
        if run not in self.runs:
            start = time.perf_counter()
            self.runs[run] = self.train(value, seed)
            self.seconds[run] = time.perf_counter() - start
        return self.runs[run]

    def mean_seconds(self, value: object, seeds: Sequence[int]) -> float:
        """Mean wall time of the meta-training behind ``value`` over ``seeds``."""
        return float(np.mean([self.seconds[(self.key(value), seed)] for seed in seeds]))


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
    mamf_start = MetaTrained(lambda lr, seed: meta_train_on_episodes(
        clip, benches[seed].train[:mamf_episode_count(benches[seed], n_way)], "mamf", lr=lr, seed=seed))
    smat_experts = MetaTrained(lambda _, seed: meta_train(clip, benches[seed].train, seed=seed, progress=False, **options),
                               key=lambda test_time_lr: None)
    region = ExpertRegion(clip, options.get("blocks", 1))  # the frozen trunk's cache, shared with every SMAT run
    contenders = {
        "zero-shot": Contender(lambda value, seed: create_method("zero-shot", clip), "none", (None,)),
        "Tip-Adapter": Contender(lambda a, seed: create_method("Tip-Adapter", clip, alpha=a), "alpha", TIP_ALPHAS, 1),
        "fine-tuning (per episode)": Contender(lambda lr, seed: create_method("fine-tuning (per episode)", clip,
                                                                              epochs=adapt_epochs, lr=lr, seed=seed),
                                               "lr", TOWER_LEARNING_RATES, 1),
        "MAMF": Contender(lambda lr, seed: create_method("MAMF", clip, start=mamf_start(lr, seed), epochs=adapt_epochs,
                                                        lr=lr, seed=seed), "lr", TOWER_LEARNING_RATES, 1),
        "SMAT": Contender(lambda lr, seed: create_method("SMAT", clip, experts=smat_experts(lr, seed),
                                                        finetune="full" if lr else "none", steps=adapt_epochs, lr=lr,
                                                        seed=seed), "test-time lr", (0.0, 1e-4, 1e-3, 1e-2), 0,
                          lambda support, seed: region.pretrained_features(support)),
    }
    return contenders, {"MAMF": mamf_start, "SMAT": smat_experts}


def episodic_tasks(benches: dict[int, Benchmark], shots: int) -> Iterator[Task]:
    """Every test episode of every seed's benchmark as a task: fitted on its support set, scored on its query."""
    for seed, bench in benches.items():
        for name, episodes in bench.test.items():
            for episode in episodes:
                yield Task("episodic", name, shots, seed, episode.support, {"query": episode.query})


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc), so the next fit's resident-memory growth is its own."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def peak_memory(device: torch.device, interval_s: float = 0.01) -> Iterator[dict]:
    """Peak memory a block adds, in MB, in ``result["peak_mb"]`` once the block ends: the CUDA allocator's
    peak on a GPU; on a CPU the peak growth of resident memory, sampled every ``interval_s`` seconds."""
    result: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak_mb"] = (torch.cuda.max_memory_allocated(device) - start) / 2**20
        return
    _release_freed_memory()
    process, stop = psutil.Process(), threading.Event()
    start = peak = process.memory_info().rss

    def sample() -> None:
        nonlocal peak
        while not stop.wait(interval_s):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result["peak_mb"] = (max(peak, process.memory_info().rss) - start) / 2**20


def run(clip: Clip, candidates: dict[str, Contender], chosen: dict[str, object], tasks: Sequence[Task],
        progress: bool = True) -> pd.DataFrame:
    """Fit every contender (at its chosen value) once per task and score each of the task's test sets with
    their own class names. A method that cannot score unseen classes (the probe on new classes) gets NaN.

    Every dataset's frozen features (and what each contender's ``prepare`` caches) are encoded before the
    fits are timed; ``fit_seconds`` is the method's
    own measure where it keeps one (training only, as in :func:`fslib.evaluation.base_to_new`), else the
    wall time of ``fit``. The tasks are independent units of :func:`fslib.parallel.map_units` (every fit
    sets its own seeds); each (method, seed) is made once here first, so what a method builds once per seed
    (a meta-training run, :class:`MetaTrained`) is built in this process and shared with the workers. Returns
    rows ``protocol, dataset, shots, seed, method, part, accuracy, fit_seconds, peak_mb, trainable``.
    """
    tasks = list(tasks)
    for seed in sorted({task.seed for task in tasks}):
        for label, contender in candidates.items():
            contender.make(chosen[label], seed)
    fitted = parallel.map_units(lambda task: _fit_and_score(clip, candidates, chosen, task), tasks, desc="tasks",
                                progress=progress)
    return pd.DataFrame([row for rows in fitted for row in rows])


def _fit_and_score(clip: Clip, candidates: dict[str, Contender], chosen: dict[str, object], task: Task) -> list[dict]:
    """:func:`run`'s unit: every contender fitted on one task's support set and scored on its test sets."""
    for dataset in (task.support, *task.tests.values()):  # encoded once, before any fit is timed
        encode_images(clip, dataset, progress=False)
    for contender in candidates.values():
        if contender.prepare:
            contender.prepare(task.support, task.seed)
    rows = []
    for label, contender in candidates.items():
        method = contender.make(chosen[label], task.seed)
        with peak_memory(clip.device) as memory:
            start = time.perf_counter()
            method.fit(task.support)
            seconds = time.perf_counter() - start if method.fit_seconds is None else method.fit_seconds
        for part, test in task.tests.items():
            score = evaluate(method, test, test.classnames) if method.can_score(test.classnames) else float("nan")
            rows.append({"protocol": task.protocol, "dataset": task.dataset, "shots": task.shots, "seed": task.seed,
                         "method": label, "part": part, "accuracy": score, "fit_seconds": seconds,
                         "peak_mb": memory["peak_mb"], "trainable": method.trainable_parameters()})
    return rows


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


def best_of(per_seed: pd.DataFrame, protocol: str, setting: str, methods: Sequence[str]) -> str:
    """The method of ``methods`` with the highest mean score over seeds in one protocol and setting."""
    rows = per_seed[(per_seed.protocol == protocol) & (per_seed.setting == setting) & per_seed.method.isin(methods)]
    return rows.groupby("method").score.mean().idxmax()
