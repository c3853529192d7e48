"""The protocols layer: tasks, the one runner, and choosing on validation by one rule."""
import time

import numpy as np
import pandas as pd
import pytest
import torch

from fslib import protocols
from fslib.fewshot import base_to_new_sets, few_shot
from fslib.methods import LinearProbe, ZeroShot
from fslib.protocols import Contender, MetaTrained, Task
from tests.conftest import make_dataset


def _base_to_new(seeds, train_seed: int = 0) -> list[Task]:
    base_train, base_test, new_test = base_to_new_sets(make_dataset(4, 6, seed=train_seed), make_dataset(4, 3, seed=1))
    return [Task("base-to-new", "toy", 2, seed, few_shot(base_train, 2, seed), {"base": base_test, "new": new_test})
            for seed in seeds]


def test_peak_memory_sees_an_allocation_inside_the_block():
    with protocols.peak_memory(torch.device("cpu")) as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MB
        time.sleep(0.05)  # held for a few of the sampler's 10 ms ticks: a fit holds its memory far longer
        del block
    assert memory["peak_mb"] > 32


def test_run_fits_every_method_once_per_task_and_marks_what_it_cannot_score(random_clip):
    methods = {"zero-shot": lambda seed: ZeroShot(random_clip), "linear probe": lambda seed: LinearProbe(random_clip, C=10.0)}
    results = protocols.run(methods, _base_to_new((1, 2)), progress=False)
    assert len(results) == 2 * 2 * 2
    assert results[["seed", "method"]].drop_duplicates().values.tolist() == [[1, "zero-shot"], [1, "linear probe"],
                                                                             [2, "zero-shot"], [2, "linear probe"]]
    probe_new = results[(results.method == "linear probe") & (results.part == "new")].accuracy
    assert probe_new.isna().all()
    assert results[results.method != "linear probe"].accuracy.notna().all()
    assert (results.fit_seconds >= 0).all() and results.peak_mb.notna().all()
    by_method = protocols.run(methods, _base_to_new((1, 2)), together="method", progress=False)
    columns = ["seed", "method", "part", "accuracy"]
    pd.testing.assert_frame_equal(results[columns], by_method[columns])  # the same rows in the same order
    with pytest.raises(ValueError, match="together='seed' is not allowed; allowed: 'task', 'method'"):
        protocols.run(methods, [], together="seed")


def test_a_genuine_error_inside_logits_is_not_turned_into_nan(random_clip):
    class Broken(ZeroShot):
        def logits(self, images, classnames=None):
            raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        protocols.run({"broken": lambda seed: Broken(random_clip)}, _base_to_new((1,)), progress=False)


def test_tasks_in_forked_processes_equal_one_process(random_clip, one_and_two_processes):
    """run() hands its tasks to fslib.parallel: two one-thread processes give one process's accuracies, and a
    meta-training behind ``make`` runs once per seed, in this process, before the fits fan out."""
    from fslib.methods.llu import LLU

    meta = MetaTrained(lambda value, seed: seed * 10, key=lambda value: None)
    methods = {"zero-shot": lambda seed: ZeroShot(random_clip),
               "LLU": lambda seed: LLU(random_clip, kappa=10.0 + 0 * meta(10.0, seed), steps=5, views=2, seed=seed)}
    runs = one_and_two_processes(lambda: protocols.run(methods, _base_to_new((1, 2, 3)), progress=False))
    columns = ["protocol", "dataset", "shots", "seed", "method", "part", "accuracy", "trainable"]
    pd.testing.assert_frame_equal(runs["1"][columns], runs["2"][columns])
    assert sorted(meta.runs) == [(None, 1), (None, 2), (None, 3)]  # made here, once per seed


def _folder(root, name: str, classes=("cat", "dog"), per_class: int = 10, seed: int = 0) -> str:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / name / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / name / c / f"{i}.png")
    return str(root / name)


def test_level_tasks_label_each_task_with_its_level(random_clip, tmp_path):
    levels = {0.0: _folder(tmp_path, "easy"), 0.5: _folder(tmp_path, "hard", seed=1)}
    tasks = list(protocols.level_tasks(lambda name: protocols.few_shot_tasks([name], [1], [1, 2]), levels))
    assert [(t.level, t.dataset, t.seed) for t in tasks] == [(0.0, "easy", 1), (0.0, "easy", 2), (0.5, "hard", 1),
                                                              (0.5, "hard", 2)]
    rows = protocols.run({"zero-shot": lambda seed: ZeroShot(random_clip)}, tasks, together="method", progress=False)
    assert rows.level.tolist() == [0.0, 0.0, 0.5, 0.5]


