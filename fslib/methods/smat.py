"""SMAT: Sparse MetA-Tuning with sparse interpolated experts (Chen et al., ICML 2024, arXiv 2403.08477).

The pretrained image tower ``θ_pre`` stays frozen. SMAT learns one shared delta ``θ_δ`` (same shapes,
init 0) and ``M`` expert masks ``z_m`` over it; a router reads a task's support set and mixes the
experts into task weights (paper overview figure; notes §2.1, §2.5)

    θ_i = θ_pre + Σ_m α_im (z_m ⊙ θ_δ),

applied functionally (``torch.func.functional_call``), so the frozen tower is never modified.

* Masks (notes §2.3): hard-concrete gates (Louizos et al., 2018; β = 2/3, ζ = 1.1, γ = -0.1) on
  per-element ``log α``, with uniform noise in training (the paper's relaxation; the official code's
  noise band is ±1e-6) and ``σ(log α)`` at test. Each expert must keep a share of zeros ≥ τ: its
  expected L0 density ``mean σ(log α + β ln(-γ/ζ))`` ≤ 1 - τ, enforced by a Lagrange multiplier
  ``λ_m ≥ 0`` raised by dual ascent while the constraint is violated.
* Router (notes §2.4): support-set class prototypes from the frozen tower, plus 4 learnable skill
  tokens, through one transformer block (spectral norm on its linear layers); output token 0 times
  learnable expert keys gives logits ``a``; gates are relaxed Bernoulli with an annealed temperature
  (5 → 0.5), normalised to sum to one. Keys and skill tokens are registered parameters (the
  official code drops them from the optimiser, a known bug).
* Meta-training step (notes §2.6), first order: one inner SGD step on the support set (ProtoNet
  head, cosine × 10), query cross-entropy at the adapted weights, plus distillation from a dense
  task teacher: ``teacher_steps`` SGD steps on the query set from the adapted weights, KL at T = 2
  (standard teacher→student direction; the code's reverse direction is unconfirmed in the paper).
* Test (notes §2.8): (a) no fine-tuning, a cosine nearest-prototype classifier on ``θ_i``;
  (b) a few AdamW steps on the support set from ``θ_i``, all weights or LoRA on attention q/v.

``masks`` switches the baselines of the same harness: ``"learned"`` (SMAT), ``"dense"`` (dense
meta-tuning, ``θ_pre + θ_δ``), ``"random"`` / ``"magnitude"`` (one hand-designed binary mask at the
same sparsity τ), and ``"none"`` (ProtoNet on the pretrained tower, PMF-style without meta-tuning).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.utils.parametrizations import spectral_norm
from tqdm.auto import tqdm

from fslib.data import ImageDataset, load_dataset
from fslib.evaluation import evaluate
from fslib.features import preprocess_images
from fslib.fewshot import Episode, EpisodeSampler
from fslib.methods.base import Images, Method
from fslib.models import Clip

MASK_MODES = ("learned", "dense", "random", "magnitude", "none")
FINETUNE_MODES = ("none", "full", "lora")
COSINE_SCALE = 10.0  # PMF / SMAT's cosine classifier scale
BETA, ZETA, GAMMA = 2 / 3, 1.1, -0.1  # hard-concrete constants (Louizos et al., 2018)


def hard_concrete(log_alpha: torch.Tensor, training: bool) -> torch.Tensor:
    """Stretched, clamped hard-concrete sample (training) or its noiseless value (test) in [0, 1]."""
    if training:
        u = torch.rand_like(log_alpha).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((u.log() - (1 - u).log() + log_alpha) / BETA)
    else:
        s = torch.sigmoid(log_alpha)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def expected_density(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z ≠ 0) per element: the expected-L0 surrogate, ``σ(log α - β ln(-γ/ζ))``."""
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


def prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class means of (normalised) features: (C, D)."""
    one_hot = F.one_hot(labels, num_classes).float()
    return (one_hot.T @ features) / one_hot.sum(0)[:, None]


def cosine_logits(features: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    return COSINE_SCALE * F.normalize(features, dim=-1) @ F.normalize(protos, dim=-1).T


class Router(nn.Module):
    """Task → gates over experts: prototypes + skill tokens → one transformer block → token 0 → keys."""

    def __init__(self, dim: int, num_experts: int, heads: int = 4, skill_tokens: int = 4, mlp_ratio: int = 2):
        super().__init__()
        self.skills = nn.Parameter(torch.randn(skill_tokens, dim) * 1e-3)
        self.keys = nn.Parameter(nn.init.kaiming_normal_(torch.empty(num_experts, dim)))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.heads = heads
        self.qkv = spectral_norm(nn.Linear(dim, 3 * dim, bias=False))
        self.out = spectral_norm(nn.Linear(dim, dim))
        self.mlp = nn.Sequential(spectral_norm(nn.Linear(dim, mlp_ratio * dim)), nn.GELU(),
                                 spectral_norm(nn.Linear(mlp_ratio * dim, dim)))

    def forward(self, protos: torch.Tensor) -> torch.Tensor:
        """Expert logits ``a`` (M,) for one task from its prototypes (C, D)."""
        x = torch.cat([protos, self.skills])[None]
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        split = lambda t: t.view(1, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2)
        attended = F.scaled_dot_product_attention(split(q), split(k), split(v))
        x = x + self.out(attended.transpose(1, 2).reshape(x.shape))
        x = x + self.mlp(self.norm2(x))
        return self.keys @ x[0, 0]


def gate_temperature(tasks_seen: int, total_tasks: int) -> float:
    """Linear anneal 5 → 0.5, reached after 36% of meta-training (the official 18k of 50k tasks)."""
    return max(0.5, 5.0 - 4.5 * tasks_seen / max(1.0, 0.36 * total_tasks))


class SparseInterpolatedExperts(nn.Module):
    """θ_pre (frozen, shared with the Clip), θ_δ, masks, router and Lagrange multipliers."""

    def __init__(self, clip: Clip, masks: str = "learned", num_experts: int = 8, sparsity: float = 0.9, seed: int = 0):
        super().__init__()
        if masks not in MASK_MODES:
            raise ValueError(f"unknown masks {masks!r}; allowed: {', '.join(MASK_MODES)}")
        if not 0 <= sparsity < 1:
            raise ValueError(f"sparsity={sparsity} must lie in [0, 1)")
        self.clip = clip  # a dataclass, not a module: the frozen tower is not a parameter of this module
        self.mode, self.sparsity, self.num_experts = masks, sparsity, (num_experts if masks == "learned" else 1)
        self.names = [name for name, _ in self.tower.named_parameters()]
        # θ_pre: detached views of the tower's weights (functional_call swaps in θ_i, never writes them)
        self.pre = {name: p.detach() for name, p in self.tower.named_parameters()}
        generator = torch.Generator().manual_seed(seed)
        self.delta = nn.ParameterList([nn.Parameter(torch.zeros_like(p)) for p in self.pre.values()])
        self.log_alpha = nn.ParameterList()
        self.fixed_masks: list[torch.Tensor] = []
        if masks == "learned":
            # official init: log α ~ N(0, 0.5²), expected density ≈ 0.83; the Lagrange multipliers bring each
            # expert down to 1 - τ (starting closed instead would starve θ_δ of gradient: notes §2.3)
            self.log_alpha.extend(nn.Parameter(torch.randn(*p.shape, self.num_experts, generator=generator) * 0.5)
                                  for p in self.pre.values())
            dim = clip.model.text_projection.shape[1]
            self.router = Router(dim, self.num_experts)
            self.register_buffer("lagrange", torch.zeros(self.num_experts))
        elif masks in ("random", "magnitude"):
            self.fixed_masks = [self._hand_mask(p, masks, generator) for p in self.pre.values()]
        self.to(clip.device)  # draws above came from the CPU generator, so a seed gives the same experts anywhere
        self.tasks_seen, self.total_tasks = 0, 1

    def _hand_mask(self, weight: torch.Tensor, how: str, generator: torch.Generator) -> torch.Tensor:
        """A binary mask with a share τ of zeros: random, or keeping the largest |θ_pre|."""
        score = torch.rand(weight.shape, generator=generator) if how == "random" else weight.abs().float().cpu()
        keep = max(1, round((1 - self.sparsity) * weight.numel()))
        threshold = score.flatten().kthvalue(weight.numel() - keep + 1).values if keep < weight.numel() else -math.inf
        return (score >= threshold).float().to(weight.device)

    @property
    def tower(self) -> nn.Module:
        return self.clip.model.visual

    # -- task weights ------------------------------------------------------------------------------
    def features(self, params: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(functional_call(self.tower, params, (pixels.to(self.clip.device),)), dim=-1)

    def gates(self, support: torch.Tensor, labels: torch.Tensor, num_classes: int, training: bool):
        """(α (M,), router logits a (M,)) for one task; the router reads θ_pre prototypes."""
        with torch.no_grad():
            protos = prototypes(self.features(self.pre, support), labels, num_classes)
        logits = self.router(protos)
        temperature = gate_temperature(self.tasks_seen, self.total_tasks) if training else 0.5
        if training:
            gate = torch.distributions.RelaxedBernoulli(torch.tensor(temperature, device=logits.device), logits=logits).rsample()
        else:
            gate = torch.sigmoid(logits / temperature)
        return gate / (gate.sum() + 1e-8), logits

    def task_params(self, alpha: torch.Tensor | None, training: bool) -> dict[str, torch.Tensor]:
        """θ_i = θ_pre + merged mask ⊙ θ_δ (the merged mask depends on the mode)."""
        params = {}
        for i, name in enumerate(self.names):
            if self.mode == "none":
                update = torch.zeros_like(self.pre[name])
            elif self.mode == "dense":
                update = self.delta[i]
            elif self.mode == "learned":
                update = (hard_concrete(self.log_alpha[i], training) @ alpha) * self.delta[i]
            else:
                update = self.fixed_masks[i] * self.delta[i]
            params[name] = self.pre[name] + update
        return params

    def expert_density(self) -> torch.Tensor:
        """Expected share of non-zeros per expert over all masked entries: (M,)."""
        total = sum(la[..., 0].numel() for la in self.log_alpha)
        return sum(expected_density(la).flatten(0, -2).sum(0) for la in self.log_alpha) / total

    def expert_sparsity(self) -> torch.Tensor:
        """Measured share of exact zeros of each expert's test-time mask: (M,)."""
        with torch.no_grad():
            total = sum(la[..., 0].numel() for la in self.log_alpha)
            nonzero = sum((hard_concrete(la, False) > 0).flatten(0, -2).sum(0).float() for la in self.log_alpha)
            return (1 - nonzero / total).cpu()

    # -- meta-training --------------------------------------------------------------------------
    def task_loss(self, x_s, y_s, x_q, y_q, num_classes: int, inner_lr: float, teacher_lr: float,
                  teacher_steps: int, kd_weight: float, kd_temperature: float) -> torch.Tensor:
        """Meta-training loss of one task (notes §2.6), first order."""
        alpha, router_logits = self.gates(x_s, y_s, num_classes, True) if self.mode == "learned" else (None, None)
        theta = self.task_params(alpha, training=True)
        support_features = self.features(theta, x_s)
        protos = prototypes(support_features, y_s, num_classes)
        head = protos.detach().requires_grad_()
        inner_loss = F.cross_entropy(cosine_logits(support_features, head), y_s)
        grads = torch.autograd.grad(inner_loss, [*theta.values(), head], retain_graph=True)
        adapted = {k: v - inner_lr * g for (k, v), g in zip(theta.items(), grads)}
        adapted_head = protos - inner_lr * grads[-1]  # first-order: the head keeps its path to θ_i
        student = cosine_logits(self.features(adapted, x_q), adapted_head)
        teacher = self._dense_teacher(adapted, adapted_head, x_q, y_q, teacher_lr, teacher_steps)
        kd = F.kl_div(F.log_softmax(student / kd_temperature, -1), F.log_softmax(teacher / kd_temperature, -1),
                      log_target=True, reduction="batchmean") * kd_temperature**2
        loss = (1 - kd_weight) * F.cross_entropy(student, y_q) + kd_weight * kd
        if self.mode == "learned":
            # Lagrangian term: pushes each expert's expected density down while its λ is positive
            violation = self.expert_density() - (1 - self.sparsity)
            loss = loss + (self.lagrange * violation).sum() + 1e-4 * router_logits.pow(2).mean()
        return loss

    def _dense_teacher(self, adapted, head, x_q, y_q, lr, steps) -> torch.Tensor:
        """Query logits of a dense task teacher: ``steps`` SGD steps on the query set from θ_i'."""
        teacher = {k: v.detach().requires_grad_() for k, v in adapted.items()}
        head = head.detach()
        for _ in range(steps):
            loss = F.cross_entropy(cosine_logits(self.features(teacher, x_q), head), y_q)
            grads = torch.autograd.grad(loss, list(teacher.values()))
            teacher = {k: (v - lr * g).detach().requires_grad_() for (k, v), g in zip(teacher.items(), grads)}
        with torch.no_grad():
            return cosine_logits(self.features(teacher, x_q), head)

    def update_lagrange(self, lr: float) -> None:
        """Dual ascent: λ_m += lr · (density_m - (1 - τ)) while expert m violates its constraint, and
        λ_m = 0 once it is satisfied. (Letting λ decay slowly instead overshoots on a short run: the
        multiplier built up while the masks were too dense keeps closing them far past τ.)"""
        with torch.no_grad():
            violation = self.expert_density() - (1 - self.sparsity)
            self.lagrange.add_(lr * violation).masked_fill_(violation <= 0, 0.0)


