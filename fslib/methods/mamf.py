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
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fslib import distributed
from fslib.data import ImageDataset
from fslib.features import preprocess_images
from fslib.fewshot import Episode
from fslib.methods.base import Images, Method
from fslib.methods.registry import register_method
from fslib.models import Clip, in_text_tower, prompt_features, prompt_logits_cpu, prompt_tokens
from fslib.progress import tqdm
from fslib.training import autocast, make_optimizer, minibatches, train

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
    """Image-to-text cross-entropy with the softmax over the classes present in the batch (notes §2.2).

    Under ``torchrun`` each rank encodes its slice of the batch and the whole batch's image features are
    gathered (:mod:`fslib.distributed`), so every rank computes the one-process loss."""
    classes, targets = torch.unique(labels, return_inverse=True)
    mine = distributed.local_slice(len(labels))
    image_features, text_features, scale = prompt_features(model, images[mine], tokens[classes], params)
    logits = scale * distributed.gather(image_features, len(labels)) @ text_features.T
    return F.cross_entropy(logits, targets.to(logits.device))


def fine_tune(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor,
              epochs: int, lr: float, batch_size: int, seed: int, steps: int | None = None,
              optimizer_resets: Sequence[int] | None = None, progress: bool = False) -> list[float]:
    """Adam over shuffled mini-batches at a constant LR (the official recipe's optimiser): ``epochs``
    passes, or exactly ``steps`` steps when given (how fine-tuning is matched to MAMF's budget).

    ``optimizer_resets`` splits the steps into chunks of these sizes, each with a fresh Adam: MAMF's
    per-task step counts (:func:`mamf_chunks`), so that matched fine-tuning also shares MAMF's
    optimiser-state policy (the official code makes a new Adam for every task, notes §2.3)."""
    generator = torch.Generator().manual_seed(seed)
    batches = minibatches(len(labels), batch_size, generator)
    steps = epochs * math.ceil(len(labels) / batch_size) if steps is None else steps
    chunks = [steps] if optimizer_resets is None else list(optimizer_resets)
    if sum(chunks) != steps:
        raise ValueError(f"optimizer_resets {chunks} add up to {sum(chunks)} steps, not the {steps} asked for")
    model.train()

    def step_loss(_: int) -> torch.Tensor:
        idx = next(batches)
        return in_batch_loss(model, images[idx], labels[idx], tokens)

    device = next(model.parameters()).device
    return [loss for chunk in chunks for loss in train(model.parameters(), step_loss, chunk, lr, optimizer="adam",
                                                         cosine=False, device=device, progress=progress)]


@dataclass(frozen=True)
class Budget:
    """What a meta-training run costs: optimiser steps and images passed through the model."""

    steps: int
    images: int


def mamf_chunks(train_set: ImageDataset, n_way: int, epochs: int, batch_size: int, seed: int) -> list[int]:
    """MAMF's optimiser steps per task on ``train_set`` at ``n_way`` with ``seed`` (the tasks :func:`meta_train`
    draws): a task of ``m`` images takes ``epochs * ceil(m / batch)`` steps, each task with a fresh Adam."""
    return [epochs * math.ceil(m / batch_size) for m in task_sizes(train_set, n_way, seed)]


def mamf_budget(train_set: ImageDataset, n_way: int, epochs: int, batch_size: int, seed: int) -> Budget:
    """MAMF's steps and images on ``train_set`` at ``n_way`` with ``seed``: :func:`mamf_chunks` summed, and
    ``epochs * m`` images per task of ``m`` images.

    Fine-tuning given the same number of steps with a batch of ``images / steps``, and a fresh Adam at
    the same step counts (:func:`fine_tune`'s ``optimizer_resets``), sees the same images under the same
    optimiser policy: the only difference left is the one the paper names, how each batch's classes are
    sampled.
    """
    return Budget(steps=sum(mamf_chunks(train_set, n_way, epochs, batch_size, seed)),
                  images=epochs * sum(task_sizes(train_set, n_way, seed)))


def mamf_tasks(train_set: ImageDataset, n_way: int, seed: int) -> list[list[int]]:
    """The ``K(n)`` uniform ``n``-class tasks MAMF and FOMAML meta-train on, drawn with ``seed``."""
    num_classes = train_set.num_classes
    return sample_tasks(num_classes, n_way, task_count(n_way, num_classes), np.random.default_rng(seed))


