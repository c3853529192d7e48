"""Metrics (accuracy, harmonic mean, mean with a 95% CI) and the experiment drivers every notebook uses:
few-shot sweeps, base-to-new generalisation, cross-dataset transfer, selection on a validation split."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats

from fslib import parallel
from fslib.data import load_dataset
from fslib.fewshot import base_to_new_sets, few_shot, fixed_test_sample
from fslib.progress import tqdm


def accuracy(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    predictions = np.asarray(torch.as_tensor(logits).detach().argmax(dim=-1).cpu())
    return float((predictions == np.asarray(labels)).mean() * 100)


def harmonic_mean(base: float, new: float) -> float:
    """HM of base and new accuracy, the base-to-new summary of CoCoOp (Zhou et al., 2022, Sec. 5.1)."""
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


@dataclass(frozen=True)
class MeanCI:
    mean: float
    half_width: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.1f} ± {self.half_width:.1f}"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Mean and Student-t half-width of the ``confidence`` interval (0 for a single value)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        raise ValueError("mean_ci needs at least one value")
    if len(values) == 1:
        return MeanCI(float(values[0]), 0.0, 1)
    sem = values.std(ddof=1) / np.sqrt(len(values))
    return MeanCI(float(values.mean()), float(sem * stats.t.ppf((1 + confidence) / 2, len(values) - 1)), len(values))


def evaluate(method, test, classnames: Sequence[str] | None = None, **settings) -> float:
    """Accuracy (%) of a fitted :class:`~fslib.methods.base.Method` on a dataset or its features, over
    ``classnames`` (default: the classes the method was fitted on; pass ``test.classnames`` to score a
    dataset with its own label set), with the method's test-time ``settings``."""
    return accuracy(method.logits(test, classnames, **settings), test.labels)


def settings_of(method, variations: Sequence[dict]) -> list[dict]:
    """The ``variations`` (test-time settings) that ``method`` declares, or one empty setting: how a
    driver scores one fit several ways without setting attributes on it."""
    declared = [setting for setting in variations if set(setting) <= set(method.test_time_settings)]
    return declared or [{}]


def episode_accuracies(make_method, episodes, progress: bool = True) -> list[float]:
    """Fit a fresh ``make_method()`` on each episode's support set; its query accuracy per episode."""
    return [evaluate(make_method().fit(ep.support), ep.query) for ep in tqdm(list(episodes), disable=not progress, leave=False)]


def few_shot_sweep(make_method, train, test, shots: Sequence[int], seeds: Sequence[int], progress: bool = True):
    """Fit ``make_method(seed)`` on ``shots``-per-class subsets of ``train`` drawn with ``seed``, for each
    seed; score ``test``. The seed reaches the sample and the method (initialisation, minibatch order).
    Each shot count is a unit of :func:`fslib.parallel.map_units`, its seeds in order (a
    :class:`~fslib.methods.base.TunedOnValidation` memo searches on the first seed and reuses its choice).

    Returns a DataFrame with one row per (shots, seed): ``dataset, method, shots, seed, accuracy``.
    """
    def fit_seeds(k: int) -> list[dict]:
        rows = []
        for seed in seeds:
            method = make_method(seed).fit(few_shot(train, k, seed))
            rows.append({"dataset": train.name, "method": method.name, "shots": k, "seed": seed,
                         "accuracy": evaluate(method, test)})
        return rows

    by_shots = parallel.map_units(fit_seeds, list(shots), desc=train.name, progress=progress)
    return pd.DataFrame([row for rows in by_shots for row in rows])


def select_on_validation(make_method, candidates: Sequence, train, val) -> tuple[object, "pd.DataFrame"]:
    """Pick a hyper-parameter on a validation split, never on test.

    ``make_method(value)`` builds the method for one candidate value; each is fitted on ``train`` and
    scored on ``val``. Returns the best value (the first on ties) and the table of validation accuracies.
    The candidates are units of :func:`fslib.parallel.map_units` (each method sets its own seeds).
    """
    scores = parallel.map_units(lambda value: evaluate(make_method(value).fit(train), val), list(candidates),
                                desc="validation candidates", progress=False)
    table = pd.DataFrame({"value": list(candidates), "val_accuracy": scores})
    return table.value[table.val_accuracy.idxmax()], table


def summarise(results, by: Sequence[str], value: str = "accuracy"):
    """Mean, 95% CI half-width and count of ``value`` per group of ``by`` (a tidy DataFrame)."""
    rows = []
    for keys, group in results.groupby(list(by), sort=False):
        ci = mean_ci(group[value].tolist())
        rows.append({**dict(zip(by, keys if isinstance(keys, tuple) else (keys,))), "mean": ci.mean, "ci95": ci.half_width, "n": ci.n})
    return pd.DataFrame(rows)


def paired_difference(results, better: str, worse: str, by: str = "dataset", pair_on: Sequence[str] = ("seed", "n_way", "task"),
                      value: str = "accuracy"):
    """Per ``by`` group: mean and 95% CI of ``better - worse``, paired on the same episodes/seeds."""
    wide = results.pivot_table(index=[by, *pair_on], columns="method", values=value).reset_index()
    rows = []
    for group, part in wide.groupby(by, sort=False):
        ci = mean_ci((part[better] - part[worse]).tolist())
        rows.append({by: group, "difference": ci.mean, "ci95": ci.half_width, "n": ci.n})
    return pd.DataFrame(rows)


