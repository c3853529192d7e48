"""SMAT's speed path: where the experts live (Chen et al., ICML 2024; the departure for scale of
:mod:`fslib.methods.smat`'s docstring).

:class:`ExpertRegion` puts the experts on the last ``blocks`` residual blocks of the image tower (plus the
final LayerNorm and projection); the tokens entering them are computed once per image by the frozen trunk
and cached in this process, and only the expert blocks run per task. The last block is run for the class
token alone (the only token the pooled feature reads), with the attention's key and value projections and
its LayerNorm's affine folded into the query (:func:`class_token_attention`): the same numbers as the full
block at a fraction of the cost. :class:`TaskTensors` and :func:`stack_tasks` hold a meta-batch's episodes
side by side. ``tests/test_smat.py`` checks every shortcut against the whole tower.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from fslib import parallel
from fslib.data import ImageDataset
from fslib.features import memory_cache, pixel_batches, preprocess_images
from fslib.fewshot import Episode
from fslib.models import Clip
from fslib.training import autocast, precision


def _sub(params: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def class_token_attention(attn: nn.MultiheadAttention, params: dict[str, torch.Tensor], standardised: torch.Tensor,
                          scale: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """Multi-head self-attention output for token 0 only, (B, W), from tokens standardised by the block's
    LayerNorm, x̂ (B, T, W), and that LayerNorm's affine: the attention reads ``scale ⊙ x̂_t + shift``.

    The score of token t is ``q_h · (W_k,h (s ⊙ x̂_t + c) + b_k,h)``; every term but the first is the same
    for every t, so the softmax drops it, and ``q_h · W_k,h (s ⊙ x̂_t) = ((W_k,hᵀ q_h) ⊙ s) · x̂_t``. Likewise,
    as the weights a_t sum to one, ``Σ_t a_t (W_v (s ⊙ x̂_t + c) + b_v) = W_v (s ⊙ Σ_t a_t x̂_t + c) + b_v``.
    So no key or value is projected and no token but the first is normalised with the weights: O(T·W) per
    head instead of O(T·W²), and the per-token work reads x̂ alone, which the weights do not change.
    """
    heads, width = attn.num_heads, standardised.shape[-1]
    head_dim = width // heads
    w_q, w_k, w_v = params["in_proj_weight"].chunk(3)
    bias = params.get("in_proj_bias")
    b_q, b_v = (bias.chunk(3)[0], bias.chunk(3)[2]) if bias is not None else (0.0, 0.0)
    shift = 0.0 if shift is None else shift
    first = standardised[:, 0] * scale + shift
    query = (first @ w_q.T + b_q).view(-1, heads, head_dim) / math.sqrt(head_dim)
    key_query = torch.einsum("bhd,hdw->bhw", query, w_k.view(heads, head_dim, width)) * scale
    weights = torch.softmax(torch.einsum("bhw,btw->bht", key_query, standardised), dim=-1)
    context = torch.einsum("bht,btw->bhw", weights, standardised) * scale + shift
    values = torch.einsum("bhw,hdw->bhd", context, w_v.view(heads, head_dim, width))
    values = values + (b_v.view(heads, head_dim) if bias is not None else 0.0)
    out = values.reshape(-1, width) @ params["out_proj.weight"].T
    return out + params["out_proj.bias"] if "out_proj.bias" in params else out


_REGION_INPUTS = memory_cache()  # this process's cached trunk outputs, shared by every region (bounded by bytes)


class ExpertRegion:
    """The part of the image tower that carries the experts, run from cached inputs.

    ``blocks=k`` puts the experts on the last k residual blocks, the final LayerNorm and the projection;
    its inputs are the tokens entering block ``L - k``, computed once per image by the frozen trunk.
    ``blocks=None`` puts them on the whole tower; its inputs are the preprocessed images.
    """

    def __init__(self, clip: Clip, blocks: int | None = 1):
        visual = clip.model.visual
        resblocks = visual.transformer.resblocks
        if blocks is not None and not 1 <= blocks <= len(resblocks):
            raise ValueError(f"blocks={blocks} must be None (whole tower) or in 1..{len(resblocks)}")
        self.clip, self.visual, self.blocks = clip, visual, blocks
        self.start = 0 if blocks is None else len(resblocks) - blocks
        prefixes = ("",) if blocks is None else (*(f"transformer.resblocks.{i}." for i in range(self.start, len(resblocks))),
                                                 "ln_post.", "proj")
        self.names = [n for n, _ in visual.named_parameters() if n.startswith(prefixes)]
        if blocks is not None and getattr(visual, "attn_pool", None) is not None:
            raise ValueError("this tower pools with attention: use blocks=None (experts on the whole tower)")
        last = resblocks[-1]
        # the class-token shortcut needs a plain pre-LN block and class-token pooling (open_clip's ViTs)
        self.class_token_only = (isinstance(last.attn, nn.MultiheadAttention) and isinstance(last.ls_1, nn.Identity)
                                 and isinstance(last.ln_1, nn.LayerNorm) and last.ln_1.elementwise_affine
                                 and isinstance(last.ls_2, nn.Identity) and not hasattr(last, "ln_attn")
                                 and getattr(visual, "pool_type", "tok") == "tok")
        self.shapes = [p.shape for n, p in visual.named_parameters() if n in self.names]
        self.weights_key = clip.weights_fingerprint()  # the tower is frozen: hash its weights once

    def pretrained(self) -> torch.Tensor:
        """θ_pre of the region as one flat vector (N,): the experts, θ_δ and the masks live in this layout, so a
        task's weights take a handful of vector operations instead of a few per tensor."""
        return torch.cat([p.detach().flatten() for n, p in self.visual.named_parameters() if n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views of a flat vector (or of its rows, for an (N, M) table), in the tower's shapes."""
        chunks = flat.split([math.prod(shape) for shape in self.shapes])
        return {n: c.view(*shape, *flat.shape[1:]) for n, c, shape in zip(self.names, chunks, self.shapes)}

    @torch.no_grad()
    def inputs(self, dataset: ImageDataset) -> torch.Tensor:
        """What enters the region for every image of ``dataset``, on the CPU: its pixels when the region is the
        whole tower, else the frozen trunk's tokens, computed once per image (:meth:`_per_image`)."""
        if self.blocks is None:
            return preprocess_images(self.clip, dataset)
        return self._per_image("tokens", dataset, self._trunk_tokens)

    @torch.no_grad()
    def pretrained_features(self, dataset: ImageDataset) -> torch.Tensor:
        """Features of the frozen tower (θ_pre) for every image of ``dataset``, on the CPU; computed once per
        image (the router's input and the pretrained teacher read them)."""
        def encode(part: ImageDataset, batch: int = 256) -> torch.Tensor:
            # in batches of exactly ``batch`` (the last padded with its first image): a small batch takes other matrix
            # kernels, which round differently in the last bit, and a cached image must not depend on its companions
            pre, out = self.pretrained(), []
            for x in self.inputs(part).split(batch):
                padded = torch.cat([x, x[:1].expand(batch - len(x), *x.shape[1:])])
                out.append(self.features(pre, padded)[:len(x)].cpu())
            return torch.cat(out)

        return self._per_image("features", dataset, encode)

    def warm(self, datasets: Sequence[ImageDataset], chunk: int = 256) -> None:
        """Compute the trunk's tokens and θ_pre features of every image of ``datasets`` not cached yet, in
        chunks side by side in :func:`fslib.parallel.map_units`' processes, and cache them in this process
        (before it forks workers that would otherwise each compute them)."""
        wanted: dict[int, tuple[ImageDataset, list[np.ndarray]]] = {}  # full dataset -> the rows asked for there
        for dataset in datasets:
            root, rows = dataset.in_full_dataset()
            wanted.setdefault(id(root), (root, []))[1].append(rows)
        parts = []
        for root, rows in wanted.values():
            todo = self._missing("features", root, np.concatenate(rows))  # distinct and sorted
            parts += [root.subset(todo[i:i + chunk]) for i in range(0, len(todo), chunk)]
        computed = parallel.map_units(lambda part: (self.inputs(part), self.pretrained_features(part)), parts,
                                      desc=f"trunk cache ({sum(map(len, parts))} images)")
        for part, (tokens, features) in zip(parts, computed):
            self._store("tokens", part, tokens)
            self._store("features", part, features)

    def _trunk_tokens(self, dataset: ImageDataset, batch_size: int = 256) -> torch.Tensor:
        """The tokens entering block ``start`` for every image of ``dataset``, through the frozen trunk."""
        chunks = []
        with torch.random.fork_rng(devices=[]):  # a DataLoader draws its seed from torch's generator: a cache miss
            batches = list(pixel_batches(self.clip, dataset, batch_size))  # must not move a meta-training's draws
        for batch in batches:
            with autocast(self.clip.device):  # the trunk is an encoding like any other: the kit's precision
                x = self.visual._embeds(batch.to(self.clip.device))
                for block in self.visual.transformer.resblocks[:self.start]:
                    x = self._run_block(block, None, x)
            chunks.append(x.float().cpu())
        return torch.cat(chunks)

    def _per_image(self, kind: str, dataset: ImageDataset, compute: Callable[[ImageDataset], torch.Tensor]) -> torch.Tensor:
        """Rows of a per-image table (``kind``) of the full dataset behind ``dataset``, calling ``compute`` on the
        images not cached yet only: an episode's test split is sampled, so most of its images are never encoded."""
        root, rows = dataset.in_full_dataset()
        todo = self._missing(kind, root, rows)
        if len(todo):
            part = root.subset(todo)
            self._store(kind, part, compute(part))
        cached = _REGION_INPUTS.get(self._table_key(kind, root))
        if cached is None:  # more than the memory cache's budget: not kept
            return compute(dataset)
        position, table = cached
        return table[position[torch.as_tensor(rows)]]

    def _missing(self, kind: str, root: ImageDataset, rows: np.ndarray) -> np.ndarray:
        """The distinct ``rows`` of ``root`` not in its ``kind`` table yet."""
        cached = _REGION_INPUTS.get(self._table_key(kind, root))
        if cached is not None:
            rows = rows[(cached[0][torch.as_tensor(rows)] < 0).numpy()]
        return np.unique(rows)

    def _store(self, kind: str, part: ImageDataset, values: torch.Tensor) -> None:
        """Add the rows of ``part`` (a subset of a full dataset) not cached yet to that dataset's ``kind`` table:
        ``(position, rows)``, where ``position`` maps an image of the full dataset to its row (-1: none yet)."""
        root, rows = part.in_full_dataset()
        key = self._table_key(kind, root)
        position, table = _REGION_INPUTS.get(key) or (torch.full((len(root),), -1), values[:0])
        fresh = position[torch.as_tensor(rows)] < 0
        rows, values, position = torch.as_tensor(rows)[fresh], values[fresh], position.clone()
        position[rows] = torch.arange(len(table), len(table) + len(rows))
        _REGION_INPUTS[key] = (position, torch.cat([table, values]))

    def _table_key(self, kind: str, root: ImageDataset) -> str:
        """What a table depends on: its kind, the trunk's weights, the images, where it stops, the precision."""
        return f"{kind}:{self.weights_key}:{root.fingerprint()}:{self.start}:{precision(self.clip.device)}"

    def _run_block(self, block: nn.Module, params: dict[str, torch.Tensor] | None, x: torch.Tensor) -> torch.Tensor:
        """One open_clip residual block on batch-first tokens (transposing for sequence-first models)."""
        seq_first = not getattr(self.visual.transformer, "batch_first", True)
        x = x.transpose(0, 1) if seq_first else x
        x = block(x) if params is None else functional_call(block, params, (x,))
        return x.transpose(0, 1) if seq_first else x

    def features(self, params: dict[str, torch.Tensor] | torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features (B, D) of the region at weights ``params``: named tensors or a flat vector."""
        params = self.unflatten(params) if isinstance(params, torch.Tensor) else params
        inputs = inputs.to(self.clip.device)
        if self.blocks is None:
            return F.normalize(functional_call(self.visual, params, (inputs,)), dim=-1)
        resblocks = self.visual.transformer.resblocks
        x = inputs
        last = len(resblocks) - 1
        for i in range(self.start, last if self.class_token_only else last + 1):
            x = self._run_block(resblocks[i], _sub(params, f"transformer.resblocks.{i}."), x)
        ln_post = lambda t: functional_call(self.visual.ln_post, _sub(params, "ln_post."), (t,))
        if self.class_token_only:
            block, p = resblocks[last], _sub(params, f"transformer.resblocks.{last}.")
            standardised = F.layer_norm(x, x.shape[-1:], eps=block.ln_1.eps)
            cls = x[:, 0] + class_token_attention(block.attn, _sub(p, "attn."), standardised, p["ln_1.weight"], p.get("ln_1.bias"))
            pooled = ln_post(cls + functional_call(block.mlp, _sub(p, "mlp."), (functional_call(block.ln_2, _sub(p, "ln_2."), (cls,)),)))
        elif getattr(self.visual, "final_ln_after_pool", False):  # open_clip's VisionTransformer._pool, without attention pooling
            pooled = ln_post(self.visual._global_pool(x)[0])
        else:
            pooled = self.visual._global_pool(ln_post(x))[0]
        return F.normalize(pooled @ params["proj"] if "proj" in params else pooled, dim=-1)


    def batched_features(self, thetas: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """:meth:`features` of B tasks side by side, each at its own weights: (B, N) and (B, n, ...) -> (B, n, D).

        Where torch has no batched rule for an operation (the fused attention of whole blocks on a CPU), vmap
        runs it task by task, as the unbatched code would; its warning says no more than that."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented the batching rule")
            return torch.func.vmap(self.features)(thetas, inputs)

    def lora_weights(self, params: torch.Tensor, rank: int) -> tuple[Callable[[], torch.Tensor], list[nn.Parameter]]:
        """LoRA factors on the query and value projections of every attention block in the flat layout, for E
        weight vectors side by side (``params``: (E, N)): ``(weights, factors)``, where ``weights()`` is the flat
        (E, N) weights with ``B A`` added (A drawn on the CPU, so the same on any device, and the same for every
        set, as one fit after another would draw it; B zero) and ``factors`` the trainable A and B."""
        sets, sizes = len(params), [math.prod(shape) for shape in self.shapes]
        lora = {}  # position of an in_proj_weight in the flat layout -> ((A_q, B_q), (A_v, B_v)), each (E, ...)
        for i, (name, shape) in enumerate(zip(self.names, self.shapes)):
            if name.endswith("attn.in_proj_weight"):
                dim = shape[1]
                lora[i] = tuple((nn.Parameter((torch.randn(rank, dim) / math.sqrt(dim)).to(params.device)
                                              .expand(sets, -1, -1).clone()),
                                 nn.Parameter(params.new_zeros(sets, dim, rank))) for _ in ("q", "v"))

        def weights() -> torch.Tensor:
            pieces = list(params.split(sizes, dim=1))
            for i, ((a_q, b_q), (a_v, b_v)) in lora.items():
                zeros = params.new_zeros(sets, b_q.shape[1], b_q.shape[1])
                pieces[i] = pieces[i] + torch.cat([b_q @ a_q, zeros, b_v @ a_v], dim=1).flatten(1)
            return torch.cat(pieces, dim=1)
        return weights, [p for pair in lora.values() for factors in pair for p in factors]


@dataclass
class TaskTensors:
    """One episode's cached region inputs, labels and θ_pre features, on the model's device."""

    support: torch.Tensor
    support_labels: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor
    num_classes: int
    support_pre: torch.Tensor  # θ_pre features, for the router and the pretrained teacher
    query_pre: torch.Tensor


def stack_tasks(tasks: Sequence[TaskTensors]) -> TaskTensors:
    """B tasks of the same shape (ways, shots, queries) as one, each field with a leading task dimension."""
    shapes = {(t.num_classes, t.support.shape, t.query.shape) for t in tasks}
    if len(shapes) != 1:
        raise ValueError(f"tasks run side by side must share their ways, shots and queries; got (ways, support shape, "
                         f"query shape) {sorted(shapes, key=str)}")
    stacked = {field: torch.stack([getattr(t, field) for t in tasks]) for field in
               ("support", "support_labels", "query", "query_labels", "support_pre", "query_pre")}
    return TaskTensors(num_classes=tasks[0].num_classes, **stacked)


def task_tensors(region: ExpertRegion, episode: Episode) -> TaskTensors:
    device = region.clip.device
    labels = lambda part: torch.as_tensor(part.labels, device=device)
    return TaskTensors(region.inputs(episode.support).to(device), labels(episode.support),
                       region.inputs(episode.query).to(device), labels(episode.query), len(episode.classes),
                       region.pretrained_features(episode.support).to(device), region.pretrained_features(episode.query).to(device))