def task_sizes(train_set: ImageDataset, n_way: int, seed: int) -> list[int]:
    """Training images in each of :func:`mamf_tasks`' tasks: what the MAMF and FOMAML budgets count."""
    counts = np.bincount(train_set.labels, minlength=train_set.num_classes)
    return [int(counts[task].sum()) for task in mamf_tasks(train_set, n_way, seed)]


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
    device = next(iter(meta.values())).device

    def gradients(batch) -> tuple[torch.Tensor, ...]:
        # the fast weights are plain tensors, not an optimiser's: fp16's dynamic loss scaling does not
        # apply, so under fp16 this pass is autocast without a scaler (bf16 needs none)
        with autocast(device):
            loss = loss_fn(fast, batch)
        grads = torch.autograd.grad(loss, [fast[k] for k in trainable])
        distributed.average_(grads)  # under torchrun, as the shared training loop does (fslib.distributed)
        return grads

    for batch in support:
        grads = gradients(batch)
        for k, g in zip(trainable, grads):
            fast[k] = (fast[k] - inner_lr * g).detach().requires_grad_()
    for batch in query:
        grads = gradients(batch)
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


def task_update(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor, strategy: str,
                epochs: int, lr: float, inner_lr: float, inner_steps: int, batch_size: int, seed: int,
                outer: torch.optim.Optimizer | None = None) -> None:
    """Meta-train ``model`` on one task, in place: MAMF fine-tunes on all of the task's images with a fresh
    optimiser (§2.3, as the official code does); FOMAML (§2.5) splits them at random into a support and a
    query half, takes ``inner_steps`` SGD steps on support batches and steps ``outer`` (the optimiser that
    lives across tasks) with the query half's gradient, ``epochs`` times."""
    if strategy == "mamf":
        fine_tune(model, images, labels, tokens, epochs, lr, batch_size, seed)
        return
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    support_half, query_half = order[:len(order) // 2], order[len(order) // 2:]
    support = [support_half[torch.randperm(len(support_half), generator=generator)[:batch_size]] for _ in range(inner_steps)]
    query = [query_half[s:s + batch_size] for s in range(0, len(query_half), batch_size)]
    for _ in range(epochs):
        fomaml_task_update(model, lambda params, b: in_batch_loss(model, images[b], labels[b], tokens, params),
                           support, query, inner_lr, outer)


def _start(clip: Clip, strategy: str, seed: int, random_heads: bool, freeze_text: bool) -> torch.nn.Module:
    """A trainable copy of ``clip``'s model, with the official random heads or a frozen text tower if asked."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    model = copy.deepcopy(clip.model)
    if random_heads and strategy != "fomaml":
        reset_projections(model, seed)
    if freeze_text:
        for name, p in model.named_parameters():
            if in_text_tower(name):
                p.requires_grad_(False)
    return model


def meta_train(clip: Clip, train_set: ImageDataset, strategy: str, n_way: int, epochs: int = 1, lr: float = 1e-5,
               inner_lr: float = 1e-3, inner_steps: int = 1, batch_size: int = 32, seed: int = 1,
               steps: int | None = None, optimizer_resets: Sequence[int] | None = None, random_heads: bool = False,
               freeze_text: bool = False, progress: bool = True) -> Clip:
    """Starting weights for meta-test by ``strategy`` (one of ``STRATEGIES``) on ``train_set``.

    Returns a new :class:`Clip` (the input is not modified). ``epochs`` are per task for MAMF and
    FOMAML (the official code runs 8 per task) and over all data for fine-tuning, unless ``steps``
    fixes fine-tuning's step count and ``optimizer_resets`` where it starts a fresh Adam (see
    :func:`mamf_budget`). FOMAML takes ``inner_steps`` SGD steps
    of ``inner_lr`` on random support-half batches of each task (:func:`task_update`).
    """
    model = _start(clip, strategy, seed, random_heads, freeze_text)
    images, labels = preprocess_images(clip, train_set), torch.as_tensor(train_set.labels)
    tokens = prompt_tokens(clip, train_set)
    if strategy == "finetune":
        fine_tune(model, images, labels, tokens, epochs, lr, batch_size, seed, steps=steps,
                  optimizer_resets=optimizer_resets, progress=progress)
    else:
        outer = make_optimizer(model.parameters(), "adam", lr) if strategy == "fomaml" else None
        tasks = mamf_tasks(train_set, n_way, seed)
        for i, task in enumerate(tqdm(tasks, desc=f"{strategy} {train_set.name} n={n_way}", disable=not (progress and distributed.is_main()), leave=False)):
            idx = torch.as_tensor(np.flatnonzero(np.isin(train_set.labels, task)))
            task_update(model, images[idx], labels[idx], tokens, strategy, epochs, lr, inner_lr, inner_steps, batch_size,
                        seed + i, outer)
    model.eval()
    return replace(clip, model=model, pretrained=f"{clip.pretrained}+{strategy}")


def meta_train_on_episodes(clip: Clip, episodes: Sequence[Episode], strategy: str = "mamf", epochs: int = 1,
                           lr: float = 1e-5, inner_lr: float = 1e-3, inner_steps: int = 1, batch_size: int = 32,
                           seed: int = 1) -> Clip:
    """MAMF or FOMAML on ready-made N-way episodes (a meta-learning benchmark's, e.g. SMAT's), one task per
    episode with its support and query images together and its own class prompts (:func:`task_update`)."""
    if strategy == "finetune":
        raise ValueError("strategy='finetune' has no tasks; allowed here: mamf, fomaml")
    model = _start(clip, strategy, seed, random_heads=False, freeze_text=False)
    outer = make_optimizer(model.parameters(), "adam", lr) if strategy == "fomaml" else None
    for i, episode in enumerate(episodes):
        images = torch.cat([preprocess_images(clip, episode.support), preprocess_images(clip, episode.query)])
        labels = torch.as_tensor(np.concatenate([episode.support.labels, episode.query.labels]))
        task_update(model, images, labels, prompt_tokens(clip, episode.support), strategy, epochs, lr, inner_lr, inner_steps,
                    batch_size, seed + i, outer)
    model.eval()
    return replace(clip, model=model, pretrained=f"{clip.pretrained}+{strategy}")


class PromptFineTune(Method):
    """Meta-test adaptation: fine-tune a copy of the model on the support set, score with prompts.

    The copy is of ``start`` (meta-trained weights, a :class:`Clip` from :func:`meta_train`) or else of
    ``clip``. ``epochs=0`` is the paper's zero-shot baseline: the n class prompts, no training (notes §2.6).
    """

    needs_pixels = True

    def __init__(self, clip: Clip, epochs: int = 5, lr: float = 1e-5, batch_size: int = 32, seed: int = 0,
                 name: str | None = None, start: Clip | None = None):
        super().__init__(clip)
        self.epochs, self.lr, self.batch_size, self.seed, self.start = epochs, lr, batch_size, seed, start or clip
        self.name = name or ("zero-shot" if epochs == 0 else "fine-tuned")
        self.adapted: torch.nn.Module | None = None  # the support set's copy, set by fit

    def fit(self, support: ImageDataset) -> "PromptFineTune":
        self._remember(support)
        self.adapted = copy.deepcopy(self.start.model)  # every task starts from the same weights
        if self.epochs > 0:
            fine_tune(self.adapted, preprocess_images(self.clip, support), torch.as_tensor(support.labels),
                      prompt_tokens(self.clip, support), self.epochs, self.lr, self.batch_size, self.seed)
        self.adapted.eval()
        return self

    @torch.no_grad()
    def logits(self, images: Images, classnames: Sequence[str] | None = None) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            raise TypeError("PromptFineTune trains the image tower: pass an ImageDataset, not cached features")
        if self.adapted is None:
            raise RuntimeError(f"{self.name}: fit before scoring")
        names = list(classnames or self.classnames)
        tokens = self.clip.tokenizer([self.templates[0].format(n) for n in names])
        return prompt_logits_cpu(self.adapted, preprocess_images(self.clip, images), tokens)

    def trainable_parameters(self) -> int:
        model = self.start.model if self.adapted is None else self.adapted
        return 0 if self.epochs == 0 else sum(p.numel() for p in model.parameters() if p.requires_grad)

    def allocate(self, state_dict) -> None:
        if self.adapted is None:
            self.adapted = copy.deepcopy(self.start.model).eval()
        super().allocate(state_dict)


class MetaTrainedFineTune(PromptFineTune):
    """MAMF or FOMAML as one method: :meth:`meta_train` on N-way episodes (:func:`meta_train_on_episodes`,
    at the method's ``lr``), then the same test-time fine-tuning as :class:`PromptFineTune` from there."""

    meta_trains = True

    def __init__(self, clip: Clip, strategy: str = "mamf", epochs: int = 5, lr: float = 1e-5, batch_size: int = 32,
                 seed: int = 0, name: str | None = None, start: Clip | None = None):
        if strategy not in ("mamf", "fomaml"):
            raise ValueError(f"strategy={strategy!r} does not meta-train on episodes; allowed: mamf, fomaml")
        super().__init__(clip, epochs, lr, batch_size, seed, name or strategy.upper(), start)
        self.strategy = strategy

    def meta_train(self, episodes: Sequence[Episode]) -> "MetaTrainedFineTune":
        self.start = meta_train_on_episodes(self.clip, episodes, self.strategy, lr=self.lr, seed=self.seed)
        return self


register_method("fine-tuning (per episode)", PromptFineTune, paper="Wang et al., 2022, §2.7",
                name="fine-tuning (per episode)")
register_method("MAMF", MetaTrainedFineTune, paper="Wang et al., 2022, §2.1-2.3", strategy="mamf", name="MAMF")
register_method("FOMAML", MetaTrainedFineTune, paper="Finn et al., 2017 (first order); Wang et al., 2022, §2.5",
                strategy="fomaml", name="FOMAML")