def base_to_new(factories: dict, datasets: Sequence[str], shots: int, seeds: Sequence[int], progress: bool = True,
                test_per_class: int | None = None, variations: Sequence[dict] = ()):
    """Base-to-new generalisation for methods behind the shared interface (CoCoOp's protocol).

    ``factories`` maps a label to a constructor taking the seed. Each method is fitted on ``shots``
    images per base class (first half of the labels) and scored on the base and on the new test
    classes, each with its own label set. A method that declares it cannot score unseen classes (a
    linear probe) gets NaN on new. ``test_per_class`` scores a fixed sample of the test split
    (:func:`~fslib.fewshot.fixed_test_sample`). ``variations`` are test-time settings (``{"ratio": 0.5}``,
    a WiSE-FT ratio): a method that declares them among its ``test_time_settings`` is scored once per
    setting from one fit, with the setting's columns; any other method once, as it is. Returns rows ``dataset, seed, method, part, accuracy, fit_seconds, trainable``
    (the method's own ``fit_seconds`` where it measures one, else the wall time of ``fit``; ``trainable``
    parameters), plus the variations' columns. Each (dataset, method) is a unit of
    :func:`fslib.parallel.map_units`, its seeds in order (a :class:`~fslib.methods.base.TunedOnValidation`
    memo searches on the first seed and reuses its choice); the rows come back in the loops' order.
    """
    splits = {name: base_to_new_sets(load_dataset(name, "train"), fixed_test_sample(load_dataset(name, "test"), test_per_class))
              for name in datasets}

    def fit_seeds(unit: tuple[str, str]) -> dict[int, list[dict]]:
        name, label = unit
        base_train, base_test, new_test = splits[name]
        rows = {}
        for seed in seeds:
            start = time.perf_counter()
            method = factories[label](seed).fit(few_shot(base_train, shots, seed))
            seconds = time.perf_counter() - start if method.fit_seconds is None else method.fit_seconds
            rows[seed] = []
            for setting in settings_of(method, variations):
                new = evaluate(method, new_test, new_test.classnames, **setting) if method.can_score(new_test.classnames) \
                    else float("nan")
                for part, acc in (("base", evaluate(method, base_test, **setting)), ("new", new)):
                    rows[seed].append({"dataset": name, "seed": seed, "method": label, "part": part, "accuracy": acc,
                                       "fit_seconds": seconds, "trainable": method.trainable_parameters(), **setting})
        return rows

    units = [(name, label) for name in datasets for label in factories]
    done = dict(zip(units, parallel.map_units(fit_seeds, units, desc="datasets x methods", progress=progress)))
    return pd.DataFrame([row for name in datasets for seed in seeds for label in factories for row in done[(name, label)][seed]])


def harmonic_mean_table(results):
    """Per (dataset, method): seed-averaged base and new accuracy and their HM; plus the average over
    datasets as HM(mean base, mean new), the convention of CoOp, CoCoOp and these papers' average rows
    (CoCoOp's 75.83 = HM(80.47, 71.69))."""
    table = results.groupby(["dataset", "method", "part"], sort=False).accuracy.mean().unstack("part")
    table["HM"] = [harmonic_mean(b, n) for b, n in zip(table["base"], table["new"])]
    average = table.groupby("method", sort=False)[["base", "new"]].mean()
    average["HM"] = [harmonic_mean(b, n) for b, n in zip(average["base"], average["new"])]
    return table, average


def harmonic_mean_by_seed(results, method: str | None = None):
    """HM(mean base, mean new) over datasets, per seed: the unit a base-to-new claim is decided from.

    With ``method``, a Series of HMs indexed by seed; without, a table with one row per (method, seed)
    and the columns ``base``, ``new`` and ``HM``.
    """
    rows = results if method is None else results[results.method == method]
    parts = rows.groupby(["method", "seed", "part"], sort=False).accuracy.mean().unstack("part").reset_index()
    parts["HM"] = [harmonic_mean(b, n) for b, n in zip(parts["base"], parts["new"])]
    if method is None:
        return parts
    return parts.set_index("seed")["HM"].rename(method)


def cross_dataset(factories: dict, source: str, targets: Sequence[str], shots: int, seeds: Sequence[int],
                  progress: bool = True, test_per_class: int | None = None):
    """Fit each method (``factories``: label -> constructor taking the seed) on ``shots`` per class of
    ``source`` and score the test split of every target with
    the target's own class names: domain shift when the classes are shared, forgetting when they are not.

    Returns rows ``method, seed, target, accuracy`` (the source's own test split included).
    """
    train = load_dataset(source, "train")
    tests = {name: fixed_test_sample(load_dataset(name, "test"), test_per_class) for name in [source, *targets]}
    rows = []
    for seed in tqdm(seeds, desc=f"from {source}", disable=not progress):
        support = few_shot(train, shots, seed)
        for label, make in factories.items():
            method = make(seed).fit(support)
            for name, test in tests.items():
                rows.append({"method": label, "seed": seed, "target": name,
                             "accuracy": evaluate(method, test, test.classnames)})
    return pd.DataFrame(rows)
