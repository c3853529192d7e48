"""The embedded world's downstream datasets, from easy to very hard transfer.

Each dataset draws its own train / val / test images from its own seed, so the splits are
independent samples of the same classes. Meta-training (MAMF, SMAT) uses ``domain``: ``"id"``
datasets are in-distribution (the concepts pretraining named), ``"ood"`` ones are held out.

=================  ======  ===============================================================
dataset            domain  what makes it easy or hard
=================  ======  ===============================================================
colors             id      11 colours, all named in pretraining
shapes             id      the 12 pretraining shapes, object-centric, in the pretraining styles
positions          id      where a single object sits on a 3x3 grid
color_shapes       id      16 colour-shape pairs, next to a distractor object (binding)
textures           id      10 textures, only 6 of them ever named in captions
counting           ood     1-10 objects; captions only named counts up to four (CLEVR-like)
shapes_sketch      ood     the 12 shapes as pencil outlines, a style never seen (domain shift)
shapes_inverted    ood     the 12 shapes with inverted colours, a style never seen
novel_shapes       ood     10 shapes never drawn in pretraining, named by nonce words
digits             ood     scikit-learn's handwritten digits (real images), upsampled
=================  ======  ===============================================================
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from PIL import Image

from fslib.data import SPLITS, ImageDataset, register_named_datasets
from fslib.world.corpus import (NAMED_TEXTURES, NUMBER_WORDS, PRETRAIN_STYLES, counting_scene,
                                single_object_scene, two_object_scene)
from fslib.world.render import COLORS, NOVEL_SHAPES, POSITIONS, SEEN_SHAPES, TEXTURES, Scene, render

# images per class in the train and val splits; val is for choosing hyper-parameters, never test
PER_CLASS = {"train": 32, "val": 16}
# test images per dataset: a 95% binomial CI of at most about +-2.5 points at 50% accuracy
TEST_IMAGES = 1536
_COMPOSITION_COLORS = ("red", "green", "blue", "yellow")
_COMPOSITION_SHAPES = ("circle", "square", "triangle", "star")

SceneMaker = Callable[[int, np.random.Generator], Scene]


@dataclass(frozen=True)
class WorldDataset:
    name: str
    domain: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    make_scene: SceneMaker | None  # None: real images (digits)
    description: str


def _style(rng: np.random.Generator) -> str:
    return str(rng.choice(PRETRAIN_STYLES))


def _any_color(rng: np.random.Generator) -> str:
    return str(rng.choice(list(COLORS)))


def _shape_scene(shapes: tuple[str, ...], style: Callable[[np.random.Generator], str]) -> SceneMaker:
    """Object-centric photos, like ImageNet's: one medium or large object near the centre."""
    def make(label: int, rng: np.random.Generator) -> Scene:
        size = str(rng.choice(["medium", "large"]))
        return single_object_scene(rng, shapes[label], _any_color(rng), size, position="center", style=style(rng))
    return make


def _color_scene(label: int, rng: np.random.Generator) -> Scene:
    shape = str(rng.choice(SEEN_SHAPES))
    return single_object_scene(rng, shape, list(COLORS)[label], "large", style=_style(rng))


def _position_scene(label: int, rng: np.random.Generator) -> Scene:
    return single_object_scene(rng, str(rng.choice(SEEN_SHAPES)), _any_color(rng), "small",
                               position=list(POSITIONS)[label], style=_style(rng))


def _texture_scene(label: int, rng: np.random.Generator) -> Scene:
    return single_object_scene(rng, str(rng.choice(["square", "circle", "hexagon"])), _any_color(rng), "large",
                               texture=list(TEXTURES)[label], style=str(rng.choice(["flat", "shaded"])))


