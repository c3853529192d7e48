"""Several processes, one result: the collectives a data-parallel loop needs, on torch.distributed.

A loop launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE`` and the rendezvous address) calls
:func:`setup` and splits its work in one of two ways; either way every rank then takes the same optimiser step
from the same gradients, so the weights, and everything computed from them, stay identical across ranks.

* **Tasks** (SMAT's meta-batches): each rank computes its share of a sum of task losses (:func:`shard`) and
  the gradients are *summed* over ranks (:func:`all_reduce_gradients`).
* **One batch** (full fine-tuning, MAMF's and FOMAML's task updates, pretraining): every rank draws the same
  whole batch, encodes its contiguous slice of it (:func:`local_slice`), gathers the features of the whole
  batch with their gradients (:func:`gather`, as open_clip's ``gather_with_grad``) and computes the *whole*
  loss, unchanged: in-batch losses (contrastive, distillation, a softmax over the batch's classes) see every
  image. The shared training loop then *averages* the gradients (:func:`average_gradients`): the gather's
  backward hands each slice the gradient of every rank's (identical) loss, ``world`` times the true one, and
  the parts every rank computes whole (the class prompts) carry the true gradient on each rank; the mean
  is the one-process gradient for both.

Launched without ``torchrun`` every helper is a no-op (rank 0 of 1, the whole batch as the slice), so the
single-process code path is unchanged. NCCL on CUDA, gloo on a CPU.
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


def rank_device(device: str) -> str:
    """This rank's device: ``cuda:<local rank>`` for ``"cuda"`` under ``torchrun`` (one GPU per process),
    else ``device`` as given."""
    if device == "cuda" and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', rank_and_world()[0])) % torch.cuda.device_count()}"
    return device


def local_slice(batch_size: int) -> slice:
    """This rank's contiguous share of a batch of ``batch_size`` (the first ranks take one more when it
    does not divide): concatenating the slices in rank order gives the batch back in its own order."""
    return _slice_of(*rank_and_world(), batch_size)


def gather(local: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The whole batch's rows from every rank's :func:`local_slice` of ``local``, in batch order, with
    gradients flowing back to each rank's own rows (summed over ranks, as open_clip's ``gather_with_grad``).
    Slices are padded to one size for the collective, then trimmed."""
    world = rank_and_world()[1]
    if world == 1:
        return local
    width = -(-batch_size // world)
    padded = torch.cat([local, local.new_zeros((width - len(local), *local.shape[1:]))]) if len(local) < width else local
    sizes = [piece.stop - piece.start for piece in (_slice_of(r, world, batch_size) for r in range(world))]
    return torch.cat([piece[:size] for piece, size in zip(_AllGather.apply(padded).split(width), sizes)])


class _AllGather(torch.autograd.Function):
    """All ranks' equal-sized tensors, concatenated; backward: the sum over ranks of the gradient of this
    rank's rows (an all-reduce of the whole gradient, then this rank's part)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        rank, world = rank_and_world()
        ctx.rank, ctx.world = rank, world
        pieces = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(pieces, tensor.contiguous())
        return torch.cat(pieces)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total.chunk(ctx.world)[ctx.rank]


def _slice_of(rank: int, world: int, batch_size: int) -> slice:
    base, extra = divmod(batch_size, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def average_(tensors: Iterable[torch.Tensor]) -> None:
    """Replace each tensor by its mean over ranks, in place (nothing outside a process group)."""
    world = rank_and_world()[1]
    if world == 1:
        return
    for tensor in tensors:
        dist.all_reduce(tensor)
        tensor.div_(world)


def _gradients(params: Iterable[torch.nn.Parameter]) -> list[torch.Tensor]:
    """Every trainable parameter's gradient, one left unset (a rank whose share did not reach it) set to zeros."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return [p.grad for p in params]


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Mean of every gradient over ranks (the one-batch split above)."""
    if rank_and_world()[1] > 1:
        average_(_gradients(params))


def all_reduce_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over ranks (the task split above)."""
    if rank_and_world()[1] > 1:
        for grad in _gradients(params):
            dist.all_reduce(grad)


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over ranks (a copy; ``value`` itself outside a process group)."""
    if rank_and_world()[1] == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total
