import os
from multiprocessing.reduction import ForkingPickler

import pandas as pd
import pytest
import torch

from fslib import parallel


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_units_in_workers_equal_units_in_one_process(monkeypatch, method):
    offset = 10  # a closure: forked workers inherit it, spawned ones get it through cloudpickle
    monkeypatch.setenv("FSLIB_START_METHOD", method)

    def unit(seed: int) -> tuple[int, int, list[float]]:
        torch.manual_seed(seed)
        return seed + offset, os.getpid(), torch.rand(3).tolist()

    monkeypatch.setenv("FSLIB_PROCESSES", "1")
    alone = parallel.map_units(unit, [3, 1, 2, 5])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a parent that ran a parallel region before forking (a notebook alone, JupyterLab)
    torch.ones(256, 256) @ torch.ones(256, 256)
    torch.set_num_threads(threads)
    monkeypatch.setenv("FSLIB_PROCESSES", "2")
    forked = parallel.map_units(unit, [3, 1, 2, 5])
    assert [(a, r) for a, _, r in forked] == [(a, r) for a, _, r in alone]
    assert {pid for _, pid, _ in alone} == {os.getpid()}
    assert os.getpid() not in {pid for _, pid, _ in forked}  # really ran elsewhere


class Big:
    def __init__(self):
        self.weights = torch.arange(5.0)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_shared_objects_come_back_as_the_parents_own(monkeypatch, method):
    model, other = Big(), Big()
    parallel.share(model)
    monkeypatch.setenv("FSLIB_START_METHOD", method)
    monkeypatch.setenv("FSLIB_PROCESSES", "2")
    back = parallel.map_units(lambda i: {"model": model, "other": other, "i": i}, [0, 1])
    assert all(r["model"] is model for r in back)          # by reference
    assert all(r["other"] is not other for r in back)      # not shared: by value
    assert torch.equal(back[0]["other"].weights, other.weights)


def test_a_spawned_worker_runs_at_the_parent_s_precision(monkeypatch):
    from fslib import training
    monkeypatch.setenv("FSLIB_START_METHOD", "spawn")
    monkeypatch.setenv("FSLIB_PROCESSES", "2")
    monkeypatch.delenv("FSLIB_PRECISION")
    with training.precision_scope("bf16"):
        assert parallel.map_units(lambda i: training.precision("cpu"), [0, 1]) == ["bf16", "bf16"]


def test_an_unknown_start_method_is_named(monkeypatch):
    monkeypatch.setenv("FSLIB_START_METHOD", "forkserverish")
    with pytest.raises(ValueError, match="FSLIB_START_METHOD='forkserverish' is not available here; allowed: fork, spawn"):
        parallel.start_method()


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_worker_count_is_named(monkeypatch, value):
    monkeypatch.setenv("FSLIB_PROCESSES", value)
    with pytest.raises(ValueError, match=f"FSLIB_PROCESSES='{value}'"):
        parallel.processes()


