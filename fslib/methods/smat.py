"""SMAT: Sparse MetA-Tuning with sparse interpolated experts (Chen et al., ICML 2024, arXiv 2403.08477).

The pretrained image tower ``θ_pre`` stays frozen. SMAT learns one shared delta ``θ_δ`` (same shapes,
init 0) and ``M`` expert masks ``z_m`` over it; a router reads a task's support set and mixes the
experts into task weights (paper overview figure; notes §2.1, §2.5)

    θ_i = θ_pre + Σ_m α_im (z_m ⊙ θ_δ),

applied functionally (``torch.func.functional_call``), so the frozen tower is never modified.

* Masks (notes §2.3): hard-concrete gates (Louizos et al., 2018; β = 2/3, ζ = 1.1, γ = -0.1) on
  per-element ``log α``. As in the official code the training masks are near-deterministic (its
  uniform noise is 0.5 ± 1e-6, i.e. none) and the mask learning rate is 1e6, which drives ``log α``
  to its clamp bounds, so the masks end up binary.
* Sparsity constraint (notes §2.6): each expert must keep a share of zeros ≥ τ. Its Lagrange
  multiplier ``λ_m`` rises by dual ascent on the *measured* density (the share of entries open at test,
  weighted by the expert's mean gate α_m) and is reset to 0 once the constraint holds; the gradient
  reaches ``log α`` through the expected-L0 surrogate ``σ(log α - β ln(-γ/ζ))``, weighted by λ_m α_m.
  Every τ < 1 is feasible, since closed entries count as exact zeros.
* Router (notes §2.4): support-set class prototypes from the frozen tower, plus 4 learnable skill
  tokens, through one transformer block (spectral norm on its linear layers); output token 0 times
  learnable expert keys gives logits ``a``; gates are relaxed Bernoulli with an annealed temperature
  (5 → 0.5), normalised to sum to one.
* Meta-training step (notes §2.6), first order: one inner SGD step on the support set (ProtoNet
  head, cosine × 10), query cross-entropy at the adapted weights, plus distillation (T = 2) from a
  dense task teacher (one SGD step on the query set from the adapted weights) and, as in the official
  code, from the pretrained tower's ProtoNet predictions (an anchor towards θ_pre).
* Test (notes §2.8): (a) no fine-tuning, a cosine nearest-prototype classifier on ``θ_i``;
  (b) a few AdamW steps on the support set from ``θ_i``, all expert weights or LoRA on attention q/v.

**Departure for scale: a cached frozen trunk** (:mod:`fslib.methods.smat_region`, the speed path):
the experts sit on the last ``blocks`` residual blocks of the image tower, whose inputs are computed once
per image, and a meta-batch's tasks run side by side (``torch.func.vmap``), each at its own weights.
``blocks=None`` keeps the whole tower (the paper's setting, for GPU users).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from fslib import distributed, parallel
from fslib.data import ImageDataset
from fslib.fewshot import Episode
from fslib.methods.base import Images, Method
from fslib.methods.registry import register_method
from fslib.methods.smat_region import ExpertRegion, TaskTensors, stack_tasks, task_tensors
from fslib.models import Clip
from fslib.progress import tqdm
from fslib.training import autocast, grad_scaler, make_optimizer

MASK_MODES = ("learned", "dense", "random", "magnitude", "none")
ROUTED_MODES = ("learned", "random", "magnitude")  # the modes with M experts and a router
FINETUNE_MODES = ("none", "full", "lora")
COSINE_SCALE = 10.0  # PMF / SMAT's cosine classifier scale
BETA, ZETA, GAMMA = 2 / 3, 1.1, -0.1  # hard-concrete constants (Louizos et al., 2018)
LOG_ALPHA_RANGE = (math.log(0.01), math.log(100))  # the official clamp
OPEN_LOG_ALPHA = math.log(-GAMMA / ZETA)  # an entry is open at test above this logit (see is_open)


def hard_concrete(log_alpha: torch.Tensor, training: bool) -> torch.Tensor:
    """Stretched, clamped hard-concrete gate in [0, 1]: ``σ(log α / β)`` in training (the official
    near-deterministic sample, u = 0.5) and ``σ(log α)`` at test, then ``clamp(s (ζ - γ) + γ, 0, 1)``."""
    s = torch.sigmoid(log_alpha / BETA) if training else torch.sigmoid(log_alpha)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def is_open(log_alpha: torch.Tensor) -> torch.Tensor:
    """Where the test-time gate is non-zero, ``hard_concrete(log α, False) > 0``, without the sigmoid:
    σ(log α)(ζ - γ) + γ > 0 exactly when log α > log(-γ/ζ) = -ln 11 ≈ -2.398 (the constraint counts these)."""
    return log_alpha > OPEN_LOG_ALPHA


def expected_density(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z ≠ 0) per element under the relaxation: the expected-L0 surrogate, ``σ(log α - β ln(-γ/ζ))``."""
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


def prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class means of (normalised) features: (..., C, D) from (..., n, D) and labels (..., n)."""
    one_hot = F.one_hot(labels, num_classes).to(features.dtype)
    return (one_hot.transpose(-1, -2) @ features) / one_hot.sum(-2)[..., None]


def cosine_logits(features: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """PMF's cosine classifier: (..., n, C) from features (..., n, D) and prototypes (..., C, D)."""
    return COSINE_SCALE * F.normalize(features, dim=-1) @ F.normalize(protos, dim=-1).transpose(-1, -2)


def task_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each task's mean cross-entropy over its images, (B,), from logits (B, n, C) and labels (B, n)."""
    return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(1)


# -- router and experts ----------------------------------------------------------------------------
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
    """θ_pre (frozen, shared with the Clip), θ_δ, expert masks, router and Lagrange multipliers.

    ``masks``: ``"learned"`` (SMAT), ``"random"`` / ``"magnitude"`` (fixed binary expert masks in the same
    router + M-expert framework, each keeping a share ``density`` of entries: random draws per expert, or the
    largest |θ_pre| for all), ``"dense"`` (``θ_pre + θ_δ``, no router) and ``"none"`` (θ_pre alone).
    """

    def __init__(self, clip: Clip, masks: str = "learned", num_experts: int = 8, sparsity: float = 0.9,
                 seed: int = 0, blocks: int | None = 1, density: float | None = None, region: ExpertRegion | None = None):
        super().__init__()
        if masks not in MASK_MODES:
            raise ValueError(f"unknown masks {masks!r}; allowed: {', '.join(MASK_MODES)}")
        if not 0 <= sparsity < 1:
            raise ValueError(f"sparsity={sparsity} must lie in [0, 1)")
        if masks in ("random", "magnitude") and not (density and 0 < density <= 1):
            raise ValueError(f"masks={masks!r} needs a density in (0, 1], got {density!r}")
        self.clip = clip  # a dataclass, not a module: the frozen tower is not a parameter of this module
        self.region = region or ExpertRegion(clip, blocks)
        self.mode, self.sparsity = masks, sparsity
        self.num_experts = num_experts if masks in ROUTED_MODES else 1
        self.pre = self.region.pretrained()
        self._test_masks: tuple[tuple[int, int], torch.Tensor] | None = None  # (log α's version, masks): see masks
        generator = torch.Generator().manual_seed(seed)
        self.delta = nn.Parameter(torch.zeros_like(self.pre))
        if masks == "learned":
            # official init: log α ~ N(0, 0.5²), nearly all entries open; the constraint closes them
            self.log_alpha = nn.Parameter(torch.randn(len(self.pre), self.num_experts, generator=generator) * 0.5)
        elif masks in ("random", "magnitude"):
            self.register_buffer("fixed_masks", self._hand_masks(masks, density, generator))
        if self.routed:
            with torch.random.fork_rng():  # the router's initialisation follows the seed, whatever ran before
                torch.manual_seed(seed)
                self.router = Router(clip.model.text_projection.shape[1], self.num_experts)
        self.register_buffer("lagrange", torch.zeros(self.num_experts))
        self.to(clip.device)  # draws above came from the CPU generator, so a seed gives the same experts anywhere
        self.eval()  # meta_train switches to training mode (spectral norm's power iteration) and back
        self.tasks_seen, self.total_tasks, self.seconds = 0, 1, 0.0
        self.history: list[dict] = []
        self.losses: list[float] = []  # the meta-training loss of every update (summed over ranks)
        self._init_args = (masks, num_experts, sparsity, seed, blocks, density)

    def __reduce__(self):
        """Pickled as its constructor's arguments and its state (a spectral-norm parametrisation pickles no other
        way): how trained experts come back from :mod:`fslib.parallel`'s workers."""
        record = {key: getattr(self, key) for key in ("tasks_seen", "total_tasks", "seconds", "history", "losses")}
        return parallel.rebuilt, (type(self), (self.clip, *self._init_args), {"region": self.region}, self.state_dict(),
                                  record, self.training)

    @property
    def routed(self) -> bool:
        return self.mode in ROUTED_MODES

    def _hand_masks(self, how: str, density: float, generator: torch.Generator) -> torch.Tensor:
        """(N, M) binary masks whose union keeps a share ``density`` of every tensor: independent random masks
        of density 1 - (1 - density)^(1/M) per expert, or the largest |θ_pre| (the same mask for every expert)."""
        per_expert = 1 - (1 - density) ** (1 / self.num_experts) if how == "random" else density
        masks = []
        for weight in self.region.unflatten(self.pre.cpu()).values():
            score = weight.abs().float().flatten()
            keep = max(1, round(per_expert * score.numel()))
            if how == "random":
                masks.append(torch.rand(score.numel(), self.num_experts, generator=generator).argsort(0).argsort(0) < keep)
            else:
                top = torch.zeros(score.numel(), dtype=torch.bool)
                top[score.topk(keep).indices] = True
                masks.append(top[:, None].expand(-1, self.num_experts))
        return torch.cat(masks).float()

    def masks(self, training: bool) -> torch.Tensor:
        """Every expert's mask, (N, M). The test-time masks (without gradient: they only build a task's weights
        at test) are kept until ``log α`` changes, since every test task reads them."""
        if self.mode != "learned":
            return self.fixed_masks
        if training:
            return hard_concrete(self.log_alpha, True)
        version = (self.log_alpha.data_ptr(), self.log_alpha._version)  # an in-place update bumps the version
        if self._test_masks is None or self._test_masks[0] != version:
            with torch.no_grad():
                self._test_masks = (version, hard_concrete(self.log_alpha, False))
        return self._test_masks[1]

    # -- task weights ------------------------------------------------------------------------------
    def features(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        return self.region.features(params, inputs)

    def gates(self, support_pre: torch.Tensor, labels: torch.Tensor, num_classes: int, training: bool):
        """(α (M,), router logits a (M,)) for one task from its support set's θ_pre features."""
        logits = self.router(prototypes(support_pre, labels, num_classes))
        temperature = gate_temperature(self.tasks_seen, self.total_tasks) if training else 0.5
        if training:
            gate = torch.distributions.RelaxedBernoulli(torch.tensor(temperature, device=logits.device), logits=logits).rsample()
        else:
            gate = torch.sigmoid(logits / temperature)
        return gate / (gate.sum() + 1e-8), logits

    def task_params(self, alpha: torch.Tensor | None, training: bool = False) -> torch.Tensor:
        """θ_i = θ_pre + (Σ_m α_m z_m) ⊙ θ_δ, flat (N,) for one task's α (M,), or (E, N) for E tasks' (E, M), with
        the test-time masks or, ``training``, the training ones (θ_pre + θ_δ for dense meta-tuning)."""
        if self.mode == "none":
            return self.pre
        if self.mode == "dense":
            return self.pre + self.delta
        return self.pre + (alpha @ self.masks(training).T) * self.delta

    def density(self, merged: bool = False) -> torch.Tensor:
        """Share of entries open at test, per expert (M,), or of the merged mask (the experts' union)."""
        with torch.no_grad():
            if self.mode in ("none", "dense"):
                return torch.ones(1)
            open_ = is_open(self.log_alpha) if self.mode == "learned" else self.fixed_masks > 0
            return (open_.any(-1) if merged else open_).float().mean(0).cpu()

    def expected_density(self) -> torch.Tensor:
        """The expected-L0 surrogate per expert over all masked entries: (M,)."""
        return expected_density(self.log_alpha).mean(0)

    # -- meta-training --------------------------------------------------------------------------
    def meta_batch_loss(self, tasks: Sequence[TaskTensors], inner_lr: float, teacher_lr: float, kd_weight: float,
                        kd_temperature: float, pretrained_teacher: bool) -> torch.Tensor:
        """Mean meta-training loss of a meta-batch of tasks (notes §2.6). The training masks are computed once
        (they change only at an update) and every task's weights in one product: Θ = θ_pre + (A Zᵀ) ⊙ θ_δ; the
        tasks then run side by side (:meth:`tasks_loss`).

        Under several processes this rank returns its share of the sum (:func:`fslib.distributed.shard`); the
        router's gates are drawn for the whole batch on every rank, so the random stream and the gates are
        those of one process, and the router penalty is counted on rank 0 only."""
        mine = distributed.shard(tasks)
        router_penalty = 0.0
        if self.routed:
            gates = [self.gates(t.support_pre, t.support_labels, t.num_classes, True) for t in tasks]
            alphas = torch.stack([alpha for alpha, _ in gates])[mine]
            thetas = self.task_params(alphas, training=True)
            if distributed.is_main():
                router_penalty = 1e-4 * torch.stack([logits.pow(2).mean() for _, logits in gates]).sum()
        else:
            thetas = self.task_params(None).expand(len(mine), -1)  # one set of weights, every task's copy
        loss = self.tasks_loss(stack_tasks([tasks[i] for i in mine]), thetas, inner_lr, teacher_lr, kd_weight,
                               kd_temperature, pretrained_teacher).sum() if mine else self.delta.new_zeros(())
        return (loss + router_penalty) / len(tasks)

    def tasks_loss(self, tasks: TaskTensors, thetas: torch.Tensor, inner_lr: float, teacher_lr: float,
                   kd_weight: float, kd_temperature: float, pretrained_teacher: bool) -> torch.Tensor:
        """Meta-training loss of each of B stacked tasks (:func:`stack_tasks`) at its weights θ_i, (B,) (notes
        §2.6), first order. The tasks share no weights, so the gradient of their summed loss with respect to
        the (B, N) weights holds each task's own gradient in its row."""
        x_s, y_s, x_q, y_q, num_classes = tasks.support, tasks.support_labels, tasks.query, tasks.query_labels, tasks.num_classes
        support_features = self.region.batched_features(thetas, x_s)
        protos = prototypes(support_features, y_s, num_classes)
        head = protos.detach().requires_grad_()
        inner_loss = task_cross_entropy(cosine_logits(support_features, head), y_s).sum()
        grad_thetas, grad_head = torch.autograd.grad(inner_loss, [thetas, head], retain_graph=True)
        adapted = thetas - inner_lr * grad_thetas
        adapted_head = protos - inner_lr * grad_head  # first-order: the head keeps its path to θ_i
        student = cosine_logits(self.region.batched_features(adapted, x_q), adapted_head)
        loss = (1 - kd_weight) * task_cross_entropy(student, y_q)
        if kd_weight > 0:
            teachers = [self._dense_teacher(adapted, adapted_head, x_q, y_q, teacher_lr)]
            if pretrained_teacher:
                teachers.append(cosine_logits(tasks.query_pre, prototypes(tasks.support_pre, y_s, num_classes)))
            log_student = F.log_softmax(student / kd_temperature, -1)
            loss = loss + kd_weight * kd_temperature**2 / 2 * sum(  # KL per task, averaged over its queries
                F.kl_div(log_student, F.log_softmax(t / kd_temperature, -1), log_target=True, reduction="none").sum((1, 2))
                / y_q.shape[1] for t in teachers)
        return loss

    def _dense_teacher(self, adapted, head, x_q, y_q, lr) -> torch.Tensor:
        """Query logits of each task's dense teacher: one SGD step on its query set from θ_i' (the official count)."""
        teacher = adapted.detach().requires_grad_()
        head = head.detach()
        loss = task_cross_entropy(cosine_logits(self.region.batched_features(teacher, x_q), head), y_q).sum()
        (grad,) = torch.autograd.grad(loss, [teacher])
        with torch.no_grad():
            return cosine_logits(self.region.batched_features(teacher - lr * grad, x_q), head)

    def sparsity_penalty(self) -> torch.Tensor:
        """Σ_m λ_m (E[L0]_m - (1 - τ)): its gradient reaches ``log α`` only (λ is a constant here)."""
        return (self.lagrange * (self.expected_density() - (1 - self.sparsity))).sum()

    def update_lagrange(self, lr: float, density: torch.Tensor) -> None:
        """Dual ascent on the measured constraint: λ_m += lr · (density_m - (1 - τ)) while expert m has more
        entries open at test than 1 - τ allows, and λ_m = 0 once it has no more (the official reset).

        The official code also weights both this step and the penalty by the expert's gate α_m, so an expert
        the router seldom picks closes slowly; over 50,000 tasks every expert still reaches τ, over a few
        hundred it would not, so here every expert's constraint is enforced at the same pace. ``density`` is
        :meth:`density` now (the caller has it from :meth:`settle_masks`)."""
        violation = density.to(self.lagrange.device) - (1 - self.sparsity)
        self.lagrange.add_(lr * violation).masked_fill_(violation <= 0, 0.0)

    @torch.no_grad()
    def settle_masks(self, before: torch.Tensor, before_density: torch.Tensor, tolerance: float = 0.005) -> torch.Tensor:
        """Take back part of a mask update that closed more entries than τ asks for.

        More zeros are feasible, but the notebook reads τ as the sparsity the test runs at, and at the
        official mask learning rate one update can close thousands of entries at once. So for every expert
        that was at or above 1 - τ before the update and is below it (by more than ``tolerance``) after, the
        update is scaled by the largest t in [0, 1] (bisection) that keeps its density at 1 - τ. Returns the
        experts' densities after settling.

        ``old + t · step`` is monotone in t (float rounding included), so an entry open, or closed, at both
        t = 0 and t = 1 is so at every t: the bisection probes only the entries that cross, a few thousand of
        the column's N, and counts the rest once."""
        target = 1 - self.sparsity
        after = self.density()
        overshot = torch.nonzero((before_density >= target) & (after < target - tolerance)).flatten().tolist()
        for m in overshot:
            old = before[:, m]
            step = self.log_alpha[:, m] - old
            open_before, open_after = is_open(old), is_open(old + 1.0 * step)
            crossing = torch.nonzero(open_before != open_after).flatten()
            needed = target * len(old) - int(torch.count_nonzero(open_before & open_after))
            old_crossing, step_crossing = old[crossing], step[crossing]
            keep, drop = 0.0, 1.0
            for _ in range(12):
                t = (keep + drop) / 2
                if int(torch.count_nonzero(is_open(old_crossing + t * step_crossing))) >= needed:
                    keep = t
                else:
                    drop = t
            self.log_alpha[:, m] = old + keep * step
            after[m] = is_open(self.log_alpha[:, m]).float().mean().cpu()  # the only column that changed
        return after


Monitor = Callable[[SparseInterpolatedExperts], dict]


def meta_train(clip: Clip, episodes: Sequence[Episode], masks: str = "learned", num_experts: int = 8,
               sparsity: float = 0.9, lr: float = 1e-2, mask_lr: float = 1e6, router_lr: float = 1e-3,
               lagrange_lr: float = 2.5e-2, inner_lr: float = 1e-3, teacher_lr: float = 5e-3, kd_weight: float = 0.25,
               kd_temperature: float = 2.0, pretrained_teacher: bool = True, meta_batch: int = 4, seed: int = 0,
               blocks: int | None = 1, density: float | None = None, region: ExpertRegion | None = None,
               monitor: Monitor | None = None, monitor_every: int = 100, progress: bool = True) -> SparseInterpolatedExperts:
    """Meta-train on ``episodes`` (notes §2.7): SGD with momentum on θ_δ (weight decay pulls it to θ_pre),
    SGD at the official 1e6 on the mask logits (clipped to norm 5, ``log α`` clamped to [ln 0.01, ln 100]),
    AdamW on the router (clipped to norm 1), dual ascent on λ; one update every ``meta_batch`` tasks.
    The θ_δ, router and λ learning rates are larger than the official ones, since the embedded world
    meta-trains on hundreds of tasks, not 50,000.

    Under ``torchrun`` (:mod:`fslib.distributed`) each rank computes its share of every meta-batch's tasks
    and the gradients are summed over ranks before each update, so θ_δ, the masks, λ and the router stay
    identical on every rank and match one process's up to float rounding (``experts.losses``: the loss of
    every update, summed over ranks). ``python -m fslib.launch smat`` is the launchable entry point.

    ``monitor(experts)`` is called every ``monitor_every`` tasks (and at 0); its dicts, with ``tasks``
    added, are kept in ``experts.history`` (learning curves). ``experts.seconds`` is the training wall
    time without the monitor's.
    """
    torch.manual_seed(seed)
    experts = SparseInterpolatedExperts(clip, masks, num_experts, sparsity, seed, blocks, density, region)
    if masks == "none":
        return experts

    def record() -> None:
        if monitor:
            started = time.perf_counter()
            experts.eval()
            experts.history.append({"tasks": experts.tasks_seen, **monitor(experts)})
            experts.train()
            experts.seconds -= time.perf_counter() - started

    experts.seconds -= time.perf_counter()
    record()
    experts.train()
    experts.total_tasks = len(episodes)
    delta_opt = make_optimizer([experts.delta], "sgd", lr, weight_decay=1e-4, momentum=0.9)
    mask_opt = make_optimizer([experts.log_alpha], "sgd", mask_lr, momentum=0.0) if masks == "learned" else None
    router_opt = make_optimizer(experts.router.parameters(), "adamw", router_lr, weight_decay=1e-2) if experts.routed else None
    region = experts.region
    density = experts.density() if masks == "learned" else None  # carried from update to update
    batches = [episodes[i:i + meta_batch] for i in range(0, len(episodes), meta_batch)]
    scaler = grad_scaler(clip.device)  # active under fp16 only; unscaled before the clipping below
    for batch in tqdm(batches, desc=f"meta-training ({masks})", disable=not (progress and distributed.is_main()), leave=False):
        with autocast(clip.device):
            loss = experts.meta_batch_loss([task_tensors(region, episode) for episode in batch], inner_lr, teacher_lr,
                                           kd_weight, kd_temperature, pretrained_teacher) * len(batch) / meta_batch
        experts.tasks_seen += len(batch)
        if masks == "learned" and distributed.is_main():  # counted once over ranks
            loss = loss + experts.sparsity_penalty()
        if loss.requires_grad:  # a rank whose share of a short last batch is empty only joins the all-reduce
            scaler.scale(loss).backward()
        distributed.all_reduce_gradients(experts.parameters())  # every rank steps from the whole batch's gradient
        experts.losses.append(float(distributed.all_reduce_sum(loss.detach())))
        scaler.step(delta_opt)
        delta_opt.zero_grad(set_to_none=True)
        if experts.routed:
            scaler.unscale_(router_opt)
            nn.utils.clip_grad_norm_(experts.router.parameters(), 1.0)
            scaler.step(router_opt)
            router_opt.zero_grad(set_to_none=True)
        if masks == "learned":
            scaler.unscale_(mask_opt)
            nn.utils.clip_grad_norm_([experts.log_alpha], 5.0)
            before = experts.log_alpha.detach().clone()
            scaler.step(mask_opt)
            mask_opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                experts.log_alpha.clamp_(*LOG_ALPHA_RANGE)
                density = experts.settle_masks(before, density)
                experts.update_lagrange(lagrange_lr, density)
        scaler.update()
        if (experts.tasks_seen // monitor_every) > ((experts.tasks_seen - len(batch)) // monitor_every):
            record()
    experts.seconds += time.perf_counter()
    return experts.eval()


class SMAT(Method):
    """Test-time use of meta-trained experts: θ_i from the support set, then ProtoNet (notes §2.8).

    ``finetune`` ``"full"`` or ``"lora"`` takes ``steps`` AdamW steps on the support set from θ_i
    (cross-entropy of the cosine classifier on prototypes recomputed each step); ``lr = 0`` means no
    fine-tuning (the official learning-rate grid includes it).
    """

    scores_unseen_classes = False  # a ProtoNet head: the support set's classes only
    needs_pixels = True
    meta_trains = True

    def __init__(self, clip: Clip, experts: SparseInterpolatedExperts | None = None, name: str | None = None,
                 finetune: str = "none", steps: int = 10, lr: float = 1e-4, lora_rank: int = 8, seed: int = 0,
                 meta: dict | None = None):
        super().__init__(clip)
        if finetune not in FINETUNE_MODES:
            raise ValueError(f"unknown finetune {finetune!r}; allowed: {', '.join(FINETUNE_MODES)}")
        self.meta = dict(meta or {})  # meta_train's options for :meth:`meta_train` (masks, num_experts, ...)
        if experts is None:  # untrained until meta_train
            options = {key: self.meta[key] for key in ("masks", "num_experts", "sparsity", "blocks", "density") if key in self.meta}
            experts = SparseInterpolatedExperts(clip, seed=seed, **options)
        self.experts, self.finetune, self.steps, self.lr, self.lora_rank, self.seed = experts, finetune, steps, lr, lora_rank, seed
        self.name = name or f"{experts.mode}{'' if finetune == 'none' else ' +' + finetune}"
        self.register_buffer("params", None)  # θ_i, flat (N,), after fit
        self.register_buffer("protos", None)

    def meta_train(self, episodes: Sequence[Episode]) -> "SMAT":
        """Meta-train the experts and router on ``episodes`` (:func:`meta_train`, with ``meta``'s options)."""
        self.experts = meta_train(self.clip, episodes, seed=self.seed, progress=False, **self.meta)
        return self

    def fit(self, support: ImageDataset) -> "SMAT":
        self._remember(support)
        region, device = self.experts.region, self.clip.device
        labels = torch.as_tensor(support.labels, device=device)
        params, protos = adapt_to_tasks(self.experts, region.inputs(support).to(device)[None], labels[None],
                                        region.pretrained_features(support).to(device)[None], support.num_classes,
                                        self.finetune, self.steps, self.lr, self.lora_rank, self.seed)
        self.params, self.protos = params[0], protos[0]
        return self

    @torch.no_grad()
    def logits(self, images: Images, classnames: Sequence[str] | None = None) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            raise TypeError("SMAT changes the image tower: pass an ImageDataset, not cached features")
        if classnames is not None and list(classnames) != self.classnames:
            raise ValueError("SMAT's ProtoNet head scores the support set's classes only")
        return cosine_logits(self.experts.features(self.params, self.experts.region.inputs(images)), self.protos).cpu()



register_method("SMAT", SMAT, paper="Chen et al., ICML 2024", name="SMAT", meta={"masks": "learned", "num_experts": 4})


def adapt_to_tasks(experts: SparseInterpolatedExperts, inputs: torch.Tensor, labels: torch.Tensor, support_pre: torch.Tensor,
                   num_classes: int, finetune: str = "none", steps: int = 10, lr: float = 1e-4, lora_rank: int = 8,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-time weights (E, N) and ProtoNet prototypes (E, C, D) of E support sets side by side (notes §2.8):
    region inputs (E, S, ...), labels (E, S) and θ_pre features (E, S, D). Each set gets θ_i from its router
    gates and, for ``finetune`` ``"full"`` or ``"lora"``, ``steps`` AdamW steps on its own cross-entropy from
    θ_i (``lr = 0``: none). AdamW acts element by element and the sets share no weights, so stepping the
    stacked weights on the summed loss steps each set as if it were alone (:class:`SMAT` fits one, E = 1)."""
    with torch.no_grad():
        if experts.routed:
            alphas = torch.stack([experts.gates(pre, y, num_classes, False)[0] for pre, y in zip(support_pre, labels)])
            params = experts.task_params(alphas)
        else:
            params = experts.task_params(None).expand(len(inputs), -1)
    if finetune != "none" and steps > 0 and lr > 0:
        params = _fine_tune(experts, params, inputs, labels, num_classes, finetune, steps, lr, lora_rank, seed)
    with torch.no_grad():
        return params, prototypes(experts.region.batched_features(params, inputs), labels, num_classes)


def _fine_tune(experts: SparseInterpolatedExperts, params: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor,
               num_classes: int, finetune: str, steps: int, lr: float, lora_rank: int, seed: int) -> torch.Tensor:
    """:func:`adapt_to_tasks`' AdamW steps: on all of each set's weights, or on LoRA factors of every attention
    block's query and value projections (the same initial draw for every set, as one fit after another would get)."""
    torch.manual_seed(seed)
    if finetune == "full":
        trainable = params.clone().requires_grad_()
        weights = lambda: trainable
        opt_params = [trainable]
    else:  # W_q + B_q A_q and W_v + B_v A_v in every block (A random, B zero: LoRA starts at θ_i)
        weights, opt_params = experts.region.lora_weights(params, lora_rank)
    optimizer = make_optimizer(opt_params, "adamw", lr, weight_decay=0.01)  # torch's AdamW default decay
    scaler = grad_scaler(experts.clip.device)  # fp16 only: an overflow in one set skips the step for all of them
    for _ in range(steps):
        with autocast(experts.clip.device):
            features = experts.region.batched_features(weights(), inputs)
            loss = task_cross_entropy(cosine_logits(features, prototypes(features, labels, num_classes)), labels).sum()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return weights().detach()
