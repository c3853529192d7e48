"""Batched image encoding with an on-disk feature cache, so frozen-encoder methods train in seconds.

A cache entry is keyed by a hash of everything that determines the features: the current weights,
the model name, the dataset's content (images, labels, class names, split) and the transform. So a
fine-tuned model, a different split or a new transform can never read stale features. Writes go to a
temporary file first and are renamed into place, so a killed run leaves no half-written entry.

Images stream through a :class:`~torch.utils.data.DataLoader` (decoded only when a batch needs them);
what this process keeps in memory is bounded by bytes (:func:`memory_cache`).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from cachetools import LRUCache
from open_clip.transform import AugmentationCfg
from torchvision.transforms import v2 as transforms

from fslib.data import ImageDataset
from fslib.models import Clip
from fslib.progress import tqdm
from fslib.training import autocast, precision


def _tensor_bytes(value: torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    return sum(t.element_size() * t.nelement() for t in (value if isinstance(value, tuple) else (value,)))


class TensorCache(LRUCache):
    """A least-recently-used cache of tensors (or tuples of tensors) bounded by their bytes; a value larger than
    the whole budget is simply not kept (the caller recomputes it when asked again)."""

    def __init__(self, budget_mb: float):
        super().__init__(maxsize=int(budget_mb * 2**20), getsizeof=_tensor_bytes)

    def __setitem__(self, key: str, value: torch.Tensor | tuple[torch.Tensor, ...]) -> None:
        if self.getsizeof(value) <= self.maxsize:
            super().__setitem__(key, value)


def memory_cache(budget_mb: float | None = None) -> TensorCache:
    """A :class:`TensorCache` of ``budget_mb`` (default ``$FSLIB_MEMORY_CACHE_MB``, else 1024): this process's
    features, pixels and (SMAT) trunk tokens, so a loop over subsets never re-reads the disk, while a long
    real-data run cannot grow without bound."""
    return TensorCache(float(os.environ.get("FSLIB_MEMORY_CACHE_MB", 1024)) if budget_mb is None else budget_mb)


_MEMORY = memory_cache()


def _in_memory(key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``_MEMORY[key]``, or ``compute()`` kept there (a tensor over the whole budget is returned, not kept)."""
    if key in _MEMORY:
        return _MEMORY[key]
    value = compute()
    _MEMORY[key] = value
    return value


def cache_dir() -> Path:
    """``$FSLIB_CACHE`` if set, else ``~/.cache/fslib/features``."""
    return Path(os.environ.get("FSLIB_CACHE", Path.home() / ".cache" / "fslib")) / "features"


# Bumped whenever the way fslib runs a tower changes the features it computes (even in the last bf16 bit),
# so a cache written before misses. 2: attention inputs relaid sequence-first (models.relayout_attention_inputs).
ENCODER_REVISION = 2


def feature_key(clip: Clip, dataset: ImageDataset) -> str:
    parts = [clip.weights_fingerprint(), clip.name, dataset.fingerprint(), repr(clip.preprocess), ENCODER_REVISION]
    if precision(clip.device) != "fp32":  # reduced-precision features are other features
        parts.append(precision(clip.device))
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()


class TransformedImages(torch.utils.data.Dataset):
    """``dataset``'s images through ``transform``, decoded one at a time on access (in a worker when
    the :class:`~torch.utils.data.DataLoader` has workers): only the images a batch needs are read."""

    def __init__(self, dataset: ImageDataset, transform: Callable):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.dataset.image(index))


def loader_workers(device: torch.device | str) -> int:
    """Decoding workers: ``$FSLIB_WORKERS`` if set; else none on a CPU (the encoder needs the cores, and
    the embedded world's images decode in 0.2 ms against 5 ms to encode) and up to 8 beside a GPU."""
    if "FSLIB_WORKERS" in os.environ:
        return int(os.environ["FSLIB_WORKERS"])
    return min(8, max(1, (os.cpu_count() or 2) - 1)) if torch.device(device).type == "cuda" else 0


def pixel_batches(clip: Clip, dataset: ImageDataset, batch_size: int = 256,
                  workers: int | None = None) -> torch.utils.data.DataLoader:
    """Batches of ``dataset``'s images through the model's inference transform, in order, streamed by a
    DataLoader (workers from :func:`loader_workers`, pinned memory for a GPU)."""
    workers = loader_workers(clip.device) if workers is None else workers
    return torch.utils.data.DataLoader(TransformedImages(dataset, clip.preprocess), batch_size=batch_size,
                                       num_workers=workers, pin_memory=clip.device.type == "cuda")


def preprocess_images(clip: Clip, dataset: ImageDataset) -> torch.Tensor:
    """The images of ``dataset`` through the model's inference transform: (N, 3, H, W) on the CPU.

    For methods that train the image tower on a few-shot support set or an episode. Only the dataset's
    own images are decoded (a subset never materialises its parent); the tensor is kept in the bounded
    memory cache.
    """
    def decode() -> torch.Tensor:
        batches = list(pixel_batches(clip, dataset))
        return torch.cat(batches) if batches else torch.empty(0)

    return _in_memory(f"pixels:{dataset.fingerprint()}:{clip.preprocess!r}", decode)


@torch.no_grad()
def encode_pixels(clip: Clip, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """L2-normalised image features of preprocessed pixel batches, in eval mode (restored after), under
    the kit's precision setting (:func:`fslib.training.precision`)."""
    was_training = clip.model.training
    clip.model.eval()
    out = []
    for batch in batches:
        with autocast(clip.device):
            out.append(F.normalize(clip.model.encode_image(batch.to(clip.device, non_blocking=True)).float(), dim=-1).cpu())
    clip.model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def _encode(clip: Clip, dataset: ImageDataset, batch_size: int, progress: bool) -> torch.Tensor:
    batches = tqdm(pixel_batches(clip, dataset, batch_size), desc=f"encoding {dataset.name}/{dataset.split}",
                   disable=not progress, leave=False)
    return encode_pixels(clip, batches)


def encode_images(clip: Clip, dataset: ImageDataset, batch_size: int = 256, cache: bool = True,
                  progress: bool = True) -> torch.Tensor:
    """L2-normalised image features (N, D) on the CPU, read from or written to the cache.

    A subset (a few-shot sample, an episode, a base/new half) is served from its full dataset's
    features, so every subset of a dataset costs one encoding in all (streamed through
    :func:`pixel_batches`; only the features are kept).
    """
    if dataset.parent is not None:
        return encode_images(clip, dataset.parent, batch_size, cache, progress)[torch.as_tensor(dataset.parent_indices)]
    if not cache:
        return _encode(clip, dataset, batch_size, progress)
    key = feature_key(clip, dataset)

    def from_disk_or_encode() -> torch.Tensor:
        path = cache_dir() / f"{key}.pt"
        if path.exists():
            return torch.load(path)
        features = _encode(clip, dataset, batch_size, progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
            torch.save(features, tmp.name)
        os.replace(tmp.name, path)  # atomic: a reader never sees half a file
        return features

    return _in_memory(key, from_disk_or_encode)


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
    def encode_crops() -> torch.Tensor:
        pixels = preprocess_images(clip, dataset)
        crops = torch.cat([augment_pixels(pixels, seed * 1_000 + view) for view in range(views)])
        return encode_pixels(clip, crops.split(batch_size))

    return _in_memory(f"{feature_key(clip, dataset)}:views{views}:seed{seed}", encode_crops)
