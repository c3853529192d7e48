"""MAMF: Model-Agnostic Multitask Fine-tuning (Wang et al., 2022, arXiv 2203.04904), with its baselines.

The classifier is CLIP itself: an image's logits are ``exp(s) * cos(f(x), g(prompt_c))`` over the
classes in play, with one prompt per class, trained with image-to-text cross-entropy (notes §2.2).
Three ways to get the starting weights for meta-test, all through :func:`meta_train`:

* ``"finetune"`` — classical fine-tuning: epochs over every training image of all classes (§2.4);
* ``"mamf"`` — draw ``K = round(ln 0.001 / ln(1 - n/C))`` uniform ``n``-class tasks so that every
  class is covered with probability 0.999, and fine-tune on each task in turn with a fresh optimiser,
  first-order and single-level (§2.1, §2.3);
* ``"fomaml"`` — first-order MAML on the same tasks: SGD steps on a task's support half, then the
  query half's gradient at the adapted weights updates the meta-weights (§2.5; Finn et al., 2017).

Meta-test (§2.7): :class:`PromptFineTune` fine-tunes a *copy* of the meta-trained model on each test
task's support set and scores its query set, so no adaptation carries over between tasks (the official
code does carry it over, notes §2.7 ⚠; we do not copy that).

CLIP's own projection heads are kept for all three strategies by default. The official code swaps in
randomly initialised heads for MAMF and fine-tuning only (notes §2.2), which starts them at chance
while FOMAML starts at zero-shot accuracy; ``random_heads=True`` reproduces that.
"""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fslib.data import ImageDataset, load_dataset
from fslib.evaluation import episode_accuracies
from fslib.features import preprocess_images
from fslib.fewshot import EpisodeSampler, few_shot
from fslib.methods.base import Images, Method
from fslib.models import Clip, prompt_logits, prompt_logits_cpu, prompt_tokens
from fslib.training import minibatches, train

STRATEGIES = ("finetune", "mamf", "fomaml")


def task_count(n_way: int, num_classes: int, miss_probability: float = 0.001) -> int:
    """Tasks needed so that a given class is left out of all of them with about ``miss_probability``.

    Each uniform ``n``-subset of ``C`` classes misses a class with probability ``1 - n/C``, so ``K``
    tasks miss it with ``(1 - n/C)^K``; solving for ``K`` gives ``ln(p) / ln(1 - n/C)`` (notes §2.1).
    """
    if not 2 <= n_way <= num_classes:
        raise ValueError(f"n_way={n_way} must lie in [2, {num_classes}] for a dataset of {num_classes} classes")
    if n_way == num_classes:
        return 1
    return max(1, round(math.log(miss_probability) / math.log(1 - n_way / num_classes)))


def sample_tasks(num_classes: int, n_way: int, count: int, rng: np.random.Generator) -> list[list[int]]:
    """``count`` independent uniform ``n_way``-subsets of the classes (a subset may repeat)."""
    return [sorted(rng.choice(num_classes, n_way, replace=False).tolist()) for _ in range(count)]


