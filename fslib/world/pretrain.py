"""Pretrain the kit's tiny CLIP on the embedded world and write its checkpoint and model card.

    python -m fslib.world.pretrain                 # the shipped recipe (about 75 min on 2 CPU cores)
    python -m fslib.world.pretrain --card-only     # re-measure the card for the shipped checkpoint

The recipe is CLIP's: the symmetric image-text contrastive loss (Radford et al., 2021, Eq. in
Fig. 3) with a learned temperature, AdamW, linear warm-up then cosine decay. Every batch is freshly
drawn from :func:`fslib.world.corpus.sample_pretraining_pair`, so the model never sees an image
twice. The checkpoint is an fp16 ``state_dict`` that open_clip's own ``load_checkpoint`` reads,
through the same :func:`fslib.models.load_clip` call users make for real checkpoints.

Data-parallel on several GPUs (or CPU processes): ``torchrun --nproc_per_node 4 -m fslib.world.pretrain
--device cuda``. Every rank draws the same batch (one random stream, so N ranks train on the batches one
process would), encodes its slice, and the loss is taken over the gathered batch (:mod:`fslib.distributed`);
rank 0 shows progress and writes the checkpoint and card.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from fslib import distributed
from fslib.models import EMBEDDED_CHECKPOINT, EMBEDDED_MODEL, register_model_configs
from fslib.progress import tqdm
from fslib.training import autocast, grad_scaler, precision_scope
from fslib.world.corpus import sample_pretraining_pair
from fslib.world.render import render

ASSETS = Path(__file__).parent / "assets"
RECIPE = {"seed": 0, "steps": 6400, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.1, "warmup": 100, "bf16": True}


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching (image, text) pairs, features L2-normalised."""
    logits = logit_scale * image_features @ text_features.T
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def sample_batch(rng: np.random.Generator, size: int, preprocess_mean: torch.Tensor, preprocess_std: torch.Tensor):
    pairs = [sample_pretraining_pair(rng) for _ in range(size)]
    images = np.stack([render(scene, rng) for scene, _ in pairs])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    return (pixels - preprocess_mean) / preprocess_std, [caption for _, caption in pairs]


def save_fp16(model: torch.nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half().cpu() for k, v in model.state_dict().items()}, path)


def pretrain(seed: int, steps: int, batch_size: int, lr: float, weight_decay: float, warmup: int, bf16: bool,
             out: Path, snapshot_every: int = 0, device: str = "cpu") -> dict:
    """Train from scratch on ``device`` and save to ``out``; ``snapshot_every`` > 0 also saves
    ``out.stepN.pt`` along the way, so a long run can be checked (``--card-only --out``) before it ends.

    ``bf16`` runs the forward pass under bf16 autocast (:func:`fslib.training.set_precision`): about 1.7x
    faster on CPUs with native bf16 (AVX512-BF16/AMX), much slower on CPUs without it (pass ``--no-bf16``
    there); with ``--no-bf16`` the kit's precision setting (``$FSLIB_PRECISION``) is in force."""
    register_model_configs()
    with precision_scope("bf16") if bf16 else contextlib.nullcontext():
        return _pretrain(seed, steps, batch_size, lr, weight_decay, warmup, out, snapshot_every, device)


def _pretrain(seed: int, steps: int, batch_size: int, lr: float, weight_decay: float, warmup: int, out: Path,
              snapshot_every: int, device: str) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = open_clip.create_model(EMBEDDED_MODEL).to(device)
    tokenizer = open_clip.get_tokenizer(EMBEDDED_MODEL)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    # CLIP's practice: no weight decay on gains, biases, embeddings' scale or the temperature
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))))
    start, losses = time.time(), []
    model.train()
    scaler = grad_scaler(device)
    mine = distributed.local_slice(batch_size)  # the whole batch in one process
    for step in (bar := tqdm(range(steps), desc="pretraining", disable=not distributed.is_main())):
        pixels, captions = sample_batch(rng, batch_size, mean, std)
        with autocast(device):
            image_features = model.encode_image(pixels[mine].to(device), normalize=True)
            text_features = model.encode_text(tokenizer(captions[mine]).to(device), normalize=True)
        loss = clip_loss(distributed.gather(image_features.float(), batch_size),
                         distributed.gather(text_features.float(), batch_size), model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        distributed.average_gradients(model.parameters())
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if snapshot_every and (step + 1) % snapshot_every == 0 and step + 1 < steps and distributed.is_main():
            save_fp16(model, out.with_suffix(f".step{step + 1}.pt"))
    wall = time.time() - start
    if distributed.is_main():
        save_fp16(model, out)
    return {"wall_time_s": round(wall, 1), "final_loss": round(float(np.mean(losses[-50:])), 4),
            "loss_curve": [round(float(np.mean(losses[i:i + 50])), 4) for i in range(0, steps, 50)]}


def write_model_card(training: dict, recipe: dict, checkpoint: Path, card_path: Path) -> dict:
    """Measure ``checkpoint``'s zero-shot accuracy on every embedded test split; write the card (md + json)."""
    from fslib.models import load_clip
    from fslib.studies.zero_shot import zero_shot_table  # the evaluation stack, only when a card is written
    from fslib.world.suite import WORLD_DATASETS

    clip = load_clip(EMBEDDED_MODEL, str(checkpoint), "cpu")
    table = zero_shot_table(clip, list(WORLD_DATASETS))
    results = {row.dataset: {"domain": row.domain, "classes": row.classes, "chance": round(row.chance, 1),
                             "zero_shot": round(row.zero_shot, 1)} for row in table.itertuples()}
    card = {"model": EMBEDDED_MODEL, "checkpoint": checkpoint.name, "recipe": recipe,
            "parameters_M": round(sum(p.numel() for p in clip.model.parameters()) / 1e6, 2),
            "training": training, "zero_shot_test_accuracy": results,
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"}
    card_path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    rows = "\n".join(f"| {n} | {r['domain']} | {r['classes']} | {r['chance']} | {r['zero_shot']} |" for n, r in results.items())
    card_path.write_text(f"""# Model card: {EMBEDDED_MODEL}

A tiny CLIP (open_clip architecture `{EMBEDDED_MODEL}`, {card['parameters_M']} M parameters: ViT image tower on
64x64 images, 8x8 patches; 3-layer text transformer) pretrained from scratch by
`python -m fslib.world.pretrain` on freshly drawn image-caption pairs of the embedded world.
Everything below was measured by that script; do not edit by hand.

## Recipe
`{json.dumps(recipe)}`

Symmetric contrastive loss, learned temperature (clamped at 100), AdamW (betas 0.9/0.98), linear warm-up,
cosine decay{', forward pass under CPU bf16 autocast' if recipe.get('bf16') else ''}. Every batch freshly drawn
from the corpus (`fslib/world/corpus.py`): half the single objects object-centric, colour named in half
their captions. Stored as an fp16 state_dict ({EMBEDDED_CHECKPOINT.name}).

Training wall time: {training.get('wall_time_s', 'n/a')} s on {card['machine']}; final loss {training.get('final_loss', 'n/a')}.

## Zero-shot accuracy on the downstream test splits (%)
Prompt ensembling over each dataset's templates.

| dataset | domain | classes | chance | zero-shot |
|---|---|---|---|---|
{rows}

## What pretraining never showed it
The 10 novel shapes and their nonce names, the sketch and inverted styles, number words above four,
texture names other than solid/striped/dotted/checkered/gradient/wavy, and handwritten digits.
""")
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key, value in RECIPE.items():
        if isinstance(value, bool):
            parser.add_argument(f"--{key.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--out", type=Path, default=EMBEDDED_CHECKPOINT)
    parser.add_argument("--card-only", action="store_true", help="skip training; re-measure the card")
    parser.add_argument("--snapshot-every", type=int, default=0, help="also save a checkpoint every N steps")
    parser.add_argument("--device", default="cpu", help="where to train, e.g. cuda (the recipe was run on a CPU)")
    args = parser.parse_args()
    recipe = {key: getattr(args, key) for key in RECIPE}
    card_path = args.out.parent / "MODEL_CARD.md"  # next to the checkpoint it describes
    if args.card_only:
        training = json.loads(card_path.with_suffix(".json").read_text())["training"] if card_path.with_suffix(".json").exists() else {}
    else:
        distributed.setup(args.device)
        training = pretrain(out=args.out, snapshot_every=args.snapshot_every, device=distributed.rank_device(args.device),
                            **recipe)
        if not distributed.is_main():
            return
    card = write_model_card(training, recipe, args.out, card_path)
    for name, row in card["zero_shot_test_accuracy"].items():
        print(f"{name:16s} zero-shot {row['zero_shot']:5.1f}%  (chance {row['chance']}%)")


if __name__ == "__main__":
    main()
