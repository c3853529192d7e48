"""LLU: Localized Latent Updates (Ibing, Lim, Kobbelt, CVPR 2023 workshop, arXiv 2212.06556).

A lightweight adapter in CLIP's joint latent space, on cached frozen features. Each modality
``m`` (image, text) has an affine map ``A_m(z) = W_m z + b_m`` (identity init), blended in with a
weight that decays with the distance to the nearest training "centre" (notes §2.2):

    z' = normalize( w(z) · normalize(A_m(z)) + (1 - w(z)) · z ),
    w(z) = γ · exp(-κ · dist(z)),   dist(z) = 1 - clamp(max_c cos(z, c), 0, 1).

The weight is computed *per sample* (the reference code shares one weight across a batch, a bug) and
``κ > 0`` makes it decay (the reference's only setting, ``+1e-3``, makes the update global; notes
§9). Far from every centre ``w → 0`` and CLIP's zero-shot prediction is kept, which is the point:
new classes stay near zero-shot while seen data is updated. Centres are the training images'
embeddings and the training classes' text embeddings, merged by agglomerative cosine clustering
(complete linkage) to at most ``max_centres``, each cluster replaced by its normalised sum. A penalty
``MSE(W, I) + MSE(b, 0)`` keeps the maps near identity; the kernel is detached.

The paper's exact loss is unconfirmed (notes §2.3); like the CoOp-protocol papers we use
cross-entropy on CLIP-scaled cosine logits, with Adam (amsgrad), as the reference code's optimiser.

Baselines in the same harness: :class:`GlobalResidualAdapter` (CLIP-Adapter, Gao et al., 2021) and
:class:`TipAdapter` (training-free cache model, Zhang et al., 2022).
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.cluster import AgglomerativeClustering

from fslib.data import ImageDataset
from fslib.features import augmented_features
from fslib.methods.base import Images, Method
from fslib.methods.registry import Knob, register_method
from fslib.models import Clip, zero_shot_classifier
from fslib.training import minibatches, precision_scope, train


def reduce_centres(points: torch.Tensor, max_centres: int) -> torch.Tensor:
    """At most ``max_centres`` unit vectors: agglomerative cosine clusters (complete linkage), each
    replaced by the normalised sum of its members; fewer points are returned as they are."""
    if max_centres < 1 or len(points) <= max_centres:
        return F.normalize(points, dim=-1)
    labels = AgglomerativeClustering(n_clusters=max_centres, metric="cosine", linkage="complete").fit_predict(points.numpy())
    sums = torch.zeros(max_centres, points.shape[1]).index_add_(0, torch.as_tensor(labels), points)
    return F.normalize(sums, dim=-1)


def locality_weight(z: torch.Tensor, centres: torch.Tensor, gamma: float, kappa: float) -> torch.Tensor:
    """Per-sample ``γ exp(-κ dist)``, dist = cosine distance to the nearest centre (detached): (N,)."""
    if len(centres) == 0:
        return torch.zeros(len(z))
    dist = 1 - (F.normalize(z, dim=-1) @ centres.T).max(dim=1).values.clamp(0, 1)
    return (gamma * torch.exp(-kappa * dist)).detach()


class LocalAffine(nn.Module):
    """One modality's localized affine update (identity at init)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("centres", torch.empty(0, dim))

    def forward(self, z: torch.Tensor, gamma: float, kappa: float) -> torch.Tensor:
        w = locality_weight(z, self.centres, gamma, kappa)[:, None]
        mapped = F.normalize(z @ self.weight.T + self.bias, dim=-1)
        return F.normalize(w * mapped + (1 - w) * z, dim=-1)

    def penalty(self) -> torch.Tensor:
        return F.mse_loss(self.weight, torch.eye(len(self.weight))) + F.mse_loss(self.bias, torch.zeros_like(self.bias))


