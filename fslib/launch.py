"""Launchable training: ``python -m fslib.launch {clip-cite,mamf,smat} [options]``, on one process or under
``torchrun --nproc_per_node N -m fslib.launch ...`` data-parallel on N (one GPU each, or CPU processes;
:mod:`fslib.distributed`). Rank 0 saves the result and prints a one-line JSON summary.

* ``clip-cite``: fine-tune CLIP-CITE (or another of its variants) on a dataset's base classes; saves the
  fitted method (:func:`~fslib.methods.load_method` reloads it) and prints base and new accuracy.
* ``mamf``: meta-train MAMF, FOMAML or fine-tuning on a dataset; saves the meta-trained CLIP weights, a
  checkpoint for ``-p pretrained`` (the tasks stay in order; every batch is split over the ranks).
* ``smat``: meta-train SMAT's experts and router on the ID domains' base classes; saves the method.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fslib import distributed
from fslib.data import load_dataset
from fslib.evaluation import evaluate
from fslib.fewshot import base_to_new_sets, few_shot
from fslib.methods import create_method, save_method
from fslib.methods.clip_cite import VARIANTS
from fslib.methods.mamf import STRATEGIES, mamf_tasks, meta_train
from fslib.models import Clip, load_clip
from fslib.protocols import make_benchmark


def clip_cite(args: argparse.Namespace, clip: Clip) -> dict:
    base_train, base_test, new_test = base_to_new_sets(load_dataset(args.dataset, "train"), load_dataset(args.dataset, "test"))
    method = create_method(args.variant, clip, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                           grad_checkpointing=args.grad_checkpointing).fit(few_shot(base_train, args.shots, args.seed))
    if distributed.is_main():
        save_method(method, args.out)
    return {"fit_seconds": round(method.fit_seconds, 1), "base": round(evaluate(method, base_test), 2),
            "new": round(evaluate(method, new_test, new_test.classnames), 2)}


def mamf(args: argparse.Namespace, clip: Clip) -> dict:
    train_set = load_dataset(args.dataset, "train")
    if args.train_per_class:
        train_set = few_shot(train_set, args.train_per_class, args.seed)
    started = time.perf_counter()
    trained = meta_train(clip, train_set, args.strategy, args.n_way, epochs=args.epochs, lr=args.lr,
                         batch_size=args.batch_size, seed=args.seed)
    if distributed.is_main():
        torch.save(trained.model.state_dict(), args.out)
    return {"strategy": args.strategy, "tasks": len(mamf_tasks(train_set, args.n_way, args.seed)),
            "seconds": round(time.perf_counter() - started, 1)}


def smat(args: argparse.Namespace, clip: Clip) -> dict:
    bench = make_benchmark(args.datasets.split(","), [], args.n_way, args.shots, args.queries, args.tasks, 0, 0, args.novel,
                           args.seed)
    meta = {"masks": "learned", "num_experts": args.experts, "sparsity": args.sparsity,
            "blocks": None if args.blocks == "all" else int(args.blocks)}
    method = create_method("SMAT", clip, seed=args.seed, meta=meta).meta_train(bench.train)
    experts = method.experts
    if distributed.is_main():
        save_method(method, args.out)
    return {"tasks": experts.tasks_seen, "seconds": round(experts.seconds, 1),
            "realised_sparsity": round(1 - float(experts.density().mean()), 3), "final_loss": experts.losses[-1]}


def parser() -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)  # what every entry point takes
    shared.add_argument("--model", default="fslib-tiny-vit", help="an open_clip architecture")
    shared.add_argument("--pretrained", default="embedded", help="an open_clip tag, a checkpoint path, or 'embedded'")
    shared.add_argument("--seed", type=int, default=1)
    shared.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process under torchrun)")
    shared.add_argument("--out", type=Path, help="where rank 0 saves the result (default: <command>.pt)")
    main = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = main.add_subparsers(dest="command", required=True)
    cite = commands.add_parser("clip-cite", parents=[shared], help="fine-tune CLIP-CITE on base classes")
    cite.add_argument("--dataset", default="shapes_sketch", help="a kit dataset, a torchvision name or an image folder")
    cite.add_argument("--variant", default="CLIP-CITE", choices=list(VARIANTS))
    cite.add_argument("--shots", type=int, default=16)
    cite.add_argument("--epochs", type=int, default=20)
    cite.add_argument("--lr", type=float, default=1e-5)
    cite.add_argument("--grad-checkpointing", action="store_true")
    cite.add_argument("--batch-size", type=int, default=32, help="the global batch, split over the ranks")
    meta = commands.add_parser("mamf", parents=[shared], help="meta-train MAMF, FOMAML or fine-tuning")
    meta.add_argument("--dataset", default="textures", help="a kit dataset, a torchvision name or an image folder")
    meta.add_argument("--strategy", default="mamf", choices=STRATEGIES)
    meta.add_argument("--n-way", type=int, default=5)
    meta.add_argument("--train-per-class", type=int, default=8, help="training images per class (0: all)")
    meta.add_argument("--epochs", type=int, default=1)
    meta.add_argument("--lr", type=float, default=1e-5)
    meta.add_argument("--batch-size", type=int, default=32, help="the global batch, split over the ranks")
    experts = commands.add_parser("smat", parents=[shared], help="meta-train SMAT's experts and router")
    experts.add_argument("--datasets", default="shapes,colors,textures", help="meta-training domains (comma-separated)")
    experts.add_argument("--tasks", type=int, default=500)
    experts.add_argument("--n-way", type=int, default=5)
    experts.add_argument("--shots", type=int, default=2)
    experts.add_argument("--queries", type=int, default=3)
    experts.add_argument("--novel", type=int, default=5, help="classes per domain held out of meta-training")
    experts.add_argument("--experts", type=int, default=8)
    experts.add_argument("--sparsity", type=float, default=0.9)
    experts.add_argument("--blocks", default="1", help="blocks of the image tower that carry experts, or 'all'")
    return main


COMMANDS = {"clip-cite": clip_cite, "mamf": mamf, "smat": smat}


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.out = args.out or Path(f"{args.command}.pt")
    _, world = distributed.setup(args.device)
    clip = load_clip(args.model, args.pretrained, distributed.rank_device(args.device))
    summary = COMMANDS[args.command](args, clip)
    if distributed.is_main():
        print(json.dumps({"command": args.command, "ranks": world, **summary}))


if __name__ == "__main__":
    main()