def in_batch_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor,
                  params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Image-to-text cross-entropy with the softmax over the classes present in the batch (notes §2.2)."""
    classes, targets = torch.unique(labels, return_inverse=True)
    logits = prompt_logits(model, images, tokens[classes], params)
    return F.cross_entropy(logits, targets.to(logits.device))


def fine_tune(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor,
              epochs: int, lr: float, batch_size: int, seed: int, progress: bool = False) -> list[float]:
    """Adam over ``epochs`` passes of shuffled mini-batches, constant LR (the official recipe's optimiser)."""
    generator = torch.Generator().manual_seed(seed)
    batches = minibatches(len(labels), batch_size, generator)
    steps = epochs * math.ceil(len(labels) / batch_size)
    model.train()

    def step_loss(_: int) -> torch.Tensor:
        idx = next(batches)
        return in_batch_loss(model, images[idx], labels[idx], tokens)

    return train(model.parameters(), step_loss, steps, lr, optimizer="adam", cosine=False,
                 device=next(model.parameters()).device, progress=progress)


def fomaml_task_update(model: torch.nn.Module, loss_fn: Callable, support: Sequence, query: Sequence,
                       inner_lr: float, outer_optimizer: torch.optim.Optimizer) -> None:
    """One first-order MAML pass on one task (notes §2.5).

    ``loss_fn(params, batch)`` is the task loss at the given parameter values. The fast weights start
    at the meta-weights and take one SGD step per support batch; then, for each query batch, the
    query-loss gradient *at the adapted weights* is written into the meta-weights' ``.grad`` and the
    outer optimiser steps (first order: no second derivatives).
    """
    meta = dict(model.named_parameters())
    fast = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in meta.items()}
    trainable = [k for k, v in meta.items() if v.requires_grad]
    for batch in support:
        grads = torch.autograd.grad(loss_fn(fast, batch), [fast[k] for k in trainable])
        for k, g in zip(trainable, grads):
            fast[k] = (fast[k] - inner_lr * g).detach().requires_grad_()
    for batch in query:
        grads = torch.autograd.grad(loss_fn(fast, batch), [fast[k] for k in trainable])
        outer_optimizer.zero_grad(set_to_none=True)
        for k, g in zip(trainable, grads):
            meta[k].grad = g
        outer_optimizer.step()


