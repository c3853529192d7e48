"""One small training loop shared by every method: optimiser, cosine schedule, precision, progress bar.

Methods express a training step as a function ``step_loss(step) -> loss`` (drawing their own batch),
and :func:`train` does the rest. Keeping the loop this small is deliberate: what differs between
papers is the loss, and that lives in each method's module.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from fslib import distributed
from fslib.progress import tqdm

OPTIMIZERS = ("adamw", "adam", "sgd", "adadelta")


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) in one call."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(params: Iterable[torch.nn.Parameter], name: str = "adamw", lr: float = 1e-3,
                   weight_decay: float = 0.0, momentum: float = 0.9) -> torch.optim.Optimizer:
    """One of ``OPTIMIZERS`` over the parameters that require gradients.

    Adam, AdamW and SGD use torch's fused kernels (one kernel for all parameters instead of a loop of
    small ops): on a CPU, a full-model Adam step of the tiny CLIP drops from ~30 ms to ~4 ms.
    """
    params = [p for p in params if p.requires_grad]
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)
    raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base LR, then cosine decay to zero at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_precision = "auto"


def set_precision(name: str) -> None:
    """The one precision setting every loop that trains, encodes or scores honours: ``fp32``; ``bf16``
    autocast; ``fp16`` autocast with a gradient scaler; ``auto`` (the default, and every notebook's) is
    ``$FSLIB_PRECISION`` where that is set, else bf16 on a CUDA device and fp32 on a CPU. fp32 is the
    canonical precision on a CPU so that a notebook's numbers agree across CPUs within float noise (bf16
    moved verdicts at their margins); bf16 is opt-in there, and pays only on a CPU that multiplies it
    natively (:func:`native_bf16`: 1.75-1.8x faster than fp32 on a 2-core AVX512-BF16 Xeon, 6-8x slower
    than fp32 emulated on an AVX2-only AMD EPYC)."""
    global _precision
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; allowed: {', '.join(PRECISIONS)}")
    _precision = name


def current_precision() -> str:
    """The setting made by :func:`set_precision` (``auto`` unresolved), for a worker process to make it too."""
    return _precision


@contextlib.contextmanager
def precision_scope(name: str) -> Iterator[None]:
    """:func:`set_precision` for the duration of a ``with`` block, then the previous setting again."""
    global _precision
    previous = _precision
    set_precision(name)
    try:
        yield
    finally:
        _precision = previous


def precision(device: torch.device | str) -> str:
    """The precision in force on ``device``: ``auto`` resolved through ``$FSLIB_PRECISION``, then as bf16 on
    CUDA and fp32 elsewhere (see :func:`set_precision`)."""
    name = _precision if _precision != "auto" else os.environ.get("FSLIB_PRECISION", "auto")
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r} (from FSLIB_PRECISION); allowed: {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return name


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: any CUDA device, or a CPU with AVX512-BF16 or
    AMX tiles. (oneDNN also runs bf16 on older AVX-512 CPUs, by emulation, which is no faster than fp32.)"""
    kind = torch.device(device).type
    if kind == "cuda":
        return True
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return kind == "cpu" and any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast to the :func:`precision` in force on ``device`` (a no-op for fp32).

    Under bf16 on a CPU, attention runs on torch's math backend: its fused flash-attention backward for bf16
    is 3.6x slower than for fp32 there (measured on the tiny CLIP's 65-token ViT), which ate most of bf16's
    gain when training; with the math backend a forward + backward step runs 1.75x faster than in fp32."""
    name = precision(device)
    if name == "fp32":
        return contextlib.nullcontext()
    kind = torch.device(device).type
    scope = contextlib.ExitStack()
    scope.enter_context(torch.autocast(kind, dtype=torch.bfloat16 if name == "bf16" else torch.float16))
    if kind == "cpu" and name == "bf16":
        scope.enter_context(torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH))
    return scope


def grad_scaler(device: torch.device | str) -> torch.amp.GradScaler:
    """A gradient scaler that is active only under fp16 (bf16 and fp32 need none): use it as
    ``scaler.scale(loss).backward(); scaler.step(opt); scaler.update()`` on every path alike."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision(device) == "fp16")


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """Stop gradients into ``module``'s own weights for the duration (restoring the flags after)."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled index batches over ``range(n)``, reshuffled every epoch."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            yield order[start:start + batch_size]


def train(params: Iterable[torch.nn.Parameter], step_loss: Callable[[int], torch.Tensor], steps: int,
          lr: float, optimizer: str = "adamw", weight_decay: float = 0.0, warmup_steps: int = 0,
          cosine: bool = True, device: torch.device | str = "cpu", desc: str = "training",
          progress: bool = True) -> list[float]:
    """Run ``steps`` optimiser steps on ``step_loss(step)``; return the losses.

    The learning rate follows :func:`cosine_schedule`, or stays constant with ``cosine=False``. Under
    ``torchrun`` the gradients are averaged over ranks before each step (:mod:`fslib.distributed`: a
    ``step_loss`` that encodes its rank's slice and gathers the batch trains data-parallel; one that
    computes the whole batch on every rank trains as one process would).
    """
    params = list(params)
    opt = make_optimizer(params, optimizer, lr, weight_decay)
    schedule = cosine_schedule(opt, steps, warmup_steps) if cosine else torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler, losses = grad_scaler(device), []
    for step in (bar := tqdm(range(steps), desc=desc, disable=not (progress and distributed.is_main()), leave=False)):
        opt.zero_grad(set_to_none=True)  # before the forward pass: last step's gradients do not sit beside its activations
        with autocast(device):
            loss = step_loss(step)
        scaler.scale(loss).backward()
        distributed.average_gradients(params)
        scaler.step(opt)
        scaler.update()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses
