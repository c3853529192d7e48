"""01_mamf's experiment: zero-shot CLIP, MAMF, FOMAML and fine-tuning matched to MAMF's budget, on the same
meta-test episodes (Wang et al., 2022, §4), each arm's settings chosen on validation episodes.

An :class:`Arm` is one way to spend the meta-training data; :func:`train_arm` meta-trains it and says what it
cost (:class:`~fslib.methods.mamf.Budget`); :func:`compare_strategies` runs every arm on the same episodes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from fslib import parallel
from fslib.bench import Stage, dataset_sizes
from fslib.data import ImageDataset, load_dataset
from fslib.fewshot import EpisodeSampler, few_shot
from fslib.methods.mamf import (Budget, PromptFineTune, mamf_budget, mamf_chunks, meta_train, task_count,
                                task_sizes)
from fslib.models import Clip
from fslib.protocols import best_on_validation, episode_accuracies
from fslib.world.dials import DIALS


@dataclass(frozen=True)
class Arm:
    """One way to spend the meta-training data, as the comparison runs it.

    ``matched`` fine-tuning takes MAMF's steps, images and optimiser resets at the same ``n``
    (:func:`~fslib.methods.mamf.mamf_budget`); ``per_n`` is False for an arm whose training does not depend
    on ``n``.
    """

    strategy: str
    random_heads: bool = False
    matched: bool = False
    per_n: bool = True


QUERIES = 8  # query images per class of a meta-test episode

ARMS = {
    "fine-tuning": Arm("finetune", matched=True),
    "FOMAML": Arm("fomaml"),
    "MAMF": Arm("mamf"),
    # the paper's comparison as its code runs it: fresh random projection heads for both, the meta-training
    # epochs per task for MAMF and over all data for fine-tuning (one Adam throughout; the code runs 8), budgets
    # not matched (notes §2.3-2.4)
    "fine-tuning (official)": Arm("finetune", random_heads=True, per_n=False),
    "MAMF (official)": Arm("mamf", random_heads=True),
}


def train_arm(clip: Clip, train_set: ImageDataset, arm: str, n_way: int, lr: float, seed: int, epochs: int = 1,
              inner_lr: float = 1e-3, inner_steps: int = 1, batch_size: int = 32) -> tuple[Clip, Budget]:
    """Meta-train one of ``ARMS`` for ``epochs`` (per task, or over all data for unmatched fine-tuning) and say
    what it cost."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; allowed: {', '.join(ARMS)}")
    spec = ARMS[arm]
    common = dict(lr=lr, inner_lr=inner_lr, inner_steps=inner_steps, seed=seed, random_heads=spec.random_heads, progress=False)
    if spec.matched:
        budget = mamf_budget(train_set, n_way, epochs, batch_size, seed)
        batch = max(1, round(budget.images / budget.steps))
        start = meta_train(clip, train_set, spec.strategy, n_way, batch_size=batch, steps=budget.steps,
                           optimizer_resets=mamf_chunks(train_set, n_way, epochs, batch_size, seed), **common)
        return start, Budget(budget.steps, budget.steps * batch)
    start = meta_train(clip, train_set, spec.strategy, n_way, epochs=epochs, batch_size=batch_size, **common)
    if spec.strategy == "finetune":
        return start, Budget(epochs * math.ceil(len(train_set) / batch_size), epochs * len(train_set))
    if spec.strategy == "mamf":
        return start, mamf_budget(train_set, n_way, epochs, batch_size, seed)
    steps = images = 0  # FOMAML: inner steps on a support-half batch, outer steps over the query half
    for size in task_sizes(train_set, n_way, seed):
        support, query = size // 2, size - size // 2
        steps += epochs * (inner_steps + math.ceil(query / batch_size))
        images += epochs * (inner_steps * min(batch_size, support) + query)
    return start, Budget(steps, images)


