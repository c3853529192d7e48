"""Drawing the embedded world: shapes with colour, size, texture and position, in several styles.

A :class:`Scene` is a list of :class:`Obj` plus a style and a background; :func:`render` turns it
into a 64x64 RGB ``uint8`` array. Every shape, texture and style is a few numpy expressions over
the whole pixel grid (no per-pixel Python loops), so a scene draws in well under a millisecond.

The vocabularies here are the world's ground truth. Which of them the tiny CLIP ever sees in
pretraining is decided in :mod:`fslib.world.corpus`, not here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

IMAGE_SIZE = 64

# ---------------------------------------------------------------------------------------------
# Shapes: each is a predicate over normalised object coordinates (u right, v up, object in the
# unit disc). ``_polygon`` covers the regular polygons via their apothem directions.
# ---------------------------------------------------------------------------------------------
Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _polygon(sides: int, apothem: float, phase_deg: float) -> Mask:
    angles = np.deg2rad(phase_deg + 360.0 * np.arange(sides) / sides)

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        proj = u[..., None] * np.cos(angles) + v[..., None] * np.sin(angles)
        return (proj <= apothem).all(-1)

    return inside


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    return r <= 0.38 + 0.52 * ((np.cos(5 * (theta - np.pi / 2)) + 1) / 2) ** 2


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, y = 1.25 * u, 1.25 * v + 0.2
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0


SHAPES: dict[str, Mask] = {
    # shapes the tiny CLIP sees, by name, during pretraining
    "circle": lambda u, v: u**2 + v**2 <= 0.85**2,
    "square": _polygon(4, 0.68, 0),
    "triangle": _polygon(3, 0.45, -90),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 0.9,
    "hexagon": _polygon(6, 0.78, 0),
    "star": _star,
    "heart": _heart,
    "cross": lambda u, v: ((np.abs(u - v) < 0.32) | (np.abs(u + v) < 0.32)) & (np.maximum(np.abs(u), np.abs(v)) < 0.75),
    "plus": lambda u, v: ((np.abs(u) < 0.25) | (np.abs(v) < 0.25)) & (np.maximum(np.abs(u), np.abs(v)) < 0.85),
    "ring": lambda u, v: (u**2 + v**2 <= 0.88**2) & (u**2 + v**2 >= 0.5**2),
    "crescent": lambda u, v: (u**2 + v**2 <= 0.85**2) & ((u - 0.4) ** 2 + (v - 0.15) ** 2 > 0.65**2),
    "arrow": lambda u, v: ((np.abs(v) < 0.2) & (u > -0.85) & (u < 0.15)) | ((u >= 0.1) & (u <= 0.85) & (np.abs(v) <= 0.85 - u)),
    # shapes that never appear in pretraining, named by nonce words the text tower never saw
    "dax": _polygon(5, 0.7, -90),  # pentagon
    "wug": _polygon(8, 0.8, 22.5),  # octagon
    "blicket": lambda u, v: (u**2 + (v + 0.35) ** 2 <= 0.85**2) & (v >= -0.35),  # semicircle
    "toma": lambda u, v: (np.abs(v) <= 0.5) & (np.abs(u) <= 0.6 - 0.5 * v),  # trapezoid
    "fep": lambda u, v: ((u > -0.7) & (u < -0.2) & (np.abs(v) < 0.8)) | ((np.abs(u) < 0.7) & (v > -0.8) & (v < -0.3)),  # L
    "zorb": lambda u, v: ((np.abs(u) < 0.8) & (v > 0.35) & (v < 0.8)) | ((np.abs(u) < 0.22) & (np.abs(v) < 0.8)),  # T
    "kiki": lambda u, v: (u / 0.9) ** 2 + (v / 0.45) ** 2 <= 1,  # ellipse
    "bouba": lambda u, v: (np.abs(u) <= 0.9 * np.abs(v)) & (np.abs(v) < 0.85),  # hourglass
    "glorp": lambda u, v: (np.abs(v) < 0.5) & (np.abs(u - 0.5 * v) < 0.55),  # parallelogram
    "snib": lambda u, v: (np.maximum(np.abs(u), np.abs(v)) < 0.8) & ~((np.abs(u) < 0.35) & (v > -0.35)),  # U
}
SEEN_SHAPES = list(SHAPES)[:12]
NOVEL_SHAPES = list(SHAPES)[12:]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30),
    "orange": (250, 140, 20), "purple": (140, 40, 190), "pink": (250, 130, 190),
    "cyan": (40, 210, 230), "brown": (130, 80, 30), "white": (245, 245, 245), "black": (15, 15, 15),
}

# radius range in pixels for each size word
SIZES: dict[str, tuple[float, float]] = {"small": (6.0, 8.0), "medium": (10.0, 13.0), "large": (16.0, 20.0)}

# 3x3 grid of positions, as (x, y) fractions of the image
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (1 / 6, 1 / 6), "top": (0.5, 1 / 6), "top right": (5 / 6, 1 / 6),
    "left": (1 / 6, 0.5), "center": (0.5, 0.5), "right": (5 / 6, 0.5),
    "bottom left": (1 / 6, 5 / 6), "bottom": (0.5, 5 / 6), "bottom right": (5 / 6, 5 / 6),
}

# ---------------------------------------------------------------------------------------------
# Textures: the share of the object colour at each pixel (1 = colour, 0 = the darker shade), as a
# function of pixel offsets (x, y) from the object's centre.
# ---------------------------------------------------------------------------------------------
Texture = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]

TEXTURES: dict[str, Texture] = {
    "solid": lambda x, y, rng: np.ones_like(x),
    "striped": lambda x, y, rng: (np.floor(y / 3) % 2 == 0).astype(np.float32),
    "dotted": lambda x, y, rng: 1.0 - (((x % 6) - 3) ** 2 + ((y % 6) - 3) ** 2 < 3.5),
    "checkered": lambda x, y, rng: ((np.floor(x / 4) + np.floor(y / 4)) % 2 == 0).astype(np.float32),
    "gradient": lambda x, y, rng: np.clip(0.55 + x / 22.0, 0.1, 1.0),
    "wavy": lambda x, y, rng: (np.sin(y * 1.1 + 2.5 * np.sin(x * 0.45)) > 0).astype(np.float32),
    "diagonal": lambda x, y, rng: (np.floor((x + y) / 3) % 2 == 0).astype(np.float32),
    "grid": lambda x, y, rng: ~((x % 6 < 1) | (y % 6 < 1)) * 1.0,
    "zigzag": lambda x, y, rng: (np.floor((y + 3 * np.abs((x / 3) % 2 - 1)) / 3) % 2 == 0).astype(np.float32),
    "speckled": lambda x, y, rng: (rng.random(x.shape) < 0.65).astype(np.float32),
}

# Styles: flat, shaded and noisy appear in pretraining; sketch and inverted are held out.
STYLES = ("flat", "shaded", "noisy", "sketch", "inverted")


@dataclass(frozen=True)
class Obj:
    """One object: what it is and where. ``center`` is (x, y) in image fractions."""

    shape: str
    color: str
    radius: float
    center: tuple[float, float]
    texture: str = "solid"
    angle_deg: float = 0.0


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    style: str = "flat"
    background: tuple[int, int, int] = (128, 128, 128)
    extras: dict = field(default_factory=dict, compare=False)


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5


def object_mask(obj: Obj) -> np.ndarray:
    """Boolean (H, W) mask of one object: pixel grid mapped into the object's own frame."""
    cx, cy = obj.center[0] * IMAGE_SIZE, obj.center[1] * IMAGE_SIZE
    a = np.deg2rad(obj.angle_deg)
    dx, dy = (_XX - cx) / obj.radius, (cy - _YY) / obj.radius  # v points up
    u = np.cos(a) * dx + np.sin(a) * dy
    v = -np.sin(a) * dx + np.cos(a) * dy
    return SHAPES[obj.shape](u, v)


