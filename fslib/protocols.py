"""The protocols every notebook runs, each driven once, and the one rule that chooses hyper-parameters.

A protocol is a list of :class:`Task` s (a support set to fit on for a seed, and the test sets to score), made
by a task generator, and one runner, :func:`run`, that fits every method on every task and scores each test
set with its own class names:

* :func:`few_shot_tasks`: ``k`` shots per class of all classes, scored on the test split;
* :func:`base_to_new_tasks`: CoCoOp's protocol, fitted on the base half of the classes, scored on base and new;
* :func:`domain_shift_tasks`: fitted on a source domain, scored on the same classes drawn in other styles
  (or on other classes: forgetting);
* :func:`episodic_tasks`: N-way K-shot episodes, fitted on the support set, scored on the query set;
* :func:`level_tasks`: any of these over a dataset family's designed levels (a *dial*), one dataset per level.

:func:`few_shot_sweep`, :func:`base_to_new` and :func:`domain_shift` are the common protocols as one call.
Choosing on validation lives here once too: :func:`search_ladder` and :func:`choose_hyperparameters` (every
method's knob by the same rule, as 06 does), :func:`select_on_validation` and :class:`TunedOnValidation` (a
method that chooses its value on the support set's own validation split, as Tip-Adapter and CLIP-Adapter do).
Methods (``fslib.methods``) import nothing from here.
"""
from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import psutil
import torch

from fslib import parallel
from fslib.data import ImageDataset, load_dataset
from fslib.evaluation import evaluate, settings_of
from fslib.features import encode_images
from fslib.fewshot import (Episode, EpisodeSampler, base_new_split, few_shot, fixed_test_sample,
                           restrict_classes)
from fslib.methods import Method

MakeMethod = Callable[[int], Method]  # seed -> a fresh method


