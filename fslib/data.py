"""Datasets: one record type, :class:`ImageDataset`, for the embedded world and real data alike.

Real datasets come from two loaders, both following CoOp's conventions (class-name clean-up and
one hand-written prompt per dataset):

* :func:`load_torchvision` wraps the CoOp datasets that torchvision ships (with its ``download``
  flag), keeping torchvision's official splits where it has them;
* :func:`load_image_folder` reads a folder in the CoOp layout: a ``split_zhou_*.json`` file next
  to the images, or ``<root>/<split>/<class>/*.jpg``, or ``<root>/<class>/*.jpg`` (then split
  50/20/30 per class by sorted file name).

:func:`load_dataset` is the single entry point the notebooks use: an embedded world dataset by name,
a torchvision dataset by name, or an image folder by path.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class LazyImages:
    """Images read on access from an indexable source whose items are ``(image, label)`` or images.

    Wraps a torchvision dataset so that building an :class:`ImageDataset` and taking few-shot
    subsets never decodes an image; indexing with an array gives a narrower view.
    """

    def __init__(self, source: Any, indices: Sequence[int] | np.ndarray):
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (np.ndarray, list)):
            return LazyImages(self.source, self.indices[np.asarray(index, dtype=np.int64)])
        item = self.source[int(self.indices[index])]
        return item[0] if isinstance(item, tuple) else item


@dataclass
class ImageDataset:
    """Labelled images plus what a CLIP needs to classify them zero-shot.

    ``images`` is a ``uint8`` array ``(N, H, W, 3)`` (the embedded world), a list of file paths,
    or any sequence whose items are PIL images (a wrapped torchvision dataset). ``templates`` are
    prompt templates with one ``{}`` for the class name; ``domain`` names the visual domain, used
    by meta-training's in-distribution / out-of-distribution split.
    """

    name: str
    split: str
    classnames: list[str]
    labels: np.ndarray
    images: Any
    templates: list[str]
    domain: str = "default"
    source_id: str = field(default="", repr=False)  # identifies lazily loaded images in the cache key
    # a subset remembers the full dataset and its indices there, so features are encoded once for all subsets
    parent: "ImageDataset | None" = field(default=None, repr=False)
    parent_indices: np.ndarray | None = field(default=None, repr=False)
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.labels) != len(self.images):
            raise ValueError(f"{self.name}: {len(self.labels)} labels but {len(self.images)} images")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classnames)):
            raise ValueError(f"{self.name}: labels must lie in [0, {len(self.classnames)})")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ValueError(f"{self.name}: every template needs one '{{}}' for the class name")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def image(self, index: int) -> Image.Image:
        item = self.images[index]
        if isinstance(item, np.ndarray):
            return Image.fromarray(item)
        if isinstance(item, (str, Path)):
            with Image.open(item) as img:
                return img.convert("RGB")
        return item.convert("RGB")

    def subset(self, indices: Sequence[int] | np.ndarray, split: str | None = None) -> "ImageDataset":
        """The same dataset restricted to ``indices`` (class names and labels unchanged)."""
        indices = np.asarray(indices, dtype=np.int64)
        if isinstance(self.images, (np.ndarray, LazyImages)):
            images = self.images[indices]
        else:
            images = [self.images[i] for i in indices]
        digest = hashlib.sha1(indices.tobytes()).hexdigest()[:12]
        root, rows = self.in_full_dataset()
        return replace(self, split=split or self.split, labels=self.labels[indices], images=images,
                       source_id=f"{self.source_id}|subset:{digest}", parent=root, parent_indices=rows[indices])

    def in_full_dataset(self) -> tuple["ImageDataset", np.ndarray]:
        """The full dataset behind this one (itself, unless a subset: a subset's parent is always a full dataset)
        and this one's rows there."""
        if self.parent is None:
            return self, np.arange(len(self))
        return self.parent, np.asarray(self.parent_indices, dtype=np.int64)

    def fingerprint(self) -> str:
        """A content hash of images, labels and class names: the dataset part of the cache key. Computed once
        per object (hashing a split's pixels takes milliseconds and every episode asks for it); a changed
        dataset is a new object (:meth:`subset`, ``dataclasses.replace``). A subset's is its full dataset's
        plus its indices, so a file list is stat-ed once per dataset, not once per few-shot sample or episode."""
        if self._fingerprint is not None:
            return self._fingerprint
        h = hashlib.sha1()
        h.update(json.dumps([self.name, self.split, self.classnames]).encode())
        h.update(self.labels.tobytes())
        if self.parent is not None:
            h.update(self.parent.fingerprint().encode())
            h.update(np.asarray(self.parent_indices, dtype=np.int64).tobytes())
        elif isinstance(self.images, np.ndarray):
            h.update(np.ascontiguousarray(self.images).tobytes())
        elif all(isinstance(p, (str, Path)) for p in self.images):
            for path in self.images:
                stat = Path(path).stat()
                h.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        else:
            h.update(self.source_id.encode())
        self._fingerprint = h.hexdigest()
        return self._fingerprint


# ---------------------------------------------------------------------------------------------
# Real datasets
# ---------------------------------------------------------------------------------------------
def clean_classname(name: str) -> str:
    """CoOp-style clean-up: drop a leading index ("001.Black_footed_Albatross"), underscores to spaces."""
    head, _, tail = name.partition(".")
    if head.isdigit() and tail:
        name = tail
    return " ".join(name.replace("_", " ").split())


# CoOp's hand-written prompt per dataset (Zhou et al., 2022, Table/“CUSTOM_TEMPLATES”).
COOP_TEMPLATES = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "flowers102": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
}
# CoOp renames EuroSAT's classes into words CLIP knows.
_EUROSAT_NAMES = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River", "SeaLake": "Sea or Lake",
}
# fslib name -> (torchvision class, extra kwargs, {our split: torchvision split} or None when torchvision has no splits)
_TORCHVISION = {
    "oxford_pets": ("OxfordIIITPet", {}, {"train": "trainval", "test": "test"}),
    "flowers102": ("Flowers102", {}, {"train": "train", "val": "val", "test": "test"}),
    "fgvc_aircraft": ("FGVCAircraft", {"annotation_level": "variant"}, {"train": "train", "val": "val", "test": "test"}),
    "dtd": ("DTD", {"partition": 1}, {"train": "train", "val": "val", "test": "test"}),
    "eurosat": ("EuroSAT", {}, None),
    "stanford_cars": ("StanfordCars", {}, {"train": "train", "test": "test"}),
    "food101": ("Food101", {}, {"train": "train", "test": "test"}),
    "sun397": ("SUN397", {}, None),
    "caltech101": ("Caltech101", {"target_type": "category"}, None),
}
TORCHVISION_DATASETS = list(_TORCHVISION)