def _composition_scene(label: int, rng: np.random.Generator) -> Scene:
    color = _COMPOSITION_COLORS[label // len(_COMPOSITION_SHAPES)]
    shape = _COMPOSITION_SHAPES[label % len(_COMPOSITION_SHAPES)]
    other_shape = str(rng.choice([s for s in SEEN_SHAPES if s not in _COMPOSITION_SHAPES]))
    other_color = str(rng.choice([c for c in COLORS if c not in _COMPOSITION_COLORS]))
    return two_object_scene(rng, (shape, color), (other_shape, other_color), _style(rng))


def _counting_scene(label: int, rng: np.random.Generator) -> Scene:
    return counting_scene(rng, label + 1, str(rng.choice(SEEN_SHAPES)), _any_color(rng), _style(rng))


_SHAPE_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "a shaded rendering of a {}.", "a {}.")
WORLD_DATASETS: dict[str, WorldDataset] = {d.name: d for d in [
    WorldDataset("colors", "id", tuple(COLORS), ("a photo of a {} object.", "a {} shape.", "a picture of a {} object."),
                 _color_scene, "11 colours on random pretraining shapes"),
    WorldDataset("shapes", "id", tuple(SEEN_SHAPES), _SHAPE_TEMPLATES,
                 _shape_scene(tuple(SEEN_SHAPES), _style), "the 12 pretraining shapes in pretraining styles"),
    WorldDataset("positions", "id", tuple(POSITIONS), ("a photo of an object in the {}.", "a shape in the {}."),
                 _position_scene, "a small object at one of 9 grid positions"),
    WorldDataset("color_shapes", "id",
                 tuple(f"{c} {s}" for c in _COMPOSITION_COLORS for s in _COMPOSITION_SHAPES), _SHAPE_TEMPLATES,
                 _composition_scene, "16 colour-shape pairs beside a distractor object"),
    WorldDataset("textures", "id", tuple(TEXTURES), ("a photo of a {} object.", "a {} shape."),
                 _texture_scene, f"10 textures; only {', '.join(NAMED_TEXTURES)} are ever named in pretraining"),
    WorldDataset("counting", "ood", NUMBER_WORDS, ("an image of {} objects.", "a photo of {} shapes."),
                 _counting_scene, "1-10 objects; pretraining captions name counts only up to four"),
    WorldDataset("shapes_sketch", "ood", tuple(SEEN_SHAPES), _SHAPE_TEMPLATES,
                 _shape_scene(tuple(SEEN_SHAPES), lambda rng: "sketch"), "the 12 shapes as pencil outlines (unseen style)"),
    WorldDataset("shapes_inverted", "ood", tuple(SEEN_SHAPES), _SHAPE_TEMPLATES,
                 _shape_scene(tuple(SEEN_SHAPES), lambda rng: "inverted"), "the 12 shapes, colours inverted (unseen style)"),
    WorldDataset("novel_shapes", "ood", tuple(NOVEL_SHAPES), _SHAPE_TEMPLATES,
                 _shape_scene(tuple(NOVEL_SHAPES), _style), "10 never-seen shapes named by nonce words"),
    WorldDataset("digits", "ood", ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
                 ("a photo of the digit {}.", "a drawing of the number {}."), None,
                 "scikit-learn handwritten digits, 8x8 upsampled to 64x64"),
]}
ID_DATASETS = [n for n, d in WORLD_DATASETS.items() if d.domain == "id"]
OOD_DATASETS = [n for n, d in WORLD_DATASETS.items() if d.domain == "ood"]


def _seed(name: str, split: str) -> int:
    return zlib.crc32(f"fslib-world/{name}/{split}".encode())


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits split per class by a fixed shuffle (32 train, 16 val, rest test)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(_seed("digits", "shuffle"))
    start = {"train": 0, "val": PER_CLASS["train"], "test": PER_CLASS["train"] + PER_CLASS["val"]}[split]
    stop = None if split == "test" else start + PER_CLASS[split]
    picks = np.concatenate([rng.permutation(np.flatnonzero(digits.target == c))[start:stop] for c in range(10)])
    images = np.stack([
        np.asarray(Image.fromarray((digits.images[i] * (255 / 16)).astype(np.uint8)).resize((64, 64), Image.BILINEAR))
        for i in picks
    ])
    return np.repeat(images[..., None], 3, axis=-1), digits.target[picks]


def images_per_class(num_classes: int, split: str) -> int:
    """Train and val: fixed per class; test: enough that the whole split has ``TEST_IMAGES`` images."""
    return PER_CLASS[split] if split in PER_CLASS else -(-TEST_IMAGES // num_classes)


@lru_cache(maxsize=64)
def _build(name: str, split: str) -> ImageDataset:
    spec = WORLD_DATASETS[name]
    if spec.make_scene is None:
        images, labels = _digits(split)
    else:
        rng = np.random.default_rng(_seed(name, split))
        labels = np.repeat(np.arange(len(spec.classnames)), images_per_class(len(spec.classnames), split))
        images = np.stack([render(spec.make_scene(int(y), rng), rng) for y in labels])
    images.flags.writeable = False
    return ImageDataset(name, split, list(spec.classnames), labels, images, list(spec.templates), spec.domain,
                        source_id=f"fslib-world:{name}:{split}")


def load_world_dataset(name: str, split: str = "test") -> ImageDataset:
    """One split of an embedded dataset (rendered once per process, then cached in memory)."""
    if name not in WORLD_DATASETS:
        raise ValueError(f"unknown embedded dataset {name!r}; allowed: {', '.join(WORLD_DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    return _build(name, split)


register_named_datasets(WORLD_DATASETS, load_world_dataset)