# -- tasks -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One fit: a protocol's support sample for a seed, and the test sets it is scored on (by part).
    ``level`` is the dial level the task was drawn at (None outside a level sweep); ``columns`` gives a test
    set the columns of its rows where its name is not enough (``{"part": "new", "split": "val", "level": 0.2}``)."""

    protocol: str
    dataset: str
    shots: int
    seed: int
    support: ImageDataset
    tests: dict[str, ImageDataset]
    level: object = None
    columns: Mapping[str, dict] = field(default_factory=dict)


def few_shot_tasks(datasets: Sequence[str], shots: Sequence[int], seeds: Sequence[int],
                   test_per_class: int | None = None) -> Iterator[Task]:
    """All classes: ``k`` shots per class of the training split, scored on the test split."""
    for name in datasets:
        train, test = load_dataset(name, "train"), fixed_test_sample(load_dataset(name, "test"), test_per_class)
        for k in shots:
            for seed in seeds:
                yield Task("few-shot", train.name, k, seed, few_shot(train, k, seed), {"all": test})


def scored_split(name: str, split: str, test_per_class: int | None = None) -> ImageDataset:
    """One split of a dataset as the protocols score it: the test split as its fixed sample of
    ``test_per_class`` images per class (the same for every method and seed), any other split whole."""
    data = load_dataset(name, split)
    return fixed_test_sample(data, test_per_class) if split == "test" else data


def base_to_new_tasks(datasets: Sequence[str], shots: int, seeds: Sequence[int], test_per_class: int | None = None,
                      splits: Sequence[str] = ("test",)) -> Iterator[Task]:
    """CoCoOp's protocol: fitted on the base half of the classes, scored on base and on new classes of the test
    split; with ``splits=("val", "test")`` also of the validation split (rows then carry ``split``), where a
    notebook decides what must not be decided on test images (where a premise holds, say)."""
    labelled = tuple(splits) != ("test",)  # the plain protocol's rows keep their columns
    for name in datasets:
        base_train, _ = base_new_split(load_dataset(name, "train"))
        tests, columns = {}, {}
        for split in splits:
            halves = base_new_split(scored_split(name, split, test_per_class))
            for part, subset in zip(("base", "new"), halves):
                key = f"{part} ({split})" if labelled else part
                tests[key] = subset
                if labelled:
                    columns[key] = {"part": part, "split": split}
        for seed in seeds:
            yield Task("base-to-new", name, shots, seed, few_shot(base_train, shots, seed), tests, columns=columns)


def new_class_level_tasks(levels: Mapping[object, str], shots: int, seeds: Sequence[int],
                          test_per_class: int | None = None, splits: Sequence[str] = ("test",)) -> Iterator[Task]:
    """A test-side dial of new classes (:mod:`fslib.world.dials`' ``class_distance``): every level shares its
    base classes and their images, so one fit per seed on the base classes is scored on the base images and
    on each level's new classes, of each of ``splits``. Rows carry ``part`` ("base" or "new") and ``split``;
    new-class rows their ``level``."""
    first, *_ = levels.values()
    base_train, _ = base_new_split(load_dataset(first, "train"))
    tests, columns = {}, {}
    for split in splits:
        for level, name in levels.items():
            base, new = base_new_split(scored_split(name, split, test_per_class))
            if base.classnames != base_train.classnames:
                raise ValueError(f"{name} does not share the base classes of {first}: not a dial of new classes")
            key = f"new @ {level} ({split})"  # a name only: the rows carry the level
            tests[key], columns[key] = new, {"part": "new", "split": split, "level": level}
        tests[f"base ({split})"], columns[f"base ({split})"] = base, {"part": "base", "split": split}
    for seed in seeds:
        yield Task("base-to-new", first, shots, seed, few_shot(base_train, shots, seed), tests, columns=columns)


def domain_shift_tasks(source: str, targets: Sequence[str] | Mapping[object, str], shots: int, seeds: Sequence[int],
                       test_per_class: int | None = None, splits: Sequence[str] = ("test",)) -> Iterator[Task]:
    """Fitted on all classes of ``source``; scored on each target's test split with the target's own class
    names: the same classes in another style (domain shift), or other classes (forgetting). ``targets`` may be a
    style dial's ``{level: dataset}`` (``sketch_shift``), and ``splits=("val", "test")`` scores the validation
    split too (where a premise is decided); the rows then carry ``level`` and ``split``, ``part`` the target."""
    train = load_dataset(source, "train")
    leveled = isinstance(targets, Mapping)
    labelled = leveled or tuple(splits) != ("test",)
    tests, columns = {}, {}
    for split in splits:
        for level, name in (targets.items() if leveled else ((None, name) for name in targets)):
            key = f"{name} ({split})" if labelled else name
            tests[key] = scored_split(name, split, test_per_class)
            if labelled:
                columns[key] = {"part": name, "split": split, **({} if level is None else {"level": level})}
    for seed in seeds:
        yield Task("domain shift", source, shots, seed, few_shot(train, shots, seed), tests, columns=columns)


def episodic_tasks(episodes: Mapping[int, Mapping[str, Sequence[Episode]]], shots: int) -> Iterator[Task]:
    """Every episode as a task (``episodes``: seed -> dataset -> episodes): fitted on its support set,
    scored on its query set."""
    for seed, by_dataset in episodes.items():
        for name, per_dataset in by_dataset.items():
            for episode in per_dataset:
                yield Task("episodic", name, shots, seed, episode.support, {"query": episode.query})


def level_tasks(protocol: Callable[[str], Iterator[Task]], levels: Mapping[object, str]) -> Iterator[Task]:
    """A protocol over a dataset family's designed levels: ``levels`` maps a level to its dataset's name,
    ``protocol(name)`` yields that dataset's tasks (e.g. ``lambda name: base_to_new_tasks([name], 16, seeds)``);
    each task is labelled with its level, the unit a trend over levels is decided on."""
    for level, name in levels.items():
        yield from (replace(task, level=level) for task in protocol(name))


# -- an episodic benchmark: class-disjoint ID test, held-out OOD domains (SMAT's) ------------------
@dataclass
class Benchmark:
    """Meta-training episodes (base classes of the ID domains) and validation / test episodes per dataset
    (novel classes of the ID domains; every class of the OOD domains; novel classes of a dial's levels)."""

    id_datasets: list[str]
    ood_datasets: list[str]
    train: list[Episode]
    val: dict[str, list[Episode]]
    test: dict[str, list[Episode]]
    dial_datasets: list[str] = field(default_factory=list)

    def domain(self, dataset: str) -> str:
        """``"ID"``, ``"OOD"``, or ``"dial"`` for a level of the test-side dial."""
        return "ID" if dataset in self.id_datasets else "dial" if dataset in self.dial_datasets else "OOD"


def novel_class_split(num_classes: int, novel: int, n_way: int) -> tuple[list[int], list[int]]:
    """(meta-train classes, novel meta-test classes): the last ``novel`` labels are held out."""
    if not n_way <= novel <= num_classes - n_way:
        raise ValueError(f"novel={novel} classes must leave n_way={n_way} on both sides of a {num_classes}-class domain "
                         f"(allowed: {n_way}..{num_classes - n_way})")
    return list(range(num_classes - novel)), list(range(num_classes - novel, num_classes))


def make_benchmark(id_datasets: Sequence[str], ood_datasets: Sequence[str], n_way: int, shots: int, queries: int,
                   train_tasks: int, test_tasks: int, val_tasks: int, novel: int, seed: int,
                   train_queries: int | None = None, test_per_class: int | None = 40,
                   dial: Sequence[str] = ()) -> Benchmark:
    """Episodes for one seed: ``train_tasks`` on the base classes of the ID train splits, and per dataset
    ``val_tasks`` (val split) and ``test_tasks`` (test split) on ID novel classes or all OOD classes. Test
    episodes are drawn from a fixed sample of ``test_per_class`` images per class (the same for every seed),
    which bounds the trunk cache. ``dial`` names the levels of a test-side dial whose classes are those of an ID
    domain (``sketch_shift``'s are ``shapes``'): their episodes use the same novel classes, so its first level
    can be the ID test itself and later levels move the same classes away from it."""
    def part(name: str, split: str, which: int) -> ImageDataset:
        data = scored_split(name, split, test_per_class)
        return restrict_classes(data, novel_class_split(data.num_classes, novel, n_way)[which], f"{'base' if which == 0 else 'novel'}")

    pool = [part(name, "train", 0) for name in id_datasets]
    sampler = EpisodeSampler(pool, n_way, shots, train_queries or queries, seed=seed)
    train = [sampler.sample() for _ in range(train_tasks)]
    splits = {}
    for split, count in (("val", val_tasks), ("test", test_tasks)):
        splits[split] = {}
        for i, name in enumerate([*id_datasets, *ood_datasets, *dial]):
            novel_only = name in id_datasets or name in dial
            data = part(name, split, 1) if novel_only else scored_split(name, split, test_per_class)
            episode_sampler = EpisodeSampler([data], n_way, shots, queries, seed=seed * 1000 + i + (500 if split == "val" else 0))
            splits[split][name] = [episode_sampler.sample() for _ in range(count)]
    return Benchmark(list(id_datasets), list(ood_datasets), train, splits["val"], splits["test"], list(dial))


# -- the runner ------------------------------------------------------------------------------------
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


def run(methods: Mapping[str, MakeMethod], tasks: Sequence[Task], variations: Sequence[dict] = (),
        prepare: Sequence[Callable[[ImageDataset, int], object]] = (), together: str = "task",
        progress: bool = True) -> pd.DataFrame:
    """Fit every method (``methods[label](seed)`` builds it for the task's seed) once per task and score
    each of the task's test sets with their own class names. A method that declares it cannot score a
    test set's classes (a linear probe on new classes) gets NaN; ``variations`` are test-time settings
    scored from the same fit by the methods that declare them (:func:`~fslib.evaluation.settings_of`).

    The frozen features of every test set and support set, and what each ``prepare(support, seed)`` caches
    (augmented crops, SMAT's trunk), are computed before the fits are timed; ``fit_seconds`` is the
    method's own measure where it keeps one (training only), else the wall time of ``fit``.

    The units of :func:`fslib.parallel.map_units` are, with ``together="task"``, one task with every method
    (they share its caches), and with ``together="method"`` one method on one (protocol, dataset, shots)
    with its seeds in order (a :class:`TunedOnValidation` memo then searches on the first seed and reuses
    its choice). Every fit sets its own seeds, so where it runs does not change its result. Each (method,
    seed) is made once here first, so what a method builds once per seed (a meta-training run,
    :class:`MetaTrained`) is built in this process and shared with the workers. Returns rows ``protocol,
    dataset, shots, seed, method, part, accuracy, fit_seconds, peak_mb, trainable`` (and ``level`` in a
    level sweep, and the variations' columns), in the order of the tasks, then the methods.
    """
    if together not in ("task", "method"):
        raise ValueError(f"together={together!r} is not allowed; allowed: 'task', 'method'")
    tasks = list(tasks)
    for seed in sorted({task.seed for task in tasks}):
        for make in methods.values():
            make(seed)
    if together == "task":
        units = [(i, list(methods)) for i in range(len(tasks))]
    else:
        groups: dict[tuple, list[int]] = {}
        for i, task in enumerate(tasks):
            groups.setdefault((task.protocol, task.dataset, task.shots, task.level), []).append(i)
        units = [(indices, [label]) for label in methods for indices in groups.values()]

    def fit_unit(unit: tuple) -> list[tuple[int, int, list[dict]]]:
        indices, labels = unit
        return [(i, list(methods).index(label), _fit_and_score(methods[label], label, tasks[i], variations, prepare))
                for i in ([indices] if together == "task" else indices) for label in labels]

    fitted = parallel.map_units(fit_unit, units, desc="tasks", progress=progress)
    ordered = sorted((key for unit in fitted for key in unit), key=lambda key: key[:2])
    return pd.DataFrame([row for *_, rows in ordered for row in rows])


def _fit_and_score(make: MakeMethod, label: str, task: Task, variations: Sequence[dict],
                   prepare: Sequence[Callable[[ImageDataset, int], object]]) -> list[dict]:
    """:func:`run`'s fit: one method on one task's support set, scored on each of its test sets."""
    method = make(task.seed)
    for dataset in (task.support, *task.tests.values()):  # encoded once, before any fit is timed
        encode_images(method.clip, dataset, progress=False)
    for fill in prepare:
        fill(task.support, task.seed)
    with peak_memory(method.clip.device) as memory:
        start = time.perf_counter()
        method.fit(task.support)
        seconds = time.perf_counter() - start if method.fit_seconds is None else method.fit_seconds
    rows = []
    level = {} if task.level is None else {"level": task.level}
    for setting in settings_of(method, variations):
        for part, test in task.tests.items():
            names = test.classnames
            score = evaluate(method, test, names, **setting) if method.can_score(names) else float("nan")
            rows.append({"protocol": task.protocol, "dataset": task.dataset, "shots": task.shots, "seed": task.seed,
                         **level, "method": label, "part": part, **task.columns.get(part, {}), "accuracy": score,
                         "fit_seconds": seconds,
                         "peak_mb": memory["peak_mb"], "trainable": method.trainable_parameters(), **setting})
    return rows


def few_shot_sweep(methods: Mapping[str, MakeMethod], datasets: Sequence[str], shots: Sequence[int],
                   seeds: Sequence[int], test_per_class: int | None = None, progress: bool = True,
                   prepare: Sequence[Callable[[ImageDataset, int], object]] = ()) -> pd.DataFrame:
    """The few-shot protocol (:func:`few_shot_tasks`) for ``methods``, each (dataset, shot count, method) a
    unit with its seeds in order: :func:`run`'s rows (``prepare``: :func:`preparations` of tuned contenders)."""
    return run(methods, list(few_shot_tasks(datasets, shots, seeds, test_per_class)), together="method",
               progress=progress, prepare=prepare)


def base_to_new(methods: Mapping[str, MakeMethod], datasets: Sequence[str] | Mapping[object, str], shots: int,
                seeds: Sequence[int], test_per_class: int | None = None, variations: Sequence[dict] = (),
                progress: bool = True, splits: Sequence[str] = ("test",)) -> pd.DataFrame:
    """Base-to-new generalisation (CoCoOp's protocol, :func:`base_to_new_tasks`) for ``methods``, each
    (dataset, method) a unit with its seeds in order: :func:`run`'s rows (NaN on new for a method that
    cannot score unseen classes; one set of rows per declared ``variations`` setting). ``datasets`` may be a
    dial's ``{level: dataset}`` (:meth:`fslib.world.dials.Dial.datasets`): one fit per level, rows with ``level``."""
    protocol = lambda names: base_to_new_tasks(names, shots, seeds, test_per_class, splits)
    tasks = (level_tasks(lambda name: protocol([name]), datasets) if isinstance(datasets, Mapping)
             else protocol(datasets))
    return run(methods, list(tasks), variations, together="method", progress=progress)


def domain_shift(methods: Mapping[str, MakeMethod], source: str, targets: Sequence[str], shots: int, seeds: Sequence[int],
                 test_per_class: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Fitted on ``shots`` per class of ``source``, scored on every target (:func:`domain_shift_tasks`):
    :func:`run`'s rows, the part being the target's name."""
    return run(methods, list(domain_shift_tasks(source, targets, shots, seeds, test_per_class)), progress=progress)


def new_class_levels(methods: Mapping[str, MakeMethod], levels: Mapping[object, str], shots: int,
                     seeds: Sequence[int], test_per_class: int | None = None, variations: Sequence[dict] = (),
                     progress: bool = True, splits: Sequence[str] = ("test",)) -> pd.DataFrame:
    """One fit per method and seed on the shared base classes of a new-class dial, scored on every level
    (:func:`new_class_level_tasks`): :func:`run`'s rows, with ``part``, ``split`` and, on new classes, ``level``."""
    tasks = list(new_class_level_tasks(levels, shots, seeds, test_per_class, splits))
    return run(methods, tasks, variations, together="method", progress=progress)


def episode_accuracies(make_method: Callable[[], Method], episodes: Sequence[Episode]) -> list[float]:
    """Fit a fresh ``make_method()`` on each episode's support set; its query accuracy per episode (in this
    process: the caller's unit)."""
    return [evaluate(make_method().fit(episode.support), episode.query) for episode in episodes]


class MetaTrained:
    """``train(value, seed)`` run once per (``key(value)``, seed) and shared by every episode of that seed, with
    the wall time of each run kept in ``seconds`` (a meta-learner's one-off cost, beside its per-episode fit).
    ``key`` maps a knob's value to what meta-training depends on (``lambda value: None`` when the knob only
    acts at test time)."""

    def __init__(self, train: Callable[[object, int], object], key: Callable[[object], object] = lambda value: value):
        self.train, self.key, self.runs, self.seconds = train, key, {}, {}

    def __call__(self, value: object, seed: int) -> object:
        run_key = (self.key(value), seed)
        if run_key not in self.runs:
            start = time.perf_counter()
            self.runs[run_key] = self.train(value, seed)
            self.seconds[run_key] = time.perf_counter() - start
        return self.runs[run_key]

    def mean_seconds(self, value: object, seeds: Sequence[int]) -> float:
        """Mean wall time of the meta-training behind ``value`` over ``seeds``."""
        return float(np.mean([self.seconds[(self.key(value), seed)] for seed in seeds]))


# -- choosing on validation: one rule --------------------------------------------------------------
def best_on_validation(table: pd.DataFrame, setting: Sequence[str], group: str | None = None,
                       value: str = "accuracy") -> Any:
    """The setting (the values of the ``setting`` columns) with the highest mean ``value`` over a validation
    table's rows, the first in the table's order on ties: the one rule wherever a grid of settings is scored
    on validation data. With ``group``, ``{group value: its best setting}`` in the table's order."""
    def best(rows: pd.DataFrame) -> Any:
        return rows.groupby(list(setting), sort=False)[value].mean().idxmax()

    return best(table) if group is None else {key: best(rows) for key, rows in table.groupby(group, sort=False)}


def select_on_validation(make_method: Callable[[Any], Method], candidates: Sequence, train: ImageDataset,
                         val: ImageDataset) -> tuple[object, pd.DataFrame]:
    """Pick a hyper-parameter on a validation split, never on test.

    ``make_method(value)`` builds the method for one candidate value; each is fitted on ``train`` and
    scored on ``val``. Returns the best value (the first on ties) and the table of validation accuracies.
    The candidates are units of :func:`fslib.parallel.map_units` (each method sets its own seeds).
    """
    scores = parallel.map_units(lambda value: evaluate(make_method(value).fit(train), val), list(candidates),
                                desc="validation candidates", progress=False)
    table = pd.DataFrame({"value": list(candidates), "val_accuracy": scores})
    return table.value[table.val_accuracy.idxmax()], table


class TunedOnValidation(Method):
    """A method whose hyper-parameter is chosen, at every ``fit``, on the validation split of the support
    set's own dataset and classes (how Tip-Adapter and CLIP-Adapter set theirs), then refitted.

    ``make(value)`` builds the method for one value of ``grid``; ``validation`` maps a dataset name to
    its validation split (the support's classes are picked out by name). Test images are never seen.
    With a ``memo`` dict shared across seeds, the value chosen for a dataset, class set and shot count
    is searched once (on the first seed's support) and reused: one search per dataset, as papers tune.
    It declares what the method it wraps declares.
    """

    def __init__(self, make: Callable[[object], Method], grid: Sequence, validation: Mapping[str, ImageDataset],
                 memo: dict | None = None):
        chosen = make(grid[0])
        super().__init__(chosen.clip)
        self.chosen, self.value = chosen, grid[0]
        self.name, self.make, self.grid, self.validation, self.memo = chosen.name, make, list(grid), validation, memo
        self.table: pd.DataFrame | None = None

    scores_unseen_classes = property(lambda self: self.chosen.scores_unseen_classes)
    needs_pixels = property(lambda self: self.chosen.needs_pixels)
    test_time_settings = property(lambda self: self.chosen.test_time_settings)

    def fit(self, support: ImageDataset) -> "TunedOnValidation":
        self._remember(support)
        key = (support.name, tuple(support.classnames), len(support))
        if self.memo is not None and key in self.memo:
            value, self.table = self.memo[key]
        else:
            if support.name not in self.validation:
                raise ValueError(f"no validation split given for {support.name!r}; given: {', '.join(self.validation)}")
            val = self.validation[support.name]
            val = restrict_classes(val, [val.classnames.index(c) for c in support.classnames], "val")
            value, self.table = select_on_validation(self.make, self.grid, support, val)
            if self.memo is not None:
                self.memo[key] = value, self.table
        self.value, self.chosen = value, self.make(value).fit(support)
        self.fit_seconds = self.chosen.fit_seconds
        return self

    def logits(self, images, classnames: Sequence[str] | None = None, **settings: Any) -> torch.Tensor:
        return self.chosen.logits(images, classnames, **settings)

    def trainable_parameters(self) -> int:
        return self.chosen.trainable_parameters()

    def get_extra_state(self) -> dict:
        return {**super().get_extra_state(), "value": self.value}

    def allocate(self, state_dict: Mapping[str, Any]) -> None:
        self.value = state_dict["_extra_state"]["value"]
        self.chosen = self.make(self.value)  # the chosen value's method, to load its fitted state into
        self.chosen.allocate({key.removeprefix("chosen."): value for key, value in state_dict.items()
                              if key.startswith("chosen.")})


# values a ladder search usually tries (its `width` of 3, then one more past an edge): what a run's cost is
# planned with before the search has run (fslib.bench.expected_cost)
LADDER_TRIES = 4


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
    return lambda make: float(np.mean(episode_accuracies(make, every)))


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


def choose_hyperparameters(candidates: Mapping[str, Contender], score: Validation, seed: int,
                           progress: bool = True) -> pd.DataFrame:
    """Every contender's ladder, searched alike (:func:`search_ladder`), each value built for ``seed`` and
    scored by ``score`` on a validation split (:func:`base_class_validation`, :func:`episode_validation`).
    The contenders are independent units (:func:`fslib.parallel.map_units`). Returns rows ``method, knob,
    value, val_accuracy, chosen, ladder_end`` (the value is the first or last of its ladder); the test splits
    are never seen."""
    def search(label: str) -> list[dict]:
        contender = candidates[label]
        if len(contender.ladder) == 1:  # nothing to choose, but scored: it may be the best rival (best_rival)
            return [{"method": label, "knob": contender.knob, "value": contender.ladder[0], "chosen": True,
                     "val_accuracy": score(lambda: contender.make(contender.ladder[0], seed)), "ladder_end": False}]
        tried = search_ladder(lambda value: score(lambda: contender.make(value, seed)), contender.ladder, contender.start)
        best = max(sorted(tried), key=lambda i: tried[i])
        return [{"method": label, "knob": contender.knob, "value": contender.ladder[i], "val_accuracy": tried[i],
                 "chosen": i == best, "ladder_end": i in (0, len(contender.ladder) - 1)} for i in sorted(tried)]

    searched = parallel.map_units(search, list(candidates), desc="choosing hyper-parameters", progress=progress)
    return pd.DataFrame([row for rows in searched for row in rows])


def at_chosen(candidates: Mapping[str, Contender], tuning: pd.DataFrame) -> dict[str, MakeMethod]:
    """Each contender at the value :func:`choose_hyperparameters` chose: ``label -> seed -> method`` for :func:`run`."""
    chosen = tuning[tuning.chosen].set_index("method").value.to_dict()
    return {label: (lambda seed, c=contender, v=chosen[label]: c.make(v, seed)) for label, contender in candidates.items()}


def preparations(candidates: Mapping[str, Contender]) -> list[Callable[[ImageDataset, int], object]]:
    """The contenders' ``prepare`` steps, each once, for :func:`run`'s ``prepare``."""
    return list({id(c.prepare): c.prepare for c in candidates.values() if c.prepare}.values())


def best_rival(tuning: pd.DataFrame, among: Sequence[str]) -> str:
    """"The best other method" chosen on validation, never on test: of ``among``, the one whose chosen value
    scored highest in :func:`choose_hyperparameters`' search (the first listed on a tie), so the winner's
    curse of picking the rival by its test score does not bias a claim against the method under test."""
    chosen = tuning[tuning.chosen].set_index("method").val_accuracy
    missing = [m for m in among if m not in chosen.index or np.isnan(chosen[m])]
    if missing:
        raise ValueError(f"no validation score for {', '.join(missing)}: tune them with choose_hyperparameters first")
    return max(among, key=lambda m: (chosen[m], -list(among).index(m)))


def tuning_summary(tuning: pd.DataFrame) -> pd.DataFrame:
    """:func:`choose_hyperparameters`' rows as one line per method: its knob, the validation accuracy of each
    value tried, the value chosen, and whether that value is an end of its ladder (the best one may then
    lie beyond every value the ladder offers)."""
    def tried(rows: pd.DataFrame) -> str:
        return " · ".join(f"{a:.1f}" if pd.isna(v) else f"{v:g}: {a:.1f}" for v, a in zip(rows.value, rows.val_accuracy))

    return pd.DataFrame([{"method": m, "knob": rows.knob.iloc[0], "validation accuracy by value": tried(rows),
                          "values tried": int(rows.value.notna().sum()),
                          "chosen": rows.value[rows.chosen].iloc[0],
                          "at the ladder's end": "yes" if rows.ladder_end[rows.chosen].iloc[0] else ""}
                         for m, rows in tuning.groupby("method", sort=False)]).set_index("method")
