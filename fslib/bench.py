"""Where encoding time and memory go: a benchmark of the data pipeline, the encoder and both together.

    python -m fslib.bench                                   # the embedded model on an embedded dataset
    python -m fslib.bench --model ViT-B-32 --pretrained none --make-folder /tmp/jpegs --images 1000
    python -m fslib.bench --model ViT-B-16 --pretrained openai --folder ~/data/food101 --device cuda --workers 8

It reports images per second for (1) the data pipeline alone (decode + the model's transform, through the
same :func:`fslib.features.pixel_batches` DataLoader the kit encodes with), split into decode and transform
time on a sample; (2) the encoder alone on random tensors of the transform's output shape; (3) end to end
(:func:`fslib.features.encode_images` without the cache); the ratio end-to-end / encoder-alone (near 1:
the encoder sets the pace; well below 1: give the DataLoader workers); and the process's peak resident
memory. ``--finetune`` adds a 16-shot CLIP-CITE fine-tune on the folder's training split, whose peak memory
should not grow with the folder's size. A benchmark, not a test: numbers depend on the machine.

:func:`expected_cost` turns a notebook's counted work (:class:`Stage`: fits, images trained on, images scored)
into an estimate of its time on the device at hand, from the throughput :func:`throughput` measures there in a
few seconds: what a ``scale="paper-real"`` run prints before it starts.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from fslib.data import ImageDataset, load_dataset
from fslib.features import encode_images, encode_pixels, loader_workers, pixel_batches
from fslib.models import Clip, load_clip
from fslib.training import autocast


def make_jpeg_folder(root: str | Path, images: int, classes: int = 10, size: int = 256, seed: int = 0) -> Path:
    """A synthetic image folder in the CoOp layout (``<root>/<class>/*.jpg``, cut 50/20/30 by the loader):
    smooth random colour fields at ``size`` px, JPEG quality 90 (decode cost close to a photo's)."""
    root, rng = Path(root), np.random.default_rng(seed)
    for i in range(images):
        folder = root / f"class_{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        noise = rng.integers(-12, 13, size=(size, size, 3))
        Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)).save(
            folder / f"{i:06d}.jpg", quality=90)
    return root


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def benchmark(model: str, pretrained: str, dataset: ImageDataset, device: str = "cpu", batch_size: int = 64,
              workers: int | None = None, sample: int = 64) -> dict:
    """The numbers described in the module docstring, for ``dataset`` under ``model``."""
    clip = load_clip(model, pretrained, device)
    workers = loader_workers(clip.device) if workers is None else workers
    n = len(dataset)
    picked = range(min(sample, n))
    started = time.perf_counter()
    decoded = [dataset.image(i) for i in picked]
    decode_s = (time.perf_counter() - started) / len(decoded)
    started = time.perf_counter()
    shape = tuple(torch.stack([clip.preprocess(image) for image in decoded]).shape[1:])
    transform_s = (time.perf_counter() - started) / len(decoded)

    started = time.perf_counter()
    for _ in pixel_batches(clip, dataset, batch_size, workers):
        pass
    pipeline = _rate(n, time.perf_counter() - started)

    random_batches = [torch.randn(batch_size, *shape) for _ in range(max(1, min(n, 512) // batch_size))]
    encode_pixels(clip, random_batches[:1])  # warm-up: first-call allocations and kernel choices
    started = time.perf_counter()
    encode_pixels(clip, random_batches)
    encoder = _rate(len(random_batches) * batch_size, time.perf_counter() - started)

    started = time.perf_counter()
    encode_images(clip, dataset, batch_size=batch_size, cache=False, progress=False)
    end_to_end = _rate(n, time.perf_counter() - started)
    return {"model": f"{model}/{pretrained}", "device": device, "dataset": f"{dataset.name}/{dataset.split}", "images": n,
            "input": "x".join(map(str, shape)), "threads": torch.get_num_threads(), "batch_size": batch_size,
            "workers": workers,
            "decode_ms": round(1e3 * decode_s, 2), "transform_ms": round(1e3 * transform_s, 2),
            "pipeline_img_s": round(pipeline, 1), "encoder_img_s": round(encoder, 1), "end_to_end_img_s": round(end_to_end, 1),
            "end_to_end_over_encoder": round(end_to_end / encoder, 3), "peak_rss_mb": round(peak_rss_mb())}


def finetune_memory(model: str, pretrained: str, train: ImageDataset, device: str = "cpu", shots: int = 16,
                    epochs: int = 1, grad_checkpointing: bool = False) -> dict:
    """Peak memory and time of a ``shots``-shot CLIP-CITE fine-tune on ``train`` (both towers, AdamW: the
    weights, their gradients and two moments, next to the frozen pretrained model, set a floor of about
    five model sizes)."""
    from fslib.fewshot import few_shot
    from fslib.methods.clip_cite import FullFineTune

    clip = load_clip(model, pretrained, device)
    support = few_shot(train, shots, seed=1)
    method = FullFineTune(clip, epochs=epochs, lr=1e-5, grad_checkpointing=grad_checkpointing).fit(support)
    return {"finetune_images": len(support), "finetune_epochs": epochs, "grad_checkpointing": grad_checkpointing,
            "finetune_s": round(method.fit_seconds, 1),
            "peak_rss_after_finetune_mb": round(peak_rss_mb())}


@dataclass(frozen=True)
class Stage:
    """One part of a notebook's run, counted before it runs: ``fits`` models trained, ``trained`` image passes
    through a trained tower (forward and backward, every epoch of every fit) and ``encoded`` image passes to
    score (forward only)."""

    name: str
    fits: int
    trained: int
    encoded: int


def _image_size(clip: Clip) -> tuple[int, int]:
    size = clip.model.visual.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def throughput(clip: Clip, batch_size: int = 32, repeats: int = 3, train: bool = True) -> dict[str, float]:
    """Images per second on ``clip``'s device, measured on random pixels of its input size: ``encode``, the image
    tower forward without gradients, and (with ``train``) ``train``, a step of a full fine-tune (both towers
    forward and backward on a batch of image-prompt pairs, under the kit's autocast; no weight changes)."""
    device = clip.device
    pixels = torch.randn(batch_size, 3, *_image_size(clip), device=device)
    tokens = clip.tokenizer(["a photo of a thing."] * batch_size).to(device)
    model, was_training = clip.model, clip.model.training

    def train_step() -> None:
        with autocast(device):
            image, text, scale = model(pixels, tokens)[:3]
            (scale * image @ text.T).logsumexp(-1).mean().backward()
        model.zero_grad(set_to_none=True)

    def encode_step() -> None:
        with torch.no_grad(), autocast(device):
            model.encode_image(pixels)

    def rate(step) -> float:
        step()  # warm-up: first-call allocations and kernel choices
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return _rate(repeats * batch_size, time.perf_counter() - started)

    rates = {}
    try:
        if train:
            model.train()
            rates["train"] = rate(train_step)
        model.eval()
        rates["encode"] = rate(encode_step)
    finally:
        model.train(was_training)
    return rates


def dataset_sizes(names: Sequence[str], test_per_class: int | None = None) -> pd.DataFrame:
    """Per dataset: ``classes``, ``base`` classes (CoOp's first half), ``train`` and ``val`` images and the
    ``test`` images a protocol scores (its fixed sample of ``test_per_class`` per class; 0 or None: all): what a
    run's work is counted from (the listings only; no image is decoded)."""
    from fslib.fewshot import base_new_classes
    from fslib.protocols import scored_split

    rows = {}
    for name in names:
        train = load_dataset(name, "train")
        rows[name] = {"classes": train.num_classes, "base": len(base_new_classes(train.num_classes)[0]),
                      "train": len(train), "val": len(load_dataset(name, "val")),
                      "test": len(scored_split(name, "test", test_per_class))}
    return pd.DataFrame.from_dict(rows, orient="index")


def expected_cost(clip: Clip, stages: Sequence[Stage], rates: dict[str, float] | None = None) -> pd.DataFrame:
    """Per stage and in total: fits, images trained on and scored, and the estimated time on ``clip``'s device
    at ``rates`` (default: :func:`throughput`, measured now; training only if a stage trains). A floor, not a
    promise: data loading, augmentation, text encoding and evaluation overheads come on top."""
    measured, trains = rates is None, any(s.trained for s in stages)
    rates = throughput(clip, train=trains) if measured else rates
    hours = lambda s: ((s.trained / rates["train"] if s.trained else 0.0) + s.encoded / rates["encode"]) / 3600
    rows = [{"stage": s.name, "fits": s.fits, "images trained on": s.trained, "images scored": s.encoded,
             "estimated hours": hours(s)} for s in stages]
    table = pd.DataFrame(rows).set_index("stage")
    table.loc["total"] = table.sum()
    speeds = ([f"{rates['train']:.0f} images/s training (both towers)"] if trains else []) + [
        f"{rates['encode']:.0f} images/s encoding"]
    print(f"{clip.name}/{clip.pretrained} on {clip.device}: {', '.join(speeds)}, "
          + ("measured just now" if measured else "as given"))
    return table.astype({"fits": int, "images trained on": int, "images scored": int}).round({"estimated hours": 2})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fslib-tiny-vit")
    parser.add_argument("--pretrained", default="embedded")
    parser.add_argument("--folder", help="an image folder in the CoOp layout, or an embedded / torchvision dataset name")
    parser.add_argument("--make-folder", type=Path, help="write a synthetic JPEG folder here first (--images, --size)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--split", default="train")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, help="DataLoader workers (default: fslib.features.loader_workers)")
    parser.add_argument("--finetune", action="store_true", help="also run a 16-shot fine-tune and report its memory")
    parser.add_argument("--grad-checkpointing", action="store_true", help="fine-tune with activation checkpointing")
    args = parser.parse_args()
    if args.make_folder:
        if not args.make_folder.exists():
            make_jpeg_folder(args.make_folder, args.images, size=args.size)
        args.folder = str(args.make_folder)
    dataset = load_dataset(args.folder or "shapes", args.split)
    if args.make_folder:  # the whole folder, not its 50/20/30 cut
        dataset = ImageDataset(dataset.name, "all", dataset.classnames, *_all_images(Path(args.folder)), ["a photo of a {}."])
    result = benchmark(args.model, args.pretrained, dataset, args.device, args.batch_size, args.workers)
    if args.finetune:
        result |= finetune_memory(args.model, args.pretrained, load_dataset(args.folder or "shapes", "train"), args.device,
                                  grad_checkpointing=args.grad_checkpointing)
    print(json.dumps(result, indent=2))


def _all_images(root: Path) -> tuple[np.ndarray, list[str]]:
    files = sorted(root.glob("*/*.jpg"))
    names = sorted({f.parent.name for f in files})
    return np.array([names.index(f.parent.name) for f in files]), [str(f) for f in files]


if __name__ == "__main__":
    main()
