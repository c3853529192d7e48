"""Data-parallel training (fslib.distributed): 2 gloo processes on the CPU against 1 process.

SMAT's task-sharded meta-training has its own test in test_smat.py; here the one-batch split that full
fine-tuning, MAMF / FOMAML and pretraining share: each rank encodes its slice, the losses see the gathered
batch, the gradients are averaged."""
import copy
import socket
from pathlib import Path

import open_clip
import pytest
import torch

from fslib import distributed
from fslib.methods.clip_cite import make_variant
from fslib.features import preprocess_images
from fslib.methods.mamf import in_batch_loss, meta_train
from fslib.models import EMBEDDED_MODEL, load_clip, prompt_tokens, register_model_configs
from fslib.training import train
from fslib.world.pretrain import pretrain
from tests.conftest import make_dataset

PRETRAIN = dict(seed=0, steps=3, batch_size=6, lr=1e-3, weight_decay=0.1, warmup=1, bf16=False)


def _sgd_steps(clip) -> dict[str, torch.Tensor]:
    """Three SGD steps of MAMF's in-batch loss through the shared loop: unlike Adam, SGD's step is linear in
    the gradient, so a gradient off by the number of ranks shows."""
    model = copy.deepcopy(clip.model)
    data = make_dataset(3, 3)
    images, labels, tokens = preprocess_images(clip, data), torch.as_tensor(data.labels), prompt_tokens(clip, data)
    train(model.parameters(), lambda step: in_batch_loss(model, images, labels, tokens), 3, 0.05, optimizer="sgd",
          cosine=False, progress=False)
    return {k: v.detach() for k, v in model.state_dict().items()}


def _jobs(clip, out: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Each job's trained weights. 15 images at batch 8 make batches of 8 and 7, and 9 images over 2 ranks
    slices of 5 and 4: uneven slices too."""
    trained = {"sgd": _sgd_steps(clip)}
    cite = make_variant(clip, "CLIP-CITE", epochs=2, lr=1e-4, batch_size=8, seed=1).fit(make_dataset(3, 5))
    trained["CLIP-CITE"] = cite.finetuned
    for strategy in ("mamf", "fomaml"):
        model = meta_train(clip, make_dataset(4, 4), strategy, n_way=2, lr=1e-4, batch_size=5, seed=1, progress=False).model
        trained[strategy] = {k: v.detach() for k, v in model.state_dict().items()}
    pretrain(out=out, **PRETRAIN)
    trained["pretraining"] = torch.load(out) if out.exists() else {}
    return trained


def _on_rank(rank: int, world: int, port: int, folder: str) -> None:
    """One rank of a gloo process group, set up as torchrun would (environment variables)."""
    import os
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert distributed.setup("cpu") == (rank, world)
    torch.save(_jobs(load_clip(), Path(folder) / f"pretrain.{rank}.pt"), Path(folder) / f"rank.{rank}")
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[list[dict], dict, dict]:
    folder = tmp_path_factory.mktemp("ddp")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_on_rank, args=(2, port, str(folder)), nprocs=2)
    clip = load_clip()
    ranks = [torch.load(folder / f"rank.{r}") for r in range(2)]
    start = {k: v.detach() for k, v in clip.model.state_dict().items()}
    return ranks, _jobs(clip, folder / "pretrain.single.pt"), start


def test_slices_partition_the_batch_in_order():
    slices = [distributed._slice_of(rank, 3, 10) for rank in range(3)]
    assert [(s.start, s.stop) for s in slices] == [(0, 4), (4, 7), (7, 10)]
    assert distributed.local_slice(10) == slice(0, 10)  # one process: the whole batch
    x = torch.randn(5, 2)
    assert distributed.gather(x, 5) is x


def _gap_and_move(trained: dict, single: dict, start: dict) -> tuple[float, float]:
    """L2 distance of the 2-process weights from one process's, and how far one process moved them."""
    gap = moved = 0.0
    for name, value in single.items():
        if value.is_floating_point() and name in start:
            moved += (value.float() - start[name].float()).pow(2).sum().item()
            gap += (trained[name].float() - value.float()).pow(2).sum().item()
    return gap ** 0.5, moved ** 0.5


def test_two_processes_take_one_process_sgd_steps(runs):
    """The gathered loss and the averaged gradients are one process's, to float tolerance, on both ranks."""
    ranks, single, _ = runs
    for name, value in single["sgd"].items():
        torch.testing.assert_close(ranks[0]["sgd"][name], value, rtol=1e-4, atol=1e-6, msg=name)
        assert torch.equal(ranks[0]["sgd"][name], ranks[1]["sgd"][name]), f"{name} differs between ranks"


@pytest.mark.parametrize("job", ["CLIP-CITE", "mamf", "fomaml"])
def test_two_processes_train_like_one(runs, job):
    """Both ranks end with the same weights, and those are one process's up to float rounding. Adam turns
    rounding noise in near-zero gradients into full-size steps: one process on 1 thread and on 2 threads
    already ends 0.2-0.7% of the distance training moved the weights apart, so the bound is 3%."""
    ranks, single, start = runs
    for name in single[job]:
        assert torch.equal(ranks[0][job][name], ranks[1][job][name]), f"{job}: {name} differs between ranks"
    gap, moved = _gap_and_move(ranks[0][job], single[job], start)
    assert moved > 0 and gap < 3e-2 * moved, f"{job}: 2 processes end {gap:.2e} from 1 process (which moved {moved:.2e})"


def test_two_processes_pretrain_like_one(runs):
    """Pretraining from scratch: rank 0 writes the checkpoint, rank 1 nothing, and it is one process's
    checkpoint up to rounding (3% of the distance training moved the weights, as above)."""
    ranks, single, _ = runs
    assert ranks[0]["pretraining"] and not ranks[1]["pretraining"]
    register_model_configs()
    torch.manual_seed(PRETRAIN["seed"])
    start = {k: v.half() for k, v in open_clip.create_model(EMBEDDED_MODEL).state_dict().items()}
    gap, moved = _gap_and_move(ranks[0]["pretraining"], single["pretraining"], start)
    assert moved > 0 and gap < 3e-2 * moved, f"pretraining: 2 processes end {gap:.2e} from 1 process (which moved {moved:.2e})"