def test_domain_shift_scores_every_target_with_its_own_classes(random_clip, tmp_path):
    source, target = _folder(tmp_path, "photos"), _folder(tmp_path, "sketches", seed=1)
    rows = protocols.domain_shift({"zero-shot": lambda seed: ZeroShot(random_clip)}, source, [source, target], 1, [1],
                                  progress=False)
    assert rows.part.tolist() == [source, target] and set(rows.protocol) == {"domain shift"}


def test_domain_shift_along_a_style_dial_scores_validation_and_test_at_every_level(random_clip):
    from fslib.world.dials import DIALS

    levels = DIALS["sketch_shift"].datasets((0.0, 1.0))
    tasks = list(protocols.domain_shift_tasks("shapes", levels, 1, [1, 2], test_per_class=2, splits=("val", "test")))
    rows = protocols.run({"zero-shot": lambda seed: ZeroShot(random_clip)}, tasks, progress=False)
    assert len(rows) == 2 * 2 * 2  # seeds x splits x levels, one fit per seed
    assert rows.groupby(["split", "level"]).size().eq(2).all()
    assert set(rows.part) == {"sketch_shift@0", "sketch_shift@1"} and set(rows.dataset) == {"shapes"}
    test = rows[rows.split == "test"]
    assert len(test) == 4 and tasks[0].tests["sketch_shift@1 (test)"].num_classes == 12


def test_search_ladder_climbs_past_an_edge_until_the_best_is_inside():
    ladder = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
    peak_at = lambda top: (lambda v: -abs(np.log10(v) - np.log10(top)))  # a single peak at ``top``
    calls = []
    tried = protocols.search_ladder(lambda v: calls.append(v) or peak_at(1000.0)(v), ladder, start=1)
    assert sorted(tried) == [1, 2, 3, 4, 5] and calls == [1.0, 10.0, 100.0, 1000.0, 10000.0]  # stops once 1000 is inside
    assert sorted(protocols.search_ladder(peak_at(10.0), ladder, start=1)) == [1, 2, 3]  # best inside: three fits only
    assert sorted(protocols.search_ladder(peak_at(0.01), ladder, start=1)) == [0, 1, 2, 3]  # the ladder's end stops it
    assert sorted(protocols.search_ladder(lambda v: 50.0, ladder, start=2)) == [2, 3, 4]  # a tie at the edge stays put
    with pytest.raises(ValueError, match="start=5 must leave 3 values on a ladder of 6 \\(allowed: 0..3\\)"):
        protocols.search_ladder(peak_at(1.0), ladder, start=5)


def test_chosen_values_build_the_methods_the_runner_fits(random_clip):
    contenders = {"zero-shot": Contender(lambda v, seed: ZeroShot(random_clip), "none", (None,)),
                  "linear probe": Contender(lambda c, seed: LinearProbe(random_clip, C=c), "C", (1.0, 10.0, 100.0))}
    tuning = protocols.choose_hyperparameters(contenders, lambda make: make().C if hasattr(make(), "C") else 0.0, seed=1,
                                              progress=False)
    assert tuning[tuning.chosen].set_index("method").value.loc["linear probe"] == 100.0
    methods = protocols.at_chosen(contenders, tuning)
    assert methods["linear probe"](1).C == 100.0 and isinstance(methods["zero-shot"](1), ZeroShot)
    # a method with nothing to choose is still scored, so it can be chosen as the best rival on validation
    assert tuning.set_index("method").val_accuracy.loc["zero-shot"] == 0.0
    assert protocols.best_rival(tuning, ["zero-shot", "linear probe"]) == "linear probe"


def test_tuning_summary_flags_a_choice_at_the_end_of_its_ladder():
    rows = [dict(method="zero-shot", knob="none", value=None, val_accuracy=np.nan, chosen=True, ladder_end=False)]
    rows += [dict(method="LLU", knob="kappa", value=k, val_accuracy=a, chosen=k == 10.0, ladder_end=False)
             for k, a in ((2.0, 60), (10.0, 61), (50.0, 51))]
    rows += [dict(method="CoOp", knob="lr", value=v, val_accuracy=a, chosen=v == 5.0, ladder_end=v == 5.0)
             for v, a in ((0.15, 40), (0.5, 45), (1.5, 50), (5.0, 52))]
    summary = protocols.tuning_summary(pd.DataFrame(rows))
    assert summary["at the ladder's end"].to_dict() == {"zero-shot": "", "LLU": "", "CoOp": "yes"}
    assert summary["values tried"].to_dict() == {"zero-shot": 0, "LLU": 3, "CoOp": 4}
    assert summary.loc["LLU", "validation accuracy by value"] == "2: 60.0 · 10: 61.0 · 50: 51.0"
    scored = protocols.tuning_summary(pd.DataFrame(rows).assign(val_accuracy=lambda t: t.val_accuracy.fillna(70.0)))
    assert scored.loc["zero-shot", "validation accuracy by value"] == "70.0"  # no knob: its score alone


