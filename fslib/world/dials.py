"""Dials: one dataset family drawn at designed levels, each level staging a situation more strongly.

A paper's claim has the form "in situation S, plain practice P goes wrong and method M fixes it". A fixed
dataset either stages S or it does not; a dial draws the same classes at graded strength of S, so a notebook
can first find where S happens (the premise) and then decide M's claim there, and decide trends over levels
that were designed rather than sampled.

Every level is an ordinary dataset (``load_dataset("sketch_shift@0.4", "test")``), with train, val and test
splits like the other embedded datasets. The levels of a dial draw from **the same random stream**: what a
level does not change (objects, colours, positions, pixel noise; the base classes' images) is identical at
every level, so a model fitted on one level can be scored on every other level image for image (a
*test-side* dial: one fit per arm and seed), or fitted on each level in turn (a *training-side* dial).

=================  ==============================================================================
dial               what a level changes
=================  ==============================================================================
sketch_shift       the 12 pretraining shapes, each image a pixel blend of the scene in a pretraining
                   style (level 0, the ``shapes`` dataset's scenes) and the same scene as a pencil
                   sketch (level 1, ``shapes_sketch``'s style, never seen in pretraining); class names,
                   prompts and so the text side stay fixed while the images move away from what the
                   tiny CLIP knows
class_distance     six fixed base classes (colour-shape pairs) and, at level k, six new pairs from the
                   k-th of six bins of text-feature distance to the base classes (APEX's d_avg, Yang,
                   Ko, Yun 2023, §4.2): the images (a fixed sketch blend, DISTANCE_SKETCH_BLEND) and the
                   base classes stay the same, the new classes move away from the base classes in
                   CLIP's text space
spurious_cue       the 10 textures; in the train split the object of class k has colour k with
                   probability ρ (the level) and a random colour otherwise, so a colour predicts
                   the texture as often as ρ says; the val and test splits always draw the colour
                   at random, so a model that learnt the colour for the texture loses there
=================  ==============================================================================
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

from fslib.data import SPLITS, ImageDataset, register_named_datasets
from fslib.world.corpus import PRETRAIN_STYLES, single_object_scene
from fslib.world.render import COLORS, render
from fslib.world.suite import WORLD_DATASETS, images_per_class


@dataclass(frozen=True)
class Level:
    """What one level draws: its classes and prompts, and ``draw(label, rng, split)``, one 64x64 RGB image of
    a split (a level may draw its train split apart from its val and test splits: ``spurious_cue``)."""

    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    draw: Callable[[int, np.random.Generator, str], np.ndarray]
    domain: str


@dataclass(frozen=True)
class Dial:
    """A dataset family at designed ``levels``: ``stages`` says what situation a level stages, ``knob`` what a
    level changes, ``level(x)`` what level ``x`` draws. Level ``x`` is the dataset ``"<name>@<x>"``."""

    name: str
    stages: str
    knob: str
    levels: tuple[float, ...]
    level: Callable[[float], Level]

    def dataset(self, level: float) -> str:
        """The name of the dataset at ``level`` (one of :attr:`levels`)."""
        if level not in self.levels:
            raise ValueError(f"{self.name} has no level {level!r}; allowed: {', '.join(f'{x:g}' for x in self.levels)}")
        return f"{self.name}@{level:g}"

    def datasets(self, levels: tuple[float, ...] | None = None) -> dict[float, str]:
        """``{level: dataset name}`` for ``levels`` (default: all of them), in the order given."""
        return {level: self.dataset(level) for level in (self.levels if levels is None else levels)}


# -- sketch_shift: the same scenes, blended from pretraining styles to pencil sketches -------------
def _sketch_level(level: float) -> Level:
    spec = WORLD_DATASETS["shapes"]

    def draw(label: int, rng: np.random.Generator, split: str) -> np.ndarray:
        scene = spec.make_scene(label, rng)
        photo = render(scene, rng).astype(np.float32)
        sketch = render(replace(scene, style="sketch"), rng).astype(np.float32)  # drawn at every level
        return np.rint((1 - level) * photo + level * sketch).astype(np.uint8)

    return Level(spec.classnames, spec.templates, draw, spec.domain if level == 0 else "ood")


# -- class_distance: fixed base classes, new classes binned by text distance ----------------------
DISTANCE_BASE = ("red circle", "blue square", "green triangle", "yellow star", "purple heart", "orange diamond")
DISTANCE_TEMPLATE = "a photo of a {}."  # APEX's one prompt, from which d_avg is computed
# every level's images are drawn at this sketch blend (as sketch_shift's levels): the blend, on a 0.1 grid, at
# which the tiny CLIP's zero-shot accuracy on the base classes' validation images (67.7%) lies nearest CLIP's
# average base-class accuracy in APEX's Table 2 (69.34%), so that the base classes have something to learn;
# fixed from zero-shot accuracy alone, before any fit
DISTANCE_SKETCH_BLEND = 0.7


def distance_bins(names: Sequence[str], d_avg: Sequence[float], levels: int = 6, per_level: int = 6) -> list[tuple[str, ...]]:
    """The class-distance dial's rule, fixed before any fit: sort the candidate classes ``names`` by their mean
    text distance ``d_avg`` to the base classes, cut them into ``levels`` bins of equal count (nearest
    first), and take ``per_level`` classes at evenly spaced ranks within each bin."""
    order = np.argsort(np.asarray(d_avg), kind="stable")
    bins = np.array_split(order, levels)
    return [tuple(names[int(b[i])] for i in np.linspace(0, len(b) - 1, per_level).round().astype(int)) for b in bins]


# distance_bins over every other pair of the 11 colours and 12 pretraining shapes, d_avg from the embedded
# tiny CLIP's text features of DISTANCE_TEMPLATE (tests/test_world.py recomputes them from the model)
DISTANCE_NEW = (
    ("blue hexagon", "orange hexagon", "blue circle", "green hexagon", "blue heart", "red square"),
    ("yellow plus", "green diamond", "purple cross", "brown hexagon", "cyan square", "white hexagon"),
    ("cyan hexagon", "black diamond", "brown circle", "brown plus", "white diamond", "cyan circle"),
    ("blue star", "pink plus", "black heart", "purple arrow", "green star", "orange star"),
    ("black triangle", "blue arrow", "green arrow", "orange crescent", "blue ring", "black crescent"),
    ("brown crescent", "green ring", "white crescent", "cyan crescent", "black ring", "pink ring"),
)


def _distance_level(level: float) -> Level:
    pairs = DISTANCE_BASE + DISTANCE_NEW[int(level) - 1]

    def draw(label: int, rng: np.random.Generator, split: str) -> np.ndarray:
        color, shape = pairs[label].split(" ")
        size = str(rng.choice(["medium", "large"]))
        scene = single_object_scene(rng, shape, color, size, position="center", style=str(rng.choice(PRETRAIN_STYLES)))
        photo = render(scene, rng).astype(np.float32)
        sketch = render(replace(scene, style="sketch"), rng).astype(np.float32)
        return np.rint((1 - DISTANCE_SKETCH_BLEND) * photo + DISTANCE_SKETCH_BLEND * sketch).astype(np.uint8)

    return Level(pairs, (DISTANCE_TEMPLATE, "a picture of a {}.", "a {}."), draw, "ood")


# -- spurious_cue: the textures, each tied to a colour in the training images only ---------------
# MAMF's story (Wang et al., 2022, §1): fine-tuning an expressive model on a few images of related classes
# can latch onto what merely co-occurs with the label there. The cue is the object's colour: the tiny CLIP
# knows every colour by name and only six of the ten textures, so the colour is the easier feature to learn.
def _cue_level(level: float) -> Level:
    spec = WORLD_DATASETS["textures"]
    colors = list(COLORS)

    def draw(label: int, rng: np.random.Generator, split: str) -> np.ndarray:
        shape, random_color = str(rng.choice(["square", "circle", "hexagon"])), str(rng.choice(colors))
        cued = rng.random() < level  # drawn at every level and split, so the streams stay aligned
        color = colors[label] if split == "train" and cued else random_color
        scene = single_object_scene(rng, shape, color, "large", texture=spec.classnames[label],
                                    style=str(rng.choice(["flat", "shaded"])))
        return render(scene, rng)

    return Level(spec.classnames, spec.templates, draw, spec.domain)


DIALS: dict[str, Dial] = {d.name: d for d in [
    Dial("sketch_shift",
         stages="how much of what the tiny CLIP learnt in pretraining still applies to the images",
         knob="pixel blend weight of a pencil sketch of the scene over its pretraining-style rendering",
         # six equal steps from the pretraining's own styles to a style it never saw: where along the way
         # zero-shot recognition breaks down is what a notebook measures, not what the design assumes
         levels=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), level=_sketch_level),
    Dial("class_distance",
         stages="how far the new classes lie from the training (base) classes in CLIP's text space",
         knob="the six new classes: level k draws them from the k-th of six equal-count bins of mean text "
              "distance to the six base classes (distance_bins)",
         # six bins over the whole candidate pool, nearest first: the range the world offers, cut evenly
         levels=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0), level=_distance_level),
    Dial("spurious_cue",
         stages="how strongly a feature that is not the class (the object's colour) predicts the class in the "
                "training images, while it predicts nothing in the images a model is tested on",
         knob="probability ρ that a training image of class k shows colour k (otherwise a random colour)",
         # six equal steps from no cue to a cue on every training image: the whole range of the story
         levels=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), level=_cue_level),
]}


def _seed(dial: str, split: str) -> int:
    return zlib.crc32(f"fslib-dial/{dial}/{split}".encode())


@lru_cache(maxsize=64)
def _build(dial_name: str, level: float, split: str) -> ImageDataset:
    dial = DIALS[dial_name]
    spec = dial.level(level)
    rng = np.random.default_rng(_seed(dial_name, split))  # the same stream, so the same scenes, at every level
    labels = np.repeat(np.arange(len(spec.classnames)), images_per_class(len(spec.classnames), split))
    images = np.empty((len(labels), 64, 64, 3), np.uint8)
    for i, label in enumerate(labels):
        images[i] = spec.draw(int(label), rng, split)
    images.flags.writeable = False
    name = dial.dataset(level)
    return ImageDataset(name, split, list(spec.classnames), labels, images, list(spec.templates),
                        domain=spec.domain, source_id=f"fslib-dial:{name}:{split}")


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