def _episode_tensors(clip: Clip, episode: Episode):
    """Support pixels and labels, query pixels and labels (all on the model's device), class count."""
    tensors = (preprocess_images(clip, episode.support), torch.as_tensor(episode.support.labels),
               preprocess_images(clip, episode.query), torch.as_tensor(episode.query.labels))
    return (*(t.to(clip.device) for t in tensors), len(episode.classes))


def meta_train(clip: Clip, episodes: Sequence[Episode], masks: str = "learned", num_experts: int = 8,
               sparsity: float = 0.9, lr: float = 1e-2, mask_lr: float = 1e6, router_lr: float = 1e-3,
               lagrange_lr: float = 1.0, inner_lr: float = 1e-3, teacher_lr: float = 5e-3, teacher_steps: int = 1,
               kd_weight: float = 0.25, kd_temperature: float = 2.0, meta_batch: int = 4, seed: int = 0,
               progress: bool = True) -> SparseInterpolatedExperts:
    """Meta-train on ``episodes`` (notes §2.7): SGD with momentum on θ_δ (weight decay pulls it to
    θ_pre), plain SGD on the mask logits (clipped to norm 5, ``log α`` clamped to [ln 0.01, ln 100]),
    AdamW on the router (clipped to norm 1), dual ascent on λ; one update every ``meta_batch`` tasks.
    The mask LR is the official 1e6 ("large to encourage binary masks": the expected density is a mean
    over millions of entries); the others are larger than the official ones, since the embedded world
    meta-trains on hundreds of tasks, not 50,000.
    """
    torch.manual_seed(seed)
    experts = SparseInterpolatedExperts(clip, masks, num_experts, sparsity, seed)
    if masks == "none":
        return experts
    experts.total_tasks = len(episodes)
    delta_opt = torch.optim.SGD(experts.delta.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    mask_opt = torch.optim.SGD(experts.log_alpha.parameters(), lr=mask_lr) if masks == "learned" else None
    router_opt = torch.optim.AdamW(experts.router.parameters(), lr=router_lr, weight_decay=1e-2) if masks == "learned" else None
    for i, episode in enumerate(tqdm(episodes, desc=f"meta-training ({masks})", disable=not progress, leave=False)):
        x_s, y_s, x_q, y_q, n = _episode_tensors(clip, episode)
        loss = experts.task_loss(x_s, y_s, x_q, y_q, n, inner_lr, teacher_lr, teacher_steps, kd_weight, kd_temperature)
        (loss / meta_batch).backward()
        experts.tasks_seen += 1
        if (i + 1) % meta_batch == 0 or i + 1 == len(episodes):
            delta_opt.step()
            delta_opt.zero_grad(set_to_none=True)
            if masks == "learned":
                nn.utils.clip_grad_norm_(experts.log_alpha.parameters(), 5.0)
                nn.utils.clip_grad_norm_(experts.router.parameters(), 1.0)
                mask_opt.step()
                router_opt.step()
                mask_opt.zero_grad(set_to_none=True)
                router_opt.zero_grad(set_to_none=True)
                with torch.no_grad():
                    for la in experts.log_alpha:
                        la.clamp_(math.log(0.01), math.log(100))
                experts.update_lagrange(lagrange_lr)
    return experts


class SMAT(Method):
    """Test-time use of meta-trained experts: θ_i from the support set, then ProtoNet (notes §2.8).

    ``finetune`` ``"full"`` or ``"lora"`` takes ``steps`` AdamW steps on the support set from θ_i
    (cross-entropy of the cosine classifier on prototypes recomputed each step).
    """

    def __init__(self, clip: Clip, experts: SparseInterpolatedExperts, name: str | None = None,
                 finetune: str = "none", steps: int = 10, lr: float = 1e-4, lora_rank: int = 8, seed: int = 0):
        super().__init__(clip)
        if finetune not in FINETUNE_MODES:
            raise ValueError(f"unknown finetune {finetune!r}; allowed: {', '.join(FINETUNE_MODES)}")
        self.experts, self.finetune, self.steps, self.lr, self.lora_rank, self.seed = experts, finetune, steps, lr, lora_rank, seed
        self.name = name or f"{experts.mode}{'' if finetune == 'none' else ' +' + finetune}"
        self.params: dict[str, torch.Tensor] = {}
        self.alpha: torch.Tensor | None = None
        self.protos: torch.Tensor | None = None

    def fit(self, support: ImageDataset) -> "SMAT":
        self._remember(support)
        pixels = preprocess_images(self.clip, support).to(self.clip.device)
        labels = torch.as_tensor(support.labels, device=self.clip.device)
        with torch.no_grad():
            self.alpha = self.experts.gates(pixels, labels, support.num_classes, False)[0] if self.experts.mode == "learned" else None
            params = {k: v.detach() for k, v in self.experts.task_params(self.alpha, training=False).items()}
        if self.finetune != "none" and self.steps > 0:
            params = self._fine_tune(params, pixels, labels, support.num_classes)
        self.params = params
        with torch.no_grad():
            self.protos = prototypes(self.experts.features(params, pixels), labels, support.num_classes)
        return self

    def _fine_tune(self, params, pixels, labels, num_classes):
        torch.manual_seed(self.seed)
        if self.finetune == "full":
            trainable = {k: v.clone().requires_grad_() for k, v in params.items()}
            weights = lambda: trainable
            opt_params = list(trainable.values())
        else:  # LoRA on the query and value projections of every attention block
            lora = {}
            for k, v in params.items():
                if k.endswith("attn.in_proj_weight"):
                    dim = v.shape[1]
                    for part in ("q", "v"):
                        down = torch.randn(self.lora_rank, dim) / math.sqrt(dim)  # CPU draw: same on any device
                        lora[f"{k}:{part}"] = (nn.Parameter(down.to(v.device)),
                                               nn.Parameter(torch.zeros(dim, self.lora_rank, device=v.device)))

            def weights():
                out = dict(params)
                for k, v in params.items():
                    if k.endswith("attn.in_proj_weight"):
                        dim = v.shape[1]
                        (aq, bq), (av, bv) = lora[f"{k}:q"], lora[f"{k}:v"]
                        zero = torch.zeros(dim, dim, device=v.device)
                        out[k] = v + torch.cat([bq @ aq, zero, bv @ av])
                return out
            opt_params = [p for pair in lora.values() for p in pair]
        optimizer = torch.optim.AdamW(opt_params, lr=self.lr)
        for _ in range(self.steps):
            features = self.experts.features(weights(), pixels)
            loss = F.cross_entropy(cosine_logits(features, prototypes(features, labels, num_classes)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return {k: v.detach() for k, v in weights().items()}

    @torch.no_grad()
    def logits(self, images: Images, classnames: Sequence[str] | None = None) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            raise TypeError("SMAT changes the image tower: pass an ImageDataset, not cached features")
        if classnames is not None and list(classnames) != self.classnames:
            raise ValueError("SMAT's ProtoNet head scores the support set's classes only")
        return cosine_logits(self.experts.features(self.params, preprocess_images(self.clip, images)), self.protos).cpu()

    def trainable_parameters(self) -> int:
        e = self.experts
        return sum(p.numel() for p in e.parameters()) - (e.lagrange.numel() if hasattr(e, "lagrange") else 0)


def expert_usage(clip: Clip, experts: SparseInterpolatedExperts, episodes_by_domain: dict[str, list[Episode]]) -> "np.ndarray":
    """Mean gate α per (domain, expert): rows follow ``episodes_by_domain``'s order."""
    rows = []
    for episodes in episodes_by_domain.values():
        with torch.no_grad():
            gates = [experts.gates(*_episode_tensors(clip, ep)[:2], len(ep.classes), False)[0] for ep in episodes]
        rows.append(torch.stack(gates).mean(0).cpu().numpy())
    return np.stack(rows)


def specialisation(usage: "np.ndarray") -> float:
    """How much the router's choice depends on the dataset: the largest across-dataset spread (max - min)
    of any expert's mean gate in :func:`expert_usage`'s table."""
    return float((usage.max(axis=0) - usage.min(axis=0)).max())


def mask_overlap(experts: SparseInterpolatedExperts) -> "np.ndarray":
    """Jaccard overlap of the experts' test-time binary masks: (M, M)."""
    with torch.no_grad():
        binary = torch.cat([(hard_concrete(la, False) > 0).flatten(0, -2) for la in experts.log_alpha]).float()
    intersection = binary.T @ binary
    sizes = binary.sum(0)
    union = sizes[:, None] + sizes[None, :] - intersection
    return (intersection / union.clamp_min(1)).cpu().numpy()


VARIANTS = {  # label -> masks mode, in the order the notebook shows them
    "pretrained ProtoNet": "none",
    "dense meta-tuning": "dense",
    "random mask": "random",
    "magnitude mask": "magnitude",
    "SMAT": "learned",
}


def episodes_for(datasets: Sequence[str], split: str, n_way: int, shots: int, queries: int, count: int, seed: int) -> dict:
    """``count`` N-way K-shot episodes per dataset (its own sampler, so every variant sees the same ones)."""
    out = {}
    for i, name in enumerate(datasets):
        sampler = EpisodeSampler([load_dataset(name, split)], n_way, shots, queries, seed=seed * 1000 + i)
        out[name] = [sampler.sample() for _ in range(count)]
    return out


def evaluate_experts(clip: Clip, experts: SparseInterpolatedExperts, test_episodes: dict, label: str,
                     finetune: Sequence[str] = ("none",), steps: int = 10, lr: float = 1e-4) -> list[dict]:
    """Query accuracy per test episode, without and (optionally) with test-time fine-tuning."""
    rows = []
    for mode in finetune:
        for dataset, episodes in test_episodes.items():
            for t, ep in enumerate(episodes):
                method = SMAT(clip, experts, finetune=mode, steps=steps, lr=lr).fit(ep.support)
                rows.append({"variant": label, "finetune": mode, "dataset": dataset, "task": t,
                             "accuracy": evaluate(method, ep.query)})
    return rows


def compare_variants(clip: Clip, id_datasets: Sequence[str], ood_datasets: Sequence[str], n_way: int, shots: int,
                     train_tasks: int, test_tasks: int, sparsity: float, num_experts: int, seed: int,
                     finetune_steps: int = 10, finetune_lr: float = 1e-4, queries: int = 5,
                     finetuned_variants: Sequence[str] = ("pretrained ProtoNet", "dense meta-tuning", "SMAT"),
                     progress: bool = True, **meta_options: float | int
                     ) -> tuple["pd.DataFrame", dict[str, SparseInterpolatedExperts], list[Episode], dict[str, list[Episode]]]:
    """SMAT and its baselines, meta-trained on the same in-distribution episodes (train splits) and tested
    on the same episodes of every ID and OOD dataset (test splits): every variant without fine-tuning,
    ``finetuned_variants`` also with full fine-tuning (the paper's claim 1 compares those three).

    ``meta_options`` go to :func:`meta_train`. Returns ``(results, {label: experts}, train episodes,
    {dataset: test episodes})``.
    """
    unknown = sorted(set(finetuned_variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; allowed: {', '.join(VARIANTS)}")
    pool = [load_dataset(name, "train") for name in id_datasets]
    sampler = EpisodeSampler(pool, n_way, shots, queries, seed=seed)
    train_episodes = [sampler.sample() for _ in range(train_tasks)]
    test_episodes = episodes_for([*id_datasets, *ood_datasets], "test", n_way, shots, queries, test_tasks, seed)
    rows, trained = [], {}
    for label, mode in tqdm(VARIANTS.items(), desc="variants", disable=not progress):
        trained[label] = meta_train(clip, train_episodes, mode, num_experts, sparsity, seed=seed, progress=False, **meta_options)
        modes = ("none", "full") if label in finetuned_variants else ("none",)
        rows += evaluate_experts(clip, trained[label], test_episodes, label, modes, finetune_steps, finetune_lr)
    results = pd.DataFrame(rows)
    results["domain"] = ["ID" if d in id_datasets else "OOD" for d in results["dataset"]]
    return results, trained, train_episodes, test_episodes


def sparsity_tradeoff(clip: Clip, train_episodes: Sequence[Episode], test_episodes: dict, id_datasets: Sequence[str],
                      taus: Sequence[float], expert_counts: Sequence[int], seed: int,
                      already_trained: dict[tuple[float, int], SparseInterpolatedExperts] | None = None,
                      progress: bool = True, **meta_options: float | int) -> "pd.DataFrame":
    """ID and OOD accuracy (no fine-tuning) of SMAT over sparsity levels τ and expert counts M.

    ``already_trained`` maps ``(τ, M)`` to experts meta-trained on the same episodes (the notebook's main
    run), which are evaluated instead of trained again.
    """
    already_trained = already_trained or {}
    rows = []
    for tau, m in tqdm([(t, m) for t in taus for m in expert_counts], desc="tau x M", disable=not progress):
        experts = (already_trained[(tau, m)] if (tau, m) in already_trained
                   else meta_train(clip, train_episodes, "learned", m, tau, seed=seed, progress=False, **meta_options))
        for row in evaluate_experts(clip, experts, test_episodes, "SMAT"):
            rows.append({**row, "tau": tau, "experts": m, "domain": "ID" if row["dataset"] in id_datasets else "OOD"})
    return pd.DataFrame(rows)