class _FeatureMethod(Method):
    """Shared pieces of the cached-feature methods here: text features, augmented training views and
    timed training.

    With ``views > 0`` a method trains on that many random resized crops of every support image
    (:func:`~fslib.features.augmented_features`, seeded), as CLIP-Adapter does and as LLU's reference
    code implies (notes §2.3); ``views = 0`` trains on the single un-augmented view.
    """

    views: int = 0
    seed: int = 0

    def _text(self, classnames: Sequence[str] | None) -> torch.Tensor:
        return zero_shot_classifier(self.clip, list(classnames or self.classnames), self.templates)

    def _training_features(self, support: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.as_tensor(support.labels)
        if not self.views:
            return self.image_features(support), labels
        return augmented_features(self.clip, support, self.views, self.seed), labels.repeat(self.views)

    def _train(self, params, features, labels, step_logits, steps, lr, batch_size, penalty=lambda: 0.0):
        batches = minibatches(len(labels), batch_size, torch.Generator().manual_seed(self.seed))

        def step_loss(_: int) -> torch.Tensor:
            idx = next(batches)
            return F.cross_entropy(step_logits(features[idx]), labels[idx]) + penalty()

        # a head on cached features: its products are too small for bf16 to pay, and fp32 keeps it as it
        # trains beside a GPU run (on the CPU, whatever the tower's precision)
        with precision_scope("fp32"):
            train(params, step_loss, steps, lr, optimizer="adam", cosine=False, progress=False)


class LLU(_FeatureMethod):
    """Localized Latent Updates on cached features (see the module docstring)."""

    name = "LLU"

    def __init__(self, clip: Clip, gamma: float = 0.5, kappa: float = 10.0, max_centres: int = 50,
                 reg_weight: float = 1.0, steps: int = 300, lr: float = 1e-3, batch_size: int = 64, views: int = 4,
                 seed: int = 0):
        super().__init__(clip)
        self.gamma, self.kappa, self.max_centres, self.reg_weight = gamma, kappa, max_centres, reg_weight
        self.steps, self.lr, self.batch_size, self.views, self.seed = steps, lr, batch_size, views, seed
        dim = clip.model.text_projection.shape[1]
        self.image_map, self.text_map = LocalAffine(dim), LocalAffine(dim)

    def fit(self, support: ImageDataset) -> "LLU":
        self._remember(support)
        features, labels = self._training_features(support)
        centres, text = self.image_features(support), self._text(None)
        start = time.perf_counter()
        # centres are the un-augmented shots (notes §2.4): augmented training views sit near, not on, them
        self.image_map.centres = reduce_centres(centres, self.max_centres)
        self.text_map.centres = reduce_centres(text, self.max_centres)
        scale = self.clip.logit_scale
        params = list(self.image_map.parameters()) + list(self.text_map.parameters())
        self._train(params, features, labels, lambda v: scale * self.image_map(v, self.gamma, self.kappa) @ self.text_map(text, self.gamma, self.kappa).T,
                    self.steps, self.lr, self.batch_size,
                    penalty=lambda: self.reg_weight * (self.image_map.penalty() + self.text_map.penalty()))
        self.fit_seconds = time.perf_counter() - start  # centres and training; cached features excluded
        return self

    @torch.no_grad()
    def logits(self, images: Images, classnames: Sequence[str] | None = None) -> torch.Tensor:
        image = self.image_map(self.image_features(images), self.gamma, self.kappa)
        text = self.text_map(self._text(classnames), self.gamma, self.kappa)
        return self.clip.logit_scale * image @ text.T

    @torch.no_grad()
    def update_weights(self, images: Images, classnames: Sequence[str]) -> dict[str, float]:
        """Mean locality weight ``w`` the fitted update gives these images and these classes' prompts:
        0 means "left as zero-shot", γ means "fully updated" (how local the update really is)."""
        return {"images": locality_weight(self.image_features(images), self.image_map.centres, self.gamma, self.kappa).mean().item(),
                "class prompts": locality_weight(self._text(classnames), self.text_map.centres, self.gamma, self.kappa).mean().item()}


class GlobalResidualAdapter(_FeatureMethod):
    """CLIP-Adapter (Gao et al., 2021): ``f' = r · MLP(f) + (1 - r) · f`` on every image feature.

    A bottleneck MLP (reduction 4) with residual ratio ``r = 0.2``; it changes all features, near or
    far from the training data: the global counterpart of LLU.
    """

    name = "CLIP-Adapter"

    def __init__(self, clip: Clip, ratio: float = 0.2, reduction: int = 4, steps: int = 300, lr: float = 1e-3,
                 batch_size: int = 64, views: int = 4, seed: int = 0):
        super().__init__(clip)
        dim = clip.model.text_projection.shape[1]
        torch.manual_seed(seed)
        self.mlp = nn.Sequential(nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(),
                                 nn.Linear(dim // reduction, dim, bias=False), nn.ReLU())
        self.ratio, self.steps, self.lr, self.batch_size, self.views, self.seed = ratio, steps, lr, batch_size, views, seed

    def adapt(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.ratio * self.mlp(features) + (1 - self.ratio) * features, dim=-1)

    def fit(self, support: ImageDataset) -> "GlobalResidualAdapter":
        self._remember(support)
        (features, labels), text = self._training_features(support), self._text(None)
        scale = self.clip.logit_scale
        start = time.perf_counter()
        self._train(list(self.mlp.parameters()), features, labels, lambda v: scale * self.adapt(v) @ text.T,
                    self.steps, self.lr, self.batch_size)
        self.fit_seconds = time.perf_counter() - start
        return self

    @torch.no_grad()
    def logits(self, images: Images, classnames: Sequence[str] | None = None) -> torch.Tensor:
        return self.clip.logit_scale * self.adapt(self.image_features(images)) @ self._text(classnames).T


class TipAdapter(_FeatureMethod):
    """Tip-Adapter (Zhang et al., 2022), training-free: zero-shot logits plus a cache model,
    ``α · exp(-β (1 - f Fᵀ)) L`` over the support features F and their one-hot labels L.

    Classes without cached images (new classes) get no cache contribution: zero-shot for them.
    """

    name = "Tip-Adapter"

    def __init__(self, clip: Clip, alpha: float = 1.0, beta: float = 5.5):
        super().__init__(clip)
        self.alpha, self.beta = alpha, beta
        self.register_buffer("keys", torch.empty(0))
        self.register_buffer("values", torch.empty(0))

    def fit(self, support: ImageDataset) -> "TipAdapter":
        self._remember(support)
        self.keys = self.image_features(support)
        self.values = F.one_hot(torch.as_tensor(support.labels), support.num_classes).float()
        self.fit_seconds = 0.0  # training-free: the cache is the support set's (cached) features
        return self

    @torch.no_grad()
    def logits(self, images: Images, classnames: Sequence[str] | None = None) -> torch.Tensor:
        features = self.image_features(images)
        names = list(classnames or self.classnames)
        logits = self.clip.logit_scale * features @ self._text(names).T
        cache = self.alpha * torch.exp(-self.beta * (1 - features @ self.keys.T)) @ self.values
        for j, name in enumerate(self.classnames):  # the cache only knows the fitted classes
            if name in names:
                logits[:, names.index(name)] += cache[:, j]
        return logits


TIP_ALPHAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # Tip-Adapter's residual weight: the ladder 06 searches
register_method("Tip-Adapter", TipAdapter, paper="Zhang et al., 2022", compared=True, parameter_efficient=True,
                knob=Knob("alpha", TIP_ALPHAS, 1))
register_method("CLIP-Adapter", GlobalResidualAdapter, paper="Gao et al., 2021", compared=True, parameter_efficient=True,
                knob=Knob("ratio", (0.05, 0.2, 0.5, 0.8, 0.95), 1))
register_method("LLU", LLU, paper="Ibing, Lim, Kobbelt, 2022", compared=True, parameter_efficient=True,
                knob=Knob("kappa", (0.1, 0.5, 2.0, 10.0, 50.0, 200.0), 2))


def update_field_2d(centres: np.ndarray, rotation_deg: float, kappa: float, gamma: float = 1.0,
                    points: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """The toy picture of notes §2.1: unit vectors on a circle, an affine map (a rotation), blended in
    by LLU's kernel around ``centres``. Returns (points, displacement) arrays of shape (points, 2)."""
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    z = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], 1), dtype=torch.float32)
    theta = np.deg2rad(rotation_deg)
    local = LocalAffine(2)
    with torch.no_grad():
        local.weight.copy_(torch.tensor([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]))
        local.centres = F.normalize(torch.tensor(centres, dtype=torch.float32), dim=-1)
        moved = local(z, gamma, kappa)
    return z.numpy(), (moved - z).numpy()