def _targets(dataset: Any) -> np.ndarray:
    for attr in ("targets", "_labels", "y"):
        if hasattr(dataset, attr):
            return np.asarray(getattr(dataset, attr))
    if hasattr(dataset, "_samples"):
        return np.asarray([label for _, label in dataset._samples])
    return np.asarray([dataset[i][1] for i in range(len(dataset))])


def split_per_class(labels: np.ndarray, split: str, fractions: dict[str, float], seed: int = 1) -> np.ndarray:
    """Indices of ``split`` when each class is cut by ``fractions`` after a seeded shuffle (CoOp's split)."""
    rng = np.random.default_rng(seed)
    names = list(fractions)
    picks = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        bounds = np.round(np.cumsum([0] + [fractions[n] for n in names]) * len(members)).astype(int)
        i = names.index(split)
        picks.append(np.sort(members[bounds[i]:bounds[i + 1]]))
    return np.concatenate(picks)


def load_torchvision(name: str, split: str, root: str | Path, download: bool = False) -> ImageDataset:
    """A CoOp dataset through torchvision. Missing val splits are carved from train (80/20 per class);
    datasets without official splits are cut 50/20/30 per class with seed 1, as CoOp does."""
    import torchvision

    if name not in _TORCHVISION:
        raise ValueError(f"unknown torchvision dataset {name!r}; allowed: {', '.join(TORCHVISION_DATASETS)}")
    cls_name, kwargs, splits = _TORCHVISION[name]
    cls = getattr(torchvision.datasets, cls_name)
    if splits is None:
        source = cls(root=str(root), download=download, **kwargs)
        labels = _targets(source)
        indices = split_per_class(labels, split, {"train": 0.5, "val": 0.2, "test": 0.3})
    elif split in splits:
        source = cls(root=str(root), split=splits[split], download=download, **kwargs)
        labels = _targets(source)
        indices = np.arange(len(labels)) if "val" in splits or split == "test" else split_per_class(labels, "train", {"train": 0.8, "val": 0.2})
    else:
        source = cls(root=str(root), split=splits["train"], download=download, **kwargs)
        labels = _targets(source)
        indices = split_per_class(labels, "val", {"train": 0.8, "val": 0.2})
    raw = getattr(source, "classes", None) or getattr(source, "categories")
    classnames = [_EUROSAT_NAMES.get(c, c) if name == "eurosat" else clean_classname(c) for c in raw]
    return ImageDataset(name, split, classnames, labels[indices], LazyImages(source, indices), [COOP_TEMPLATES[name]],
                        domain=name, source_id=f"torchvision:{cls_name}:{Path(root).resolve()}:{split}:{len(indices)}")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_image_folder(root: str | Path, split: str, template: str = "a photo of a {}.") -> ImageDataset:
    """A dataset stored as image files in the CoOp layout.

    Looks, in order, for ``split_*.json`` (CoOp's ``{"train": [[path, label, classname], ...], ...}``,
    paths relative to ``root`` or ``root/images``), ``root/<split>/<class>/``, or ``root/<class>/``
    (cut 50/20/30 per class in sorted file order).
    """
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {str(root)!r}")
    split_files = sorted(root.glob("split_*.json"))
    if split_files:
        entries = json.loads(split_files[0].read_text())[split]
        base = root / "images" if (root / "images").is_dir() else root
        names = {int(label): clean_classname(cname) for _, label, cname in entries}
        classnames = [names[i] for i in range(max(names) + 1)]
        paths = [str(base / p) for p, _, _ in entries]
        labels = [int(label) for _, label, _ in entries]
    else:
        folder = root / split if (root / split).is_dir() else root
        class_dirs = sorted(d for d in folder.iterdir() if d.is_dir())
        if not class_dirs:
            raise ValueError(f"{str(folder)!r} has no class sub-folders")
        classnames = [clean_classname(d.name) for d in class_dirs]
        paths, labels = [], []
        for label, d in enumerate(class_dirs):
            files = _image_files(d)
            if folder == root:  # no split folders: cut each class 50/20/30 in file-name order
                n = len(files)
                cut = {"train": (0, round(0.5 * n)), "val": (round(0.5 * n), round(0.7 * n)), "test": (round(0.7 * n), n)}[split]
                files = files[cut[0]:cut[1]]
            paths += [str(f) for f in files]
            labels += [label] * len(files)
    return ImageDataset(root.name, split, classnames, np.array(labels), paths, [template], domain=root.name)


