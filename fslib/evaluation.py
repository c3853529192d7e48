"""Metrics and summaries: accuracy, the harmonic mean of base and new accuracy, means with a 95% CI, paired
differences. The protocols that produce the numbers are in :mod:`fslib.protocols`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats


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


def harmonic_mean_table(results):
    """Per (dataset, method): seed-averaged base and new accuracy and their HM; plus the average over
    datasets as HM(mean base, mean new), the convention of CoOp, CoCoOp and these papers' average rows
    (CoCoOp's 75.83 = HM(80.47, 71.69))."""
    table = results.groupby(["dataset", "method", "part"], sort=False).accuracy.mean().unstack("part")
    table["HM"] = [harmonic_mean(b, n) for b, n in zip(table["base"], table["new"])]
    average = table.groupby("method", sort=False)[["base", "new"]].mean()
    average["HM"] = [harmonic_mean(b, n) for b, n in zip(average["base"], average["new"])]
    return table, average


def mean_of_harmonic_means_by_seed(results, method: str, over: str = "dataset"):
    """The mean over ``over`` (datasets, or a dial's levels) of each one's HM(base, new), per seed: APEX's
    average convention (Table 2: 80.04 is the mean of the 11 per-dataset HMs; HM of the means is 80.21).
    A Series of mean HMs indexed by seed."""
    rows = results[results.method == method]
    parts = rows.groupby(["seed", over, "part"], sort=False).accuracy.mean().unstack("part")
    per_group = pd.Series([harmonic_mean(b, n) for b, n in zip(parts["base"], parts["new"])], index=parts.index)
    return per_group.groupby("seed").mean().rename(method)


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