def test_meta_training_runs_once_per_value_and_seed():
    calls = []
    trained = MetaTrained(lambda value, seed: calls.append((value, seed)) or f"{value}/{seed}")
    assert [trained(0.1, 1), trained(0.1, 1), trained(0.1, 2), trained(0.2, 1)] == ["0.1/1", "0.1/1", "0.1/2", "0.2/1"]
    assert calls == [(0.1, 1), (0.1, 2), (0.2, 1)] and set(trained.seconds) == set(calls)
    assert trained.mean_seconds(0.1, [1, 2]) >= 0
    test_time_only = MetaTrained(lambda value, seed: calls.append(("once", seed)), key=lambda value: None)
    test_time_only(0.1, 1), test_time_only(0.5, 1)
    assert calls[-1] == ("once", 1) and calls.count(("once", 1)) == 1


def test_best_on_validation_takes_the_highest_mean_and_the_first_on_ties():
    table = pd.DataFrame({"arm": ["A"] * 4 + ["B"] * 4, "lr": [0.1, 0.1, 1.0, 1.0] * 2,
                          "accuracy": [50, 70, 60, 60, 40, 40, 30, 50]})
    assert protocols.best_on_validation(table, ["lr"]) == 0.1  # 50.0 against 50.0: the first
    assert protocols.best_on_validation(table, ["lr"], group="arm") == {"A": 0.1, "B": 0.1}
    table["epochs"] = [0, 0, 5, 5, 0, 0, 5, 5]
    assert protocols.best_on_validation(table[table.arm == "A"], ["lr", "epochs"]) == (0.1, 0)


def test_base_to_new_over_a_dial_fits_each_level_and_scores_validation_and_test(random_clip):
    from fslib.world.dials import DIALS

    levels = DIALS["sketch_shift"].datasets((0.0, 1.0))
    results = protocols.base_to_new({"zero-shot": lambda seed: ZeroShot(random_clip)}, levels, 1, (1, 2),
                                    test_per_class=2, splits=("val", "test"), progress=False)
    assert len(results) == 2 * 2 * 2 * 2  # levels x seeds x splits x parts
    assert results.groupby(["level", "split", "part"]).size().eq(2).all()
    assert set(results.dataset) == {"sketch_shift@0", "sketch_shift@1"}
    plain = protocols.base_to_new({"zero-shot": lambda seed: ZeroShot(random_clip)}, ["sketch_shift@0"], 1, (1,),
                                  test_per_class=2, progress=False)
    assert "split" not in plain and "level" not in plain and list(plain.part) == ["base", "new"]


def test_a_new_class_dial_is_fitted_once_per_seed_and_scored_on_every_level(random_clip):
    from fslib.world.dials import DIALS

    levels = DIALS["class_distance"].datasets((1.0, 3.0, 6.0))
    fits = []

    def make(seed):
        method = ZeroShot(random_clip)
        fit = method.fit
        method.fit = lambda support: (fits.append(seed), fit(support))[1]
        return method

    results = protocols.new_class_levels({"zero-shot": make}, levels, 1, (1, 2), test_per_class=2,
                                         splits=("val", "test"), progress=False)
    assert fits == [1, 2]  # one fit per seed, whatever the number of levels
    new = results[results.part == "new"]
    assert new.groupby(["seed", "split", "level"]).size().eq(1).all() and set(new.level) == {1.0, 3.0, 6.0}
    assert results[results.part == "base"].level.isna().all() and len(results) == 2 * 2 * (3 + 1)
    with pytest.raises(ValueError, match="sketch_shift@0 does not share the base classes of class_distance@1"):
        list(protocols.new_class_level_tasks({1.0: "class_distance@1", 0.0: "sketch_shift@0"}, 1, (1,)))


def test_the_best_rival_is_chosen_on_validation():
    tuning = pd.DataFrame([{"method": "A", "value": 1, "val_accuracy": 70.0, "chosen": True},
                           {"method": "A", "value": 2, "val_accuracy": 60.0, "chosen": False},
                           {"method": "B", "value": 1, "val_accuracy": 75.0, "chosen": True},
                           {"method": "C", "value": 1, "val_accuracy": 75.0, "chosen": True}])
    assert protocols.best_rival(tuning, ["A", "B", "C"]) == "B" and protocols.best_rival(tuning, ["C", "B"]) == "C"
    with pytest.raises(ValueError, match="no validation score for D"):
        protocols.best_rival(tuning, ["A", "D"])