def reset_projections(model: torch.nn.Module, seed: int) -> None:
    """Replace CLIP's image and text projections by Kaiming-normal random ones (the official MAMF/FT heads)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in (model.visual.proj, model.text_projection):
            fan_in = weight.shape[0]
            weight.copy_(torch.randn(weight.shape, generator=generator) * math.sqrt(2.0 / fan_in))


def meta_train(clip: Clip, train_set: ImageDataset, strategy: str, n_way: int, epochs: int = 1, lr: float = 1e-5,
               inner_lr: float = 1e-3, inner_steps: int = 1, batch_size: int = 32, seed: int = 1,
               random_heads: bool = False, freeze_text: bool = False, progress: bool = True) -> Clip:
    """Starting weights for meta-test by ``strategy`` (one of ``STRATEGIES``) on ``train_set``.

    Returns a new :class:`Clip` (the input is not modified). ``epochs`` are per task for MAMF and
    FOMAML (the official code runs 8 per task) and over all data for fine-tuning. FOMAML takes
    ``inner_steps`` SGD steps of ``inner_lr`` on random support-half batches of each task.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    model = copy.deepcopy(clip.model)
    if random_heads and strategy != "fomaml":
        reset_projections(model, seed)
    if freeze_text:
        for name, p in model.named_parameters():
            if not name.startswith("visual.") and name != "logit_scale":
                p.requires_grad_(False)
    images, labels = preprocess_images(clip, train_set), torch.as_tensor(train_set.labels)
    tokens = prompt_tokens(clip, train_set)
    rng = np.random.default_rng(seed)
    if strategy == "finetune":
        fine_tune(model, images, labels, tokens, epochs, lr, batch_size, seed, progress)
    else:
        tasks = sample_tasks(train_set.num_classes, n_way, task_count(n_way, train_set.num_classes), rng)
        outer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr) if strategy == "fomaml" else None
        for i, task in enumerate(tqdm(tasks, desc=f"{strategy} {train_set.name} n={n_way}", disable=not progress, leave=False)):
            idx = torch.as_tensor(np.flatnonzero(np.isin(train_set.labels, task)))
            if strategy == "mamf":  # a fresh optimiser per task, as the official code does
                fine_tune(model, images[idx], labels[idx], tokens, epochs, lr, batch_size, seed + i)
                continue
            generator = torch.Generator().manual_seed(seed + i)
            idx = idx[torch.randperm(len(idx), generator=generator)]
            support_half, query_half = idx[:len(idx) // 2], idx[len(idx) // 2:]
            support = [support_half[torch.randperm(len(support_half), generator=generator)[:batch_size]]
                       for _ in range(inner_steps)]
            query = [query_half[s:s + batch_size] for s in range(0, len(query_half), batch_size)]
            for _ in range(epochs):
                fomaml_task_update(model, lambda params, b: in_batch_loss(model, images[b], labels[b], tokens, params),
                                   support, query, inner_lr, outer)
    model.eval()
    return replace(clip, model=model, pretrained=f"{clip.pretrained}+{strategy}")


class PromptFineTune(Method):
    """Meta-test adaptation: fine-tune a copy of the model on the support set, score with prompts.

    ``epochs=0`` is the paper's zero-shot baseline: the n class prompts, no training (notes §2.6).
    """

    def __init__(self, clip: Clip, epochs: int = 5, lr: float = 1e-5, batch_size: int = 32, seed: int = 0,
                 name: str | None = None):
        super().__init__(clip)
        self.epochs, self.lr, self.batch_size, self.seed = epochs, lr, batch_size, seed
        self.name = name or ("zero-shot" if epochs == 0 else "fine-tuned")
        self.model = clip.model

    def fit(self, support: ImageDataset) -> "PromptFineTune":
        self._remember(support)
        self.model = copy.deepcopy(self.clip.model)  # every task starts from the same weights
        if self.epochs > 0:
            fine_tune(self.model, preprocess_images(self.clip, support), torch.as_tensor(support.labels),
                      prompt_tokens(self.clip, support), self.epochs, self.lr, self.batch_size, self.seed)
        self.model.eval()
        return self

    @torch.no_grad()
    def logits(self, images: Images, classnames: Sequence[str] | None = None) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            raise TypeError("PromptFineTune trains the image tower: pass an ImageDataset, not cached features")
        names = list(classnames or self.classnames)
        tokens = self.clip.tokenizer([self.templates[0].format(n) for n in names])
        return prompt_logits_cpu(self.model, preprocess_images(self.clip, images), tokens)

    def trainable_parameters(self) -> int:
        return 0 if self.epochs == 0 else sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def compare_strategies(clip: Clip, datasets: Sequence[str], n_ways: Sequence[int], shots: int, tasks: int,
                       seeds: Sequence[int], epochs: int, lr: float, inner_lr: float, inner_steps: int,
                       adapt_epochs: int, train_per_class: int, queries: int = 8, random_heads: bool = False,
                       progress: bool = True):
    """The paper's comparison: zero-shot, fine-tuning, FOMAML and MAMF on ``tasks`` test episodes per
    (dataset, n-way, seed); the same episodes for every method, so differences are paired.

    Meta-training uses ``train_per_class`` images per class of each dataset's train split (drawn by
    seed); test episodes draw ``shots`` support and
    ``queries`` query images per class from its test split (held-out images of the same classes,
    as in the official code, notes §4). Returns a tidy DataFrame (one row per method and episode).
    """
    rows = []
    jobs = [(name, seed) for name in datasets for seed in seeds]
    for name, seed in tqdm(jobs, desc="datasets x seeds", disable=not progress):
        train_set, test_set = few_shot(load_dataset(name, "train"), train_per_class, seed), load_dataset(name, "test")
        common = dict(epochs=epochs, lr=lr, batch_size=32, seed=seed, random_heads=random_heads, progress=False)
        finetuned = meta_train(clip, train_set, "finetune", n_way=2, **common)
        for n in n_ways:
            starts = {"zero-shot": clip, "fine-tuning": finetuned,
                      "FOMAML": meta_train(clip, train_set, "fomaml", n, inner_lr=inner_lr, inner_steps=inner_steps, **common),
                      "MAMF": meta_train(clip, train_set, "mamf", n, **common)}
            sampler = EpisodeSampler([test_set], n, shots, queries, seed=seed)
            episodes = [sampler.sample() for _ in range(tasks)]
            for method, start in starts.items():
                epochs_here = 0 if method == "zero-shot" else adapt_epochs
                accs = episode_accuracies(lambda: PromptFineTune(start, epochs_here, lr, seed=seed), episodes, progress=False)
                rows += [{"dataset": name, "n_way": n, "seed": seed, "method": method, "task": t, "accuracy": a}
                         for t, a in enumerate(accs)]
    return pd.DataFrame(rows)
