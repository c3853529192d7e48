"""06_compare: the kit's methods and baselines side by side on the same tasks, seeds and budget.

No paper compares MAMF, APEX, SMAT, LLU and CLIP-CITE under one protocol; the kit can, because every
method sits behind :class:`~fslib.methods.base.Method`. This module holds the comparison's logic:

- :func:`contenders`: every method that adapts CLIP from labelled shots, each with a grid of the same size
  for its own hyper-parameter, and the shared training budget (the same epochs for every method that
  trains a tower; feature methods keep their own steps on cached features);
- :func:`choose_hyperparameters`: every grid searched alike, on one dataset's validation split (base classes);
- :func:`run`: the protocols as tasks (few-shot, base-to-new, domain shift), one fit per method, task and
  seed on the same sample, with the fit's wall time and peak memory;
- :func:`scores`, :func:`leaderboard`, :func:`interquartile_mean`, :func:`probability_of_improvement`:
  per-seed scores, the table with 95% CIs over seeds, an aggregate robust to outlying tasks (the
  interquartile mean of Agarwal et al., 2021, "rliable"), and the probability that one method beats
  another on a task, paired by seed.

The meta-learners (MAMF, SMAT) need meta-training on other classes and are scored on N-way K-shot
episodes; they are compared in their own notebooks (01, 03) and not (yet) in this one.
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

from fslib.data import ImageDataset, load_dataset
from fslib.evaluation import evaluate, harmonic_mean, mean_ci, select_on_validation
from fslib.features import encode_images
from fslib.fewshot import base_new_split, base_to_new_sets, few_shot, fixed_test_sample
from fslib.methods import LinearProbe, ZeroShot
from fslib.methods.apex import make_family
from fslib.methods.base import Method
from fslib.methods.clip_cite import make_variant
from fslib.methods.llu import LLU, GlobalResidualAdapter, TipAdapter
from fslib.models import Clip
from fslib.progress import tqdm

PROTOCOLS = ("few-shot", "base-to-new", "domain shift")
# Trains a tower (or prompts inside one) rather than a head on cached features.
TOWER_METHODS = ("CoOp", "APEX", "fine-tuning", "CLIP-CITE")
PARAMETER_EFFICIENT = ("linear probe", "Tip-Adapter", "CLIP-Adapter", "LLU", "CoOp", "APEX")


@dataclass(frozen=True)
class Contender:
    """``make(value, seed)`` builds the method for one value of its hyper-parameter ``knob``."""

    make: Callable[[object, int], Method]
    knob: str
    grid: tuple


def contenders(clip: Clip, epochs: int, steps: int = 300, views: int = 4) -> dict[str, Contender]:
    """Zero-shot, the baselines and the papers' methods, each with three values of its main knob."""
    return {
        "zero-shot": Contender(lambda value, seed: ZeroShot(clip), "none", (None,)),
        "linear probe": Contender(lambda c, seed: LinearProbe(clip, C=c), "C", (1.0, 10.0, 100.0)),
        "Tip-Adapter": Contender(lambda a, seed: TipAdapter(clip, alpha=a), "alpha", (0.5, 1.0, 2.0)),
        "CLIP-Adapter": Contender(lambda r, seed: GlobalResidualAdapter(clip, ratio=r, steps=steps, views=views, seed=seed),
                                  "ratio", (0.2, 0.5, 0.8)),
        "LLU": Contender(lambda k, seed: LLU(clip, kappa=k, steps=steps, views=views, seed=seed), "kappa", (2.0, 10.0, 50.0)),
        "CoOp": Contender(lambda lr, seed: make_family(clip, "CoOp", epochs=epochs, lr=lr, seed=seed), "lr", (0.15, 0.5, 1.5)),
        "APEX": Contender(lambda lr, seed: make_family(clip, "VPT+TA", ensemble=True, epochs=epochs, lr=lr, augment=True, seed=seed),
                          "lr", (0.05, 0.15, 0.5)),
        "fine-tuning": Contender(lambda lr, seed: make_variant(clip, "fine-tuning", epochs=epochs, lr=lr, seed=seed),
                                 "lr", (3e-5, 1e-4, 3e-4)),
        "CLIP-CITE": Contender(lambda lr, seed: make_variant(clip, "CLIP-CITE", epochs=epochs, lr=lr, seed=seed),
                               "lr", (3e-5, 1e-4, 3e-4)),
    }