def test_trained_experts_pickle_through_their_state_dict(random_clip):
    from fslib.methods.smat import SparseInterpolatedExperts

    experts = SparseInterpolatedExperts(random_clip, "learned", num_experts=2, sparsity=0.5, seed=3)
    with torch.no_grad():
        experts.delta.add_(0.01)
    experts.tasks_seen, experts.history = 7, [{"tasks": 0, "ID": 50.0}]
    parallel.share(random_clip, experts.region)
    back = ForkingPickler.loads(ForkingPickler.dumps(experts))
    assert back.clip is random_clip and back.region is experts.region
    assert back.tasks_seen == 7 and back.history == experts.history and not back.training
    for (name, a), (_, b) in zip(experts.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_shared_drivers_in_worker_processes_equal_one_process(tmp_path, random_clip, one_and_two_processes, monkeypatch,
                                                             method):
    """protocols.base_to_new, few_shot_sweep and select_on_validation hand their units to map_units: two
    one-thread processes, forked or spawned, give one process's rows, in the same order."""
    monkeypatch.setenv("FSLIB_START_METHOD", method)
    import numpy as np
    from PIL import Image

    from fslib.data import load_dataset
    from fslib.protocols import base_to_new, few_shot_sweep, select_on_validation
    from fslib.methods import LinearProbe, ZeroShot
    from fslib.methods.llu import LLU

    rng = np.random.default_rng(0)
    for c in ("cat", "dog", "fox", "owl"):
        (tmp_path / "pets" / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "pets" / c / f"{i}.png")
    path = str(tmp_path / "pets")
    factories = {"zero-shot": lambda seed: ZeroShot(random_clip), "linear probe": lambda seed: LinearProbe(random_clip),
                 "LLU": lambda seed: LLU(random_clip, steps=5, views=2, seed=seed)}
    runs = one_and_two_processes(lambda: (
        base_to_new(factories, [path], 2, [1, 2, 3], progress=False).drop(columns=["fit_seconds", "peak_mb"]),
        few_shot_sweep({"LLU": factories["LLU"]}, [path], [1, 2], [1, 2], progress=False).drop(columns=["fit_seconds", "peak_mb"]),
        select_on_validation(lambda steps: LLU(random_clip, steps=steps, views=2, seed=1), [1, 3, 5],
                             load_dataset(path, "train"), load_dataset(path, "test"))[1]))
    for one, two in zip(runs["1"], runs["2"]):
        pd.testing.assert_frame_equal(one, two)
    assert runs["1"][0][["seed", "method"]].drop_duplicates().values.tolist() == [
        [seed, label] for seed in (1, 2, 3) for label in factories]  # the loops' order: dataset, seed, method


def test_apex_and_mamf_drivers_in_forked_processes_equal_one_process(random_clip, one_and_two_processes):
    """02's base-to-new study (units: level x prompt family) and 01's compare_strategies (units: dataset x
    seed x arm x lr, zero-shot apart) give one process's rows, in the loops' order, from two one-thread processes."""
    from fslib.studies import apex, mamf

    def both_drivers() -> tuple:
        families = {f: (lambda seed, f=f: apex.make_family(random_clip, f, epochs=1, lr=0.1, seed=seed))
                    for f in ("zero-shot", "VPT+TA")}
        prompts = apex.base_to_new(families, {"colors": "colors"}, 1, [1, 2], alphas=[0.5], progress=False,
                                   test_per_class=2)
        settings = {"MAMF": [(1e-4, 0), (1e-4, 1), (1e-3, 1)], "fine-tuning (official)": [(1e-4, 1)]}
        strategies = mamf.compare_strategies(random_clip, ["colors"], [2, 3], 1, 2, [1, 2], settings,
                                             train_per_class=2, queries=2, progress=False)
        return (*prompts[:2], strategies)

    runs = one_and_two_processes(both_drivers)
    timings = ["fit_seconds", "peak_mb"]  # measured, so they differ between runs
    for one, two in zip(runs["1"], runs["2"]):
        assert len(one) > 0
        pd.testing.assert_frame_equal(one.drop(columns=timings, errors="ignore"), two.drop(columns=timings, errors="ignore"))
    order = runs["1"][-1][["seed", "n_way", "method", "lr", "adapt_epochs"]].drop_duplicates().values.tolist()
    assert order == [[seed, n, *run] for seed in (1, 2) for n in (2, 3) for run in (
        ["zero-shot", 0.0, 0], ["MAMF", 1e-4, 0], ["MAMF", 1e-4, 1], ["MAMF", 1e-3, 1], ["fine-tuning (official)", 1e-4, 1])]


def test_a_unit_that_maps_units_runs_them_in_its_worker(monkeypatch):
    """A validation search inside one seed's fit maps its candidates too: in a worker they run in order
    (a forked worker may not fork a pool of its own)."""
    def unit(seed: int) -> list[tuple[int, int]]:
        return parallel.map_units(lambda k: (seed * k, os.getpid()), [1, 2, 3], progress=False)

    monkeypatch.setenv("FSLIB_PROCESSES", "2")
    nested = parallel.map_units(unit, [1, 2], progress=False)
    assert [[v for v, _ in rows] for rows in nested] == [[1, 2, 3], [2, 4, 6]]
    assert all(len({pid for _, pid in rows}) == 1 and os.getpid() not in {pid for _, pid in rows} for rows in nested)