def _fill(obj: Obj, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) colour field of the object's texture: colour mixed with a darker shade."""
    colour = np.clip(np.array(COLORS[obj.color], np.float32) + rng.normal(0, 8, 3), 0, 255)
    shade = colour * 0.35 if colour.mean() > 60 else np.full(3, 120.0, np.float32)
    cx, cy = obj.center[0] * IMAGE_SIZE, obj.center[1] * IMAGE_SIZE
    share = TEXTURES[obj.texture](_XX - cx, _YY - cy, rng)[..., None]
    return share * colour + (1 - share) * shade


def _erode(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Draw a scene as a (64, 64, 3) uint8 image. ``rng`` drives the pixel noise only."""
    if scene.style not in STYLES:
        raise ValueError(f"unknown style {scene.style!r}; allowed: {', '.join(STYLES)}")
    bg = np.array(scene.background, np.float32)
    if scene.style == "sketch":  # pencil outlines on paper: no colour, no texture
        img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 240.0, np.float32) + rng.normal(0, 4, (IMAGE_SIZE, IMAGE_SIZE, 1))
        for obj in scene.objects:
            mask = object_mask(obj)
            edge = mask & ~_erode(_erode(mask))
            img[edge] = 45.0
        return np.clip(img, 0, 255).astype(np.uint8)

    img = np.broadcast_to(bg, (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
    img += rng.normal(0, 3, (IMAGE_SIZE, IMAGE_SIZE, 1))
    for obj in scene.objects:
        mask = object_mask(obj)
        fill = _fill(obj, rng)
        if scene.style == "shaded":
            # drop shadow down-right, and light from the top left across the object
            shadow = np.roll(mask, (2, 2), axis=(0, 1)) & ~mask
            img[shadow] *= 0.55
            cx, cy = obj.center[0] * IMAGE_SIZE, obj.center[1] * IMAGE_SIZE
            light = 1.15 - 0.45 * np.clip(((_XX - cx) + (_YY - cy)) / (2 * obj.radius) + 0.5, 0, 1)
            fill = fill * light[..., None]
        img[mask] = fill[mask]
    if scene.style == "noisy":
        img += rng.normal(0, 28, img.shape)
    img = np.clip(img, 0, 255)
    if scene.style == "inverted":
        img = 255 - img
    return img.astype(np.uint8)
