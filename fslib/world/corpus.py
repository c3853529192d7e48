"""Scene samplers and the pretraining image-caption corpus of the embedded world.

What pretraining shows the tiny CLIP (and so what transfer is easy or hard afterwards):

* the 12 ``SEEN_SHAPES`` by name; the 10 ``NOVEL_SHAPES`` and their nonce names never;
* all 11 colours, 3 sizes and 9 positions by name;
* all 10 textures in images, but only ``NAMED_TEXTURES`` in captions;
* counts of 1-10 objects in images, but exact number words only up to ``MAX_NAMED_COUNT``
  ("many" beyond), so counting is an analogue of CLIP's weak CLEVR-counting transfer;
* the ``PRETRAIN_STYLES`` flat, shaded and noisy; sketch and inverted never (domain shift).
"""
from __future__ import annotations

import numpy as np

from fslib.world.render import COLORS, POSITIONS, SEEN_SHAPES, SIZES, TEXTURES, Obj, Scene

PRETRAIN_STYLES = ("flat", "shaded", "noisy")
NAMED_TEXTURES = ("solid", "striped", "dotted", "checkered", "gradient", "wavy")
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
MAX_NAMED_COUNT = 4
_STYLE_PREFIXES = {
    "flat": ("a photo of", "a picture of", "an image of", "a drawing of"),
    "shaded": ("a shaded rendering of", "a 3d render of"),
    "noisy": ("a noisy photo of", "a grainy picture of"),
}


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x", "sh", "ch")) else "s")


def random_background(rng: np.random.Generator) -> tuple[int, int, int]:
    """A muted mid-tone background: every object colour stays visible on it."""
    grey = rng.uniform(75, 165)
    return tuple(int(c) for c in np.clip(grey + rng.uniform(-18, 18, 3), 0, 255))


def place(rng: np.random.Generator, size: str, position: str | None = None) -> tuple[float, tuple[float, float]]:
    """Radius (px) and centre (image fractions) for an object of ``size``, kept inside the image.

    With ``position`` the centre is jittered around that cell of the 3x3 grid.
    """
    radius = rng.uniform(*SIZES[size])
    margin = (radius + 1) / 64
    if position is None:
        centre = rng.uniform(margin, 1 - margin, 2)
    else:
        centre = np.array(POSITIONS[position]) + rng.uniform(-0.05, 0.05, 2)
    return radius, tuple(float(c) for c in np.clip(centre, margin, 1 - margin))


def single_object_scene(
    rng: np.random.Generator,
    shape: str,
    color: str,
    size: str = "medium",
    texture: str = "solid",
    position: str | None = None,
    style: str = "flat",
) -> Scene:
    radius, centre = place(rng, size, position)
    obj = Obj(shape, color, radius, centre, texture, float(rng.uniform(-12, 12)))
    return Scene((obj,), style, random_background(rng))


def counting_scene(rng: np.random.Generator, count: int, shape: str, color: str, style: str = "flat") -> Scene:
    """``count`` small objects of one kind in distinct cells of a 5x5 grid (so none overlap)."""
    cells = rng.choice(25, size=count, replace=False)
    objects = []
    for cell in cells:
        centre = ((cell % 5 + 0.5) / 5 + rng.uniform(-0.02, 0.02), (cell // 5 + 0.5) / 5 + rng.uniform(-0.02, 0.02))
        objects.append(Obj(shape, color, float(rng.uniform(4.5, 5.5)), centre, "solid", float(rng.uniform(-12, 12))))
    return Scene(tuple(objects), style, random_background(rng))


def two_object_scene(rng: np.random.Generator, first: tuple[str, str], second: tuple[str, str], style: str = "flat") -> Scene:
    """A medium object on the left half and a small one on the right half (sides swapped at random)."""
    sides = rng.permutation([0.27, 0.73])
    objects = []
    for (shape, color), x, size in zip((first, second), sides, ("medium", "small")):
        radius = rng.uniform(*SIZES[size])
        centre = (float(x + rng.uniform(-0.04, 0.04)), float(rng.uniform(0.3, 0.7)))
        objects.append(Obj(shape, color, radius, centre, "solid", float(rng.uniform(-12, 12))))
    return Scene(tuple(objects), style, random_background(rng))


def _prefix(rng: np.random.Generator, style: str, phrase: str) -> str:
    if rng.random() < 0.6:
        return f"{rng.choice(_STYLE_PREFIXES[style])} {phrase}"
    return phrase


def sample_pretraining_pair(rng: np.random.Generator) -> tuple[Scene, str]:
    """One (scene, caption) pair: 60% single objects (half of them centred), 25% counting scenes, 15% object pairs."""
    style = str(rng.choice(PRETRAIN_STYLES, p=[0.5, 0.25, 0.25]))
    shape, color = str(rng.choice(SEEN_SHAPES)), str(rng.choice(list(COLORS)))
    kind = rng.random()
    if kind < 0.6:
        # Half the single objects are object-centric photos (centred, never small), as in the web
        # photos CLIP learns from; the other half sit anywhere on the 3x3 grid.
        centric = rng.random() < 0.5
        size = str(rng.choice(["medium", "large"] if centric else list(SIZES)))
        texture = "solid" if rng.random() < 0.5 else str(rng.choice(list(TEXTURES)))
        position = "center" if centric else str(rng.choice(list(POSITIONS)))
        scene = single_object_scene(rng, shape, color, size, texture, position, style)
        # Colour is named only half the time: when every caption names it, colour alone matches
        # most pairs and suppresses the harder shape features (Chen et al., 2021, "Intriguing
        # properties of contrastive losses", feature suppression).
        words = [
            size if rng.random() < 0.4 else None,
            color if rng.random() < 0.5 else None,
            texture if texture in NAMED_TEXTURES and rng.random() < (0.2 if texture == "solid" else 0.7) else None,
            shape if rng.random() < 0.95 else str(rng.choice(["object", "shape"])),
        ]
        caption = article(" ".join(w for w in words if w))
        if rng.random() < (0.15 if centric else 0.6):
            caption += f" in the {position}"
    elif kind < 0.85:
        count = int(rng.integers(1, 11))
        scene = counting_scene(rng, count, shape, color, style)
        noun = shape if rng.random() < 0.85 else str(rng.choice(["object", "shape"]))
        if count == 1:
            caption = article(f"{color} {noun}") if rng.random() < 0.5 else f"one {color} {noun}"
        else:
            number = NUMBER_WORDS[count - 1] if count <= MAX_NAMED_COUNT else "many"
            caption = f"{number} {color} {plural(noun)}" if rng.random() < 0.8 else f"{number} {plural(noun)}"
    else:
        other_shape = str(rng.choice([s for s in SEEN_SHAPES if s != shape]))
        other_color = str(rng.choice([c for c in COLORS if c != color]))
        scene = two_object_scene(rng, (shape, color), (other_shape, other_color), style)
        caption = f"{article(f'{color} {shape}')} and {article(f'{other_color} {other_shape}')}"
    return scene, _prefix(rng, style, caption)
