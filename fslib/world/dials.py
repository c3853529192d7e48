"""Dials: one dataset family drawn at designed levels, each level staging a situation more strongly.

A paper's claim has the form "in situation S, plain practice P goes wrong and method M fixes it". A fixed
dataset either stages S or it does not; a dial draws the same classes at graded strength of S, so a notebook
can first find where S happens (the premise) and then decide M's claim there, and decide trends over levels
that were designed rather than sampled.

Every level is an ordinary dataset (``load_dataset("sketch_shift@0.4", "test")``), with train, val and test
splits like the other embedded datasets. The levels of a dial draw **the same scenes** (objects, colours,
positions, pixel noise): only the knob differs between them, so a model fitted on one level can be scored on
every other level image for image (a *test-side* dial: one fit per arm and seed), or fitted on each level in
turn (a *training-side* dial: one fit per level).

=================  ==============================================================================
dial               what a level changes
=================  ==============================================================================
sketch_shift       the 12 pretraining shapes, each image a pixel blend of the scene in a pretraining
                   style (level 0, the ``shapes`` dataset's scenes) and the same scene as a pencil
                   sketch (level 1, ``shapes_sketch``'s style, never seen in pretraining); class names,
                   prompts and so the text side stay fixed while the images move away from what the
                   tiny CLIP knows
=================  ==============================================================================
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from fslib.data import SPLITS, ImageDataset, register_named_datasets
from fslib.world.render import render
from fslib.world.suite import WORLD_DATASETS, images_per_class


@dataclass(frozen=True)
class Dial:
    """A dataset family at designed ``levels``: ``stages`` says what situation a level stages, ``knob`` what a
    level changes. Level ``x`` is the dataset ``"<name>@<x>"``."""

    name: str
    stages: str
    knob: str
    levels: tuple[float, ...]
    base_dataset: str  # the embedded dataset whose scenes, classes and prompts every level draws

    def dataset(self, level: float) -> str:
        """The name of the dataset at ``level`` (one of :attr:`levels`)."""
        if level not in self.levels:
            raise ValueError(f"{self.name} has no level {level!r}; allowed: {', '.join(f'{x:g}' for x in self.levels)}")
        return f"{self.name}@{level:g}"

    def datasets(self, levels: tuple[float, ...] | None = None) -> dict[float, str]:
        """``{level: dataset name}`` for ``levels`` (default: all of them), in the order given."""
        return {level: self.dataset(level) for level in (self.levels if levels is None else levels)}


DIALS: dict[str, Dial] = {d.name: d for d in [
    Dial("sketch_shift",
         stages="how much of what the tiny CLIP learnt in pretraining still applies to the images",
         knob="pixel blend weight of a pencil sketch of the scene over its pretraining-style rendering",
         # six equal steps from the pretraining's own styles to a style it never saw: where along the way
         # zero-shot recognition breaks down is what a notebook measures, not what the design assumes
         levels=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
         base_dataset="shapes"),
]}


def _seed(dial: str, split: str) -> int:
    return zlib.crc32(f"fslib-dial/{dial}/{split}".encode())


@lru_cache(maxsize=64)
def _build(dial_name: str, level: float, split: str) -> ImageDataset:
    dial = DIALS[dial_name]
    spec = WORLD_DATASETS[dial.base_dataset]
    rng = np.random.default_rng(_seed(dial_name, split))  # the same stream, so the same scenes, at every level
    labels = np.repeat(np.arange(len(spec.classnames)), images_per_class(len(spec.classnames), split))
    images = np.empty((len(labels), 64, 64, 3), np.uint8)
    for i, label in enumerate(labels):
        scene = spec.make_scene(int(label), rng)
        photo = render(scene, rng).astype(np.float32)
        sketch = render(replace(scene, style="sketch"), rng).astype(np.float32)  # drawn at every level
        images[i] = np.rint((1 - level) * photo + level * sketch).astype(np.uint8)
    images.flags.writeable = False
    name = dial.dataset(level)
    return ImageDataset(name, split, list(spec.classnames), labels, images, list(spec.templates),
                        domain=spec.domain if level == 0 else "ood", source_id=f"fslib-dial:{name}:{split}")


def load_dial_dataset(name: str, split: str = "test") -> ImageDataset:
    """One split of a dial's level, by its dataset name ``"<dial>@<level>"`` (rendered once per process)."""
    dial_name, _, level_text = name.partition("@")
    if dial_name not in DIALS:
        raise ValueError(f"unknown dial {dial_name!r}; allowed: {', '.join(DIALS)}")
    dial = DIALS[dial_name]
    level = next((x for x in dial.levels if level_text and f"{x:g}" == level_text), None)
    if level is None:
        raise ValueError(f"{dial_name} has no level {level_text!r}; allowed: {', '.join(f'{x:g}' for x in dial.levels)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    return _build(dial_name, level, split)


register_named_datasets([dial.dataset(x) for dial in DIALS.values() for x in dial.levels], load_dial_dataset)