NamedLoader = Callable[[str, str], ImageDataset]
_NAMED: dict[str, NamedLoader] = {}  # filled by register_named_datasets (the embedded suite registers itself)


def register_named_datasets(names: Sequence[str], loader: NamedLoader) -> None:
    """Make ``load_dataset(name, split)`` call ``loader(name, split)`` for each of ``names`` (how
    :mod:`fslib.world.suite` adds the embedded datasets without this module importing it)."""
    _NAMED.update({name: loader for name in names})


def named_datasets() -> list[str]:
    """The names :func:`load_dataset` knows without a path: the embedded datasets and the dials' levels."""
    return list(_NAMED)


def load_dataset(name: str, split: str = "test", root: str | Path | None = None, download: bool = False) -> ImageDataset:
    """The one loader notebooks call: an embedded dataset by name, a torchvision dataset by name
    (under ``root``, default ``$FSLIB_DATA`` or ``~/data``), or an image folder by path."""
    if name in _NAMED:
        return _NAMED[name](name, split)
    if name in _TORCHVISION:
        import os
        root = root or os.environ.get("FSLIB_DATA", Path.home() / "data")
        return load_torchvision(name, split, root, download)
    if Path(name).is_dir():
        return load_image_folder(name, split)
    raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(list(_NAMED) + TORCHVISION_DATASETS)}, "
                     "or the path of an image folder")