def compare_strategies(clip: Clip, datasets: Sequence[str] | Mapping[object, str], n_ways: Sequence[int], shots: int, tasks: int,
                       seeds: Sequence[int], settings: dict[str, Sequence[tuple[float, int]]], split: str = "test",
                       epochs: int = 1, inner_lr: float = 1e-3, inner_steps: int = 1, train_per_class: int = 8,
                       queries: int = QUERIES, progress: bool = True) -> pd.DataFrame:
    """The paper's comparison: zero-shot CLIP and each arm of ``settings`` on ``tasks`` episodes per
    (dataset, n-way, seed), the same episodes for every arm, so differences are paired.

    ``settings`` maps an arm of :data:`ARMS` to the ``(lr, adapt_epochs)`` pairs to run: the meta-training
    LR (also the test-time LR) and the epochs of test-time fine-tuning on each support set (0 = none).
    Meta-training uses ``train_per_class`` images per class of the train split (drawn by seed); episodes
    draw ``shots`` support and ``queries`` query images per class from ``split`` ("val" to choose
    settings, "test" to report): held-out images of the same classes, as in the official code (notes §4).
    ``datasets`` may map a dial's levels to their datasets (``Dial.datasets()``): each row then also says its
    ``level``. Returns one row per (dataset, n_way, seed, method, lr, adapt_epochs, task) with the accuracy and
    the arm's meta-training ``steps`` and ``images``, in the order (dataset, seed, n, zero-shot then ``settings``).

    Each (dataset, seed, arm, lr) is a unit of :func:`fslib.parallel.map_units` (zero-shot is one more per
    (dataset, seed)): the unit meta-trains its arm once per ``n`` (once in all for an arm whose training
    ignores ``n``) and runs its test-time settings on every ``n``'s episodes, which every unit draws alike
    from the seed. So choosing settings on one seed still keeps both cores busy.
    """
    unknown = sorted(set(settings) - set(ARMS))
    if unknown:
        raise ValueError(f"unknown arms {unknown}; allowed: {', '.join(ARMS)}")
    levels = dict(datasets) if isinstance(datasets, Mapping) else None
    datasets = list(datasets.values()) if isinstance(datasets, Mapping) else list(datasets)

    def arm_at_lr(unit: tuple[str, int, str, float]) -> dict[tuple[int, int], list[dict]]:
        name, seed, arm, lr = unit
        train_set, eval_set = few_shot(load_dataset(name, "train"), train_per_class, seed), load_dataset(name, split)
        adapt_epochs = [0] if arm == "zero-shot" else list(dict.fromkeys(a for arm_lr, a in settings[arm] if arm_lr == lr))
        start, budget = clip, Budget(0, 0)
        rows: dict[tuple[int, int], list[dict]] = {}
        for i, n in enumerate(n_ways):
            sampler = EpisodeSampler([eval_set], n, shots, queries, seed=seed)
            episodes = [sampler.sample() for _ in range(tasks)]
            if arm != "zero-shot" and (i == 0 or ARMS[arm].per_n):
                start, budget = train_arm(clip, train_set, arm, n, lr, seed, epochs, inner_lr, inner_steps)
            for adapt in adapt_epochs:
                accs = episode_accuracies(lambda: PromptFineTune(start, adapt, lr, seed=seed), episodes)
                rows[n, adapt] = [{"dataset": name, "n_way": n, "seed": seed, "method": arm, "lr": lr, "adapt_epochs": adapt,
                                   "steps": budget.steps, "images": budget.images, "task": t, "accuracy": a}
                                  for t, a in enumerate(accs)]
        return rows

    runs = [(arm, lr, adapt) for arm, pairs in settings.items() for lr, adapt in pairs]
    trained_arms = list(dict.fromkeys((arm, lr) for arm, lr, _ in runs))
    units = [(name, seed, arm, lr) for name in datasets for seed in seeds for arm, lr in trained_arms]
    units += [(name, seed, "zero-shot", 0.0) for name in datasets for seed in seeds]  # the cheapest last
    done = dict(zip(units, parallel.map_units(arm_at_lr, units, desc=f"{split}: datasets x seeds x arms", progress=progress)))
    table = pd.DataFrame([row for name in datasets for seed in seeds for n in n_ways
                          for arm, lr, adapt in [("zero-shot", 0.0, 0), *runs]
                          for row in done[name, seed, arm, lr][n, adapt]])
    if levels is not None:
        table.insert(0, "level", table.dataset.map({name: level for level, name in levels.items()}))
    return table


