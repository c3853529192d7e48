"""Batched image encoding with an on-disk feature cache, so frozen-encoder methods train in seconds.

A cache entry is keyed by a hash of everything that determines the features: the current weights,
the model name, the dataset's content (images, labels, class names, split) and the transform. So a
fine-tuned model, a different split or a new transform can never read stale features. Writes go to a
temporary file first and are renamed into place, so a killed run leaves no half-written entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from open_clip.transform import AugmentationCfg
from torchvision.transforms import v2 as transforms
from tqdm.auto import tqdm

from fslib.data import ImageDataset
from fslib.models import Clip


_MEMORY: dict[str, torch.Tensor] = {}  # this process's hits, so a loop over subsets never re-reads the disk


def cache_dir() -> Path:
    """``$FSLIB_CACHE`` if set, else ``~/.cache/fslib/features``."""
    return Path(os.environ.get("FSLIB_CACHE", Path.home() / ".cache" / "fslib")) / "features"


def feature_key(clip: Clip, dataset: ImageDataset) -> str:
    parts = [clip.weights_fingerprint(), clip.name, dataset.fingerprint(), repr(clip.preprocess)]
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()


def preprocess_images(clip: Clip, dataset: ImageDataset) -> torch.Tensor:
    """All images of ``dataset`` through the model's inference transform: (N, 3, H, W) on the CPU.

    For methods that train the image tower. Like features, a subset is cut from its full dataset's
    tensor, which is built once per process.
    """
    if dataset.parent is not None:
        return preprocess_images(clip, dataset.parent)[torch.as_tensor(dataset.parent_indices)]
    key = f"pixels:{dataset.fingerprint()}:{clip.preprocess!r}"
    if key not in _MEMORY:
        _MEMORY[key] = torch.stack([clip.preprocess(dataset.image(i)) for i in range(len(dataset))])
    return _MEMORY[key]


@torch.no_grad()
def _encode_batches(clip: Clip, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """L2-normalised image features of preprocessed pixel batches, in eval mode (restored after)."""
    was_training = clip.model.training
    clip.model.eval()
    out = [F.normalize(clip.model.encode_image(batch.to(clip.device)).float(), dim=-1).cpu() for batch in batches]
    clip.model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def _encode(clip: Clip, dataset: ImageDataset, batch_size: int, progress: bool) -> torch.Tensor:
    starts = tqdm(range(0, len(dataset), batch_size), desc=f"encoding {dataset.name}/{dataset.split}", disable=not progress, leave=False)
    return _encode_batches(clip, (torch.stack([clip.preprocess(dataset.image(i)) for i in range(start, min(start + batch_size, len(dataset)))])
                                  for start in starts))


def encode_images(clip: Clip, dataset: ImageDataset, batch_size: int = 256, cache: bool = True,
                  progress: bool = True) -> torch.Tensor:
    """L2-normalised image features (N, D) on the CPU, read from or written to the cache.

    A subset (a few-shot sample, an episode, a base/new half) is served from its full dataset's
    features, so every subset of a dataset costs one encoding in all.
    """
    if dataset.parent is not None:
        return encode_images(clip, dataset.parent, batch_size, cache, progress)[torch.as_tensor(dataset.parent_indices)]
    if not cache:
        return _encode(clip, dataset, batch_size, progress)
    key = feature_key(clip, dataset)
    if key in _MEMORY:
        return _MEMORY[key]
    path = cache_dir() / f"{key}.pt"
    if path.exists():
        _MEMORY[key] = torch.load(path)
        return _MEMORY[key]
    features = _encode(clip, dataset, batch_size, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        torch.save(features, tmp.name)
    os.replace(tmp.name, path)
    _MEMORY[key] = features
    return features


# open_clip's training-time crop: 90-100% of the area. Label-preserving in the embedded world, where a
# smaller crop can cut away the counted objects or the named one of two objects
CROP_SCALE = AugmentationCfg().scale


def augment_pixels(pixels: torch.Tensor, seed: int, flip: bool = False, min_scale: float = CROP_SCALE[0]) -> torch.Tensor:
    """Random resized crop (area ``min_scale``-1, back to the input size), plus a horizontal flip with
    ``flip``, drawn per image from ``seed``, on preprocessed (N, 3, H, W) tensors."""
    steps = [transforms.RandomResizedCrop(pixels.shape[-1], scale=(min_scale, 1.0), antialias=True)]
    augment = transforms.Compose(steps + [transforms.RandomHorizontalFlip()] if flip else steps)
    with torch.random.fork_rng(devices=[]):  # the seed decides the crops; the global stream is left alone
        torch.manual_seed(seed)
        return torch.stack([augment(image) for image in pixels])


def augmented_features(clip: Clip, dataset: ImageDataset, views: int, seed: int, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised features of ``views`` random resized crops of every image (:func:`augment_pixels`),
    view-major: (views * N, D), row ``v * N + i`` is view ``v`` of image ``i``. What a frozen-encoder
    method trains on when its paper augments the training images; kept in this process's memory cache
    (under the same key as :func:`encode_images` plus views and seed), not on disk."""
    key = f"{feature_key(clip, dataset)}:views{views}:seed{seed}"
    if key not in _MEMORY:
        pixels = preprocess_images(clip, dataset)
        crops = torch.cat([augment_pixels(pixels, seed * 1_000 + view) for view in range(views)])
        _MEMORY[key] = _encode_batches(clip, crops.split(batch_size))
    return _MEMORY[key]