def choose_hyperparameters(candidates: dict[str, Contender], tune_on: str, shots: int, seed: int,
                           progress: bool = True) -> pd.DataFrame:
    """Every contender's grid, searched alike: fitted on ``shots`` per base class of ``tune_on``'s training
    split (seed ``seed``) and scored on its validation split's base classes. Returns rows ``method, knob,
    value, val_accuracy, chosen``; the test splits are never seen."""
    train, _ = base_new_split(load_dataset(tune_on, "train"))
    val, _ = base_new_split(load_dataset(tune_on, "val"))
    support, rows = few_shot(train, shots, seed), []
    for label, contender in tqdm(candidates.items(), desc="choosing hyper-parameters", disable=not progress, leave=False):
        if len(contender.grid) == 1:
            rows.append({"method": label, "knob": contender.knob, "value": contender.grid[0], "val_accuracy": np.nan, "chosen": True})
            continue
        best, table = select_on_validation(lambda value: contender.make(value, seed), contender.grid, support, val)
        rows += [{"method": label, "knob": contender.knob, "value": v, "val_accuracy": a, "chosen": v == best}
                 for v, a in zip(table.value, table.val_accuracy)]
    return pd.DataFrame(rows)


def tuning_summary(tuning: pd.DataFrame) -> pd.DataFrame:
    """:func:`choose_hyperparameters`' rows as one line per method: its knob, the validation accuracy of each
    value tried, the value chosen, and whether that value is the first or last of its grid (the best one may
    then lie beyond it)."""
    def tried(rows: pd.DataFrame) -> str:
        return " · ".join(f"{v:g}: {a:.1f}" for v, a in zip(rows.value, rows.val_accuracy)) if rows.val_accuracy.notna().any() else "—"

    def at_edge(rows: pd.DataFrame) -> str:
        position = int(np.flatnonzero(rows.chosen.to_numpy())[0])
        return "yes" if len(rows) > 1 and position in (0, len(rows) - 1) else ""

    return pd.DataFrame([{"method": m, "knob": rows.knob.iloc[0], "validation accuracy by value": tried(rows),
                          "chosen": rows.value[rows.chosen].iloc[0], "at the grid's edge": at_edge(rows)}
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
        result["peak_mb"] = max(peak, process.memory_info().rss) - start
        result["peak_mb"] /= 2**20


def run(clip: Clip, candidates: dict[str, Contender], chosen: dict[str, object], tasks: Sequence[Task],
        progress: bool = True) -> pd.DataFrame:
    """Fit every contender (at its chosen value) once per task and score each of the task's test sets with
    their own class names. A method that cannot score unseen classes (the probe on new classes) gets NaN.

    Every dataset's frozen features are encoded before the fits are timed; ``fit_seconds`` is the method's
    own measure where it keeps one (training only, as in :func:`fslib.evaluation.base_to_new`), else the
    wall time of ``fit``. Returns rows ``protocol, dataset, shots, seed, method, part, accuracy,
    fit_seconds, peak_mb, trainable``.
    """
    rows = []
    for task in tqdm(list(tasks), desc="tasks", disable=not progress):
        for dataset in (task.support, *task.tests.values()):  # encoded once, before any fit is timed
            encode_images(clip, dataset, progress=False)
        for label, contender in candidates.items():
            method = contender.make(chosen[label], task.seed)
            with peak_memory(clip.device) as memory:
                start = time.perf_counter()
                method.fit(task.support)
                seconds = time.perf_counter() - start if method.fit_seconds is None else method.fit_seconds
            for part, test in task.tests.items():
                try:
                    score = evaluate(method, test, test.classnames)
                except ValueError:
                    score = float("nan")
                rows.append({"protocol": task.protocol, "dataset": task.dataset, "shots": task.shots, "seed": task.seed,
                             "method": label, "part": part, "accuracy": score, "fit_seconds": seconds,
                             "peak_mb": memory["peak_mb"], "trainable": method.trainable_parameters()})
    return pd.DataFrame(rows)


def scores(results: pd.DataFrame) -> pd.DataFrame:
    """One score per (protocol, setting, method, seed), averaged over datasets first: few-shot accuracy per
    shot count, base-to-new HM(mean base, mean new) (NaN where a method has no new-class score) and the
    mean accuracy over the shifted domains. Rows ``protocol, setting, method, seed, score``."""
    rows = []
    for (protocol, shots, method, seed), part in results.groupby(["protocol", "shots", "method", "seed"], sort=False):
        if protocol == "base-to-new":
            by_part = part.groupby("part").accuracy.mean()
            score = harmonic_mean(by_part["base"], by_part["new"]) if by_part.notna().all() else np.nan
            setting = "HM"
        else:
            score = part.groupby("dataset").accuracy.mean().mean() if protocol == "few-shot" else part.accuracy.mean()
            setting = f"{shots} shots" if protocol == "few-shot" else "targets"
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