def planned_work(P: SimpleNamespace) -> list[Stage]:
    """01's work at parameters ``P`` (:func:`fslib.bench.expected_cost`): each arm's meta-training images (MAMF,
    FOMAML and matched fine-tuning: K(n) tasks of ``n_way`` classes x ``train_per_class`` images x ``epochs``;
    the official pair at ``official_epochs``, its fine-tuning over all classes once per epoch) at every level,
    seed and LR tried, then at the chosen LR for the test; every episode's test-time fine-tuning (the largest of
    ``adapt_grid`` for the test, an upper bound) and its scored images. Zero-shot's scoring is left out."""
    cue = dataset_sizes([DIALS[P.dial].datasets((P.levels[-1],))[P.levels[-1]]]).iloc[0]
    shift = dataset_sizes([DIALS[P.shift_dial].datasets((P.shift_levels[-1],))[P.shift_levels[-1]]]).iloc[0]
    matched = lambda classes, epochs: task_count(P.n_way, classes) * P.n_way * P.train_per_class * epochs
    per_seed_lr = (len(P.levels) * 2 * matched(cue.classes, P.epochs)  # fine-tuning and MAMF along the cue
                   + matched(cue.classes, P.official_epochs) + cue.classes * P.train_per_class * P.official_epochs
                   + len(P.shift_levels) * 2 * matched(shift.classes, P.epochs))  # FOMAML and MAMF along the shift
    fits_per_lr = len(P.seeds) * 2 * (len(P.levels) + 1 + len(P.shift_levels))
    episode = P.n_way * (P.shots + QUERIES)

    def stage(name: str, lrs: int, tasks: int, adapts: Sequence[int]) -> Stage:
        return Stage(name, fits_per_lr * lrs, int(len(P.seeds) * lrs * per_seed_lr
                                                  + fits_per_lr * lrs * tasks * sum(adapts) * P.n_way * P.shots),
                     fits_per_lr * lrs * tasks * len(adapts) * episode)

    return [stage("choosing LR and test-time epochs (validation)", len(P.lr_grid), P.val_tasks, P.adapt_grid),
            stage("the arms at their chosen settings (test)", 1, P.tasks, [max(P.adapt_grid)])]


def choose_settings(validation: pd.DataFrame) -> dict[str, tuple[float, int]]:
    """Each arm's ``(lr, adapt_epochs)`` with the best mean validation accuracy over datasets (or levels),
    ``n``, seeds and episodes (the first in grid order on ties). Every arm is chosen from the same grid."""
    best = best_on_validation(validation[validation.method != "zero-shot"], ["lr", "adapt_epochs"], group="method")
    return {arm: (float(lr), int(adapt_epochs)) for arm, (lr, adapt_epochs) in best.items()}


def at_chosen(results: pd.DataFrame, chosen: Mapping[str, tuple[float, int]]) -> pd.DataFrame:
    """The rows of zero-shot and of each arm at its ``chosen`` ``(lr, adapt_epochs)`` (validation rows scored
    at the settings the test runs use: where a premise is decided)."""
    keep = results.method == "zero-shot"
    for arm, (lr, adapt) in chosen.items():
        keep |= (results.method == arm) & np.isclose(results.lr, lr) & (results.adapt_epochs == adapt)
    return results[keep]
