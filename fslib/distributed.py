"""Several processes, one result: the collectives a data-parallel loop needs, on torch.distributed.

A loop launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE`` and the rendezvous address) calls
:func:`setup`, gives each rank its share of the work (:func:`shard`), and after its backward pass sums the
gradients over ranks (:func:`all_reduce_gradients`): every rank then takes the same optimiser step from the
same gradients, so the weights, and everything computed from them, stay identical across ranks. Launched
without ``torchrun`` every helper is a no-op (rank 0 of 1), so the single-process code path is unchanged.
NCCL on CUDA, gloo on a CPU.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def setup(device: torch.device | str = "cpu") -> tuple[int, int]:
    """Join the process group ``torchrun`` describes, if any; ``(rank, world size)``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    return rank_and_world()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process logs, shows progress and saves (rank 0)."""
    return rank_and_world()[0] == 0


def shard(items: Sequence[T]) -> list[int]:
    """The positions in ``items`` this rank handles: every ``world``-th, starting at its rank."""
    rank, world = rank_and_world()
    return list(range(rank, len(items), world))


def all_reduce_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over ranks (a rank whose share left a gradient unset adds zeros)."""
    if rank_and_world()[1] == 1:
        return
    for p in params:
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over ranks (a copy; ``value`` itself outside a process group)."""
    if rank_and_world()[1] == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total
