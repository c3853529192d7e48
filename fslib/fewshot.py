"""Few-shot sampling: K shots per class by seed, base/new class splits, and N-way K-shot episodes.

The sampling protocols follow CoOp (Zhou et al., 2022): K training images per class drawn with
seeds 1-3, and for base-to-new generalisation the first half of the sorted labels is *base*, the
rest *new*. The episodic sampler follows the Meta-Dataset / ProtoNet style of N classes, K
support and Q query images per class, drawn from one dataset of a pool.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from fslib.data import ImageDataset


def few_shot_indices(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Indices of ``shots`` examples per class, the same for the same (labels, shots, seed)."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    rng = np.random.default_rng(seed)
    picks = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < shots:
            raise ValueError(f"class {label} has {len(members)} images, fewer than shots={shots}")
        picks.append(np.sort(rng.choice(members, size=shots, replace=False)))
    return np.concatenate(picks)


def few_shot(dataset: ImageDataset, shots: int, seed: int) -> ImageDataset:
    """A K-shot subset of ``dataset``; its ``source_id`` records the sampled indices."""
    return dataset.subset(few_shot_indices(dataset.labels, shots, seed), split=f"{dataset.split}-{shots}shot-seed{seed}")


def fixed_test_sample(test: ImageDataset, per_class: int | None) -> ImageDataset:
    """A fixed class-balanced sample of a test split, the same for every method and seed (drawn with
    seed 0), so comparisons stay paired on the same images. For notebooks whose methods run the whole
    tower at evaluation, where the full split would dominate the run time. ``None`` or 0 (or more than
    the smallest class holds) keeps the whole split."""
    if not per_class or per_class >= np.bincount(test.labels).min():
        return test
    return few_shot(test, per_class, seed=0)


def base_new_classes(num_classes: int) -> tuple[list[int], list[int]]:
    """Base = the first ceil(C/2) labels in sorted order, new = the rest (CoOp's ``subsample_classes``)."""
    cut = (num_classes + 1) // 2
    return list(range(cut)), list(range(cut, num_classes))


def restrict_classes(dataset: ImageDataset, classes: Sequence[int], part: str) -> ImageDataset:
    """The images of ``classes`` only, relabelled 0..len(classes)-1 in the given order."""
    classes = list(classes)
    keep = np.flatnonzero(np.isin(dataset.labels, classes))
    subset = dataset.subset(keep, split=f"{dataset.split}-{part}")
    remap = {old: new for new, old in enumerate(classes)}
    return replace(subset, labels=np.array([remap[y] for y in subset.labels], dtype=np.int64),
                   classnames=[dataset.classnames[c] for c in classes])


def base_new_split(dataset: ImageDataset) -> tuple[ImageDataset, ImageDataset]:
    """(base, new) halves of a dataset for base-to-new generalisation."""
    base, new = base_new_classes(dataset.num_classes)
    return restrict_classes(dataset, base, "base"), restrict_classes(dataset, new, "new")


def base_to_new_sets(train: ImageDataset, test: ImageDataset) -> tuple[ImageDataset, ImageDataset, ImageDataset]:
    """The three sets of the base-to-new protocol: (base-class train, base-class test, new-class test)."""
    (base_train, _), (base_test, new_test) = base_new_split(train), base_new_split(test)
    return base_train, base_test, new_test


@dataclass
class Episode:
    """One N-way task: ``support`` and ``query`` are relabelled to 0..N-1."""

    dataset: str
    classes: list[int]
    support: ImageDataset
    query: ImageDataset


class EpisodeSampler:
    """Draw N-way K-shot Q-query episodes from a pool of datasets (one dataset per episode)."""

    def __init__(self, pool: Sequence[ImageDataset], n_way: int, k_shot: int, q_query: int, seed: int = 0):
        if not pool:
            raise ValueError("the episode pool is empty")
        if n_way < 2:
            raise ValueError(f"n_way must be >= 2, got {n_way}")
        if k_shot < 1 or q_query < 1:
            raise ValueError(f"k_shot and q_query must be >= 1, got k_shot={k_shot}, q_query={q_query}")
        need = k_shot + q_query
        for dataset in pool:
            counts = np.bincount(dataset.labels, minlength=dataset.num_classes)
            eligible = int((counts >= need).sum())
            if eligible < n_way:
                short = [f"{dataset.classnames[c]} ({counts[c]})" for c in np.flatnonzero(counts < need)][:5]
                raise ValueError(
                    f"dataset {dataset.name!r} has only {eligible} classes with at least k_shot+q_query={need} images, "
                    f"fewer than n_way={n_way}; too small: {', '.join(short)}")
        self.pool, self.n_way, self.k_shot, self.q_query = list(pool), n_way, k_shot, q_query
        self.rng = np.random.default_rng(seed)

    def sample(self) -> Episode:
        dataset = self.pool[self.rng.integers(len(self.pool))]
        counts = np.bincount(dataset.labels, minlength=dataset.num_classes)
        classes = sorted(self.rng.choice(np.flatnonzero(counts >= self.k_shot + self.q_query), self.n_way, replace=False).tolist())
        support, query = [], []
        for c in classes:
            members = self.rng.permutation(np.flatnonzero(dataset.labels == c))
            support.extend(members[:self.k_shot])
            query.extend(members[self.k_shot:self.k_shot + self.q_query])
        relabel = lambda idx, part: restrict_classes(dataset.subset(idx), classes, part)
        return Episode(dataset.name, classes, relabel(support, "support"), relabel(query, "query"))

    def __iter__(self):
        while True:
            yield self.sample()
