"""06_compare's machinery: the aggregate, the pairwise comparison, the leaderboard, memory and the runner."""
import time

import numpy as np
import pandas as pd
import pytest
import torch

from fslib import compare
from fslib.fewshot import base_to_new_sets, few_shot
from fslib.methods import LinearProbe, ZeroShot
from tests.conftest import make_dataset


def test_interquartile_mean_drops_the_outer_quarters():
    assert compare.interquartile_mean([1, 2, 3, 100]) == 2.5
    assert compare.interquartile_mean([5.0] * 7) == 5.0


def _results(rows):
    return pd.DataFrame([dict(protocol="few-shot", dataset=d, shots=s, seed=seed, method=m, part="all", accuracy=a,
                              fit_seconds=1.0, peak_mb=10.0, trainable=0) for seed, d, s, m, a in rows])


def test_probability_of_improvement_is_paired_by_seed_and_counts_ties_half():
    rows = []
    for seed, wins in ((1, (1, 1, 1, 0)), (2, (1, 1, 1, 0.5))):
        for unit, win in enumerate(wins):
            rows += [(seed, f"d{unit}", 4, "A", 50 + (win - 0.5) * 10), (seed, f"d{unit}", 4, "B", 50.0)]
    p, low, high, units = compare.probability_of_improvement(_results(rows), "A", "B")
    assert p == pytest.approx((0.75 + 0.875) / 2) and units == 4
    assert low < p < high
    pairs = compare.pairwise(_results(rows), ["A", "B"])
    assert list(pairs.method) == ["A", "B"] and pairs["P(better)"].sum() == pytest.approx(1.0)


def test_a_pair_whose_interval_holds_a_half_is_a_tie():
    a_wins = lambda seed, unit: (seed + unit) % 2 == 1  # 2, 1 and 2 of 3 units in seeds 1, 2, 3
    rows = [(seed, f"d{u}", 4, m, 50 + (1 if a_wins(seed, u) == (m == "A") else -1)) for seed in (1, 2, 3) for u in range(3)
            for m in ("A", "B")]
    reading = compare.pairwise(_results(rows), ["A", "B"]).set_index("method").reading
    assert reading["A"] == reading["B"] == "tie"


def test_scores_give_a_harmonic_mean_only_with_both_parts():
    rows = [dict(protocol="base-to-new", dataset="d", shots=16, seed=1, method=m, part=p, accuracy=a, fit_seconds=0.0,
                 peak_mb=0.0, trainable=0)
            for m, p, a in (("LLU", "base", 80.0), ("LLU", "new", 60.0), ("probe", "base", 90.0), ("probe", "new", np.nan))]
    got = compare.scores(pd.DataFrame(rows)).set_index("method").score
    assert got["LLU"] == pytest.approx(2 * 80 * 60 / 140) and np.isnan(got["probe"])


def test_leaderboard_has_every_method_with_intervals_and_costs():
    rows = [(seed, f"d{u}", 4, m, 40 + 10 * (m == "A") + seed + u) for seed in (1, 2, 3) for u in range(4) for m in ("A", "B")]
    board = compare.leaderboard(_results(rows))
    assert list(board.index) == ["A", "B"]  # sorted by IQM
    assert board.loc["A", "few-shot (4 shots)"] == "53.5 ± 2.5"
    assert {"IQM over tasks", "trainable", "fit_seconds", "peak_mb"} <= set(board.columns)


def test_peak_memory_sees_an_allocation_inside_the_block():
    with compare.peak_memory(torch.device("cpu")) as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MB
        time.sleep(0.05)  # held for a few of the sampler's 10 ms ticks: a fit holds its memory far longer
        del block
    assert memory["peak_mb"] > 32


def test_run_fits_every_contender_once_per_task_and_marks_what_it_cannot_score(random_clip):
    train, test = make_dataset(4, 6, seed=0), make_dataset(4, 3, seed=1)
    base_train, base_test, new_test = base_to_new_sets(train, test)
    contenders = {"zero-shot": compare.Contender(lambda v, seed: ZeroShot(random_clip), "none", (None,)),
                  "linear probe": compare.Contender(lambda c, seed: LinearProbe(random_clip, C=c), "C", (1.0, 10.0))}
    tasks = [compare.Task("base-to-new", "toy", 2, seed, few_shot(base_train, 2, seed), {"base": base_test, "new": new_test})
             for seed in (1, 2)]
    results = compare.run(random_clip, contenders, {"zero-shot": None, "linear probe": 10.0}, tasks, progress=False)
    assert len(results) == 2 * 2 * 2
    probe_new = results[(results.method == "linear probe") & (results.part == "new")].accuracy
    assert probe_new.isna().all()
    assert results[results.method != "linear probe"].accuracy.notna().all()
    assert (results.fit_seconds >= 0).all() and results.peak_mb.notna().all()


def test_tasks_in_forked_processes_equal_one_process(random_clip, one_and_two_processes):
    """run() hands its tasks to fslib.parallel: two one-thread processes give one process's accuracies, and a
    meta-training behind ``make`` runs once per seed, in this process, before the fits fan out."""
    from fslib.methods.llu import LLU

    train, test = make_dataset(4, 6, seed=0), make_dataset(4, 3, seed=1)
    base_train, base_test, new_test = base_to_new_sets(train, test)
    meta = compare.MetaTrained(lambda value, seed: seed * 10, key=lambda value: None)
    contenders = {"zero-shot": compare.Contender(lambda v, seed: ZeroShot(random_clip), "none", (None,)),
                  "LLU": compare.Contender(lambda k, seed: LLU(random_clip, kappa=k + 0 * meta(k, seed), steps=5, views=2,
                                                                  seed=seed), "kappa", (10.0,))}
    tasks = [compare.Task("base-to-new", "toy", 2, seed, few_shot(base_train, 2, seed), {"base": base_test, "new": new_test})
             for seed in (1, 2, 3)]
    runs = one_and_two_processes(lambda: compare.run(random_clip, contenders, {"zero-shot": None, "LLU": 10.0}, tasks,
                                                     progress=False))
    columns = ["protocol", "dataset", "shots", "seed", "method", "part", "accuracy", "trainable"]
    pd.testing.assert_frame_equal(runs["1"][columns], runs["2"][columns])
    assert sorted(meta.runs) == [(None, 1), (None, 2), (None, 3)]  # made here, once per seed


def test_search_ladder_climbs_past_an_edge_until_the_best_is_inside():
    ladder = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
    peak_at = lambda top: (lambda v: -abs(np.log10(v) - np.log10(top)))  # a single peak at ``top``
    calls = []
    tried = compare.search_ladder(lambda v: calls.append(v) or peak_at(1000.0)(v), ladder, start=1)
    assert sorted(tried) == [1, 2, 3, 4, 5] and calls == [1.0, 10.0, 100.0, 1000.0, 10000.0]  # stops once 1000 is inside
    assert sorted(compare.search_ladder(peak_at(10.0), ladder, start=1)) == [1, 2, 3]  # best inside: three fits only
    assert sorted(compare.search_ladder(peak_at(0.01), ladder, start=1)) == [0, 1, 2, 3]  # the ladder's end stops it
    assert sorted(compare.search_ladder(lambda v: 50.0, ladder, start=2)) == [2, 3, 4]  # a tie at the edge stays put
    with pytest.raises(ValueError, match="start=5 must leave 3 values on a ladder of 6 \\(allowed: 0..3\\)"):
        compare.search_ladder(peak_at(1.0), ladder, start=5)


def test_tuning_summary_flags_a_choice_at_the_end_of_its_ladder():
    rows = [dict(method="zero-shot", knob="none", value=None, val_accuracy=np.nan, chosen=True, ladder_end=False)]
    rows += [dict(method="LLU", knob="kappa", value=k, val_accuracy=a, chosen=k == 10.0, ladder_end=False)
             for k, a in ((2.0, 60), (10.0, 61), (50.0, 51))]
    rows += [dict(method="CoOp", knob="lr", value=v, val_accuracy=a, chosen=v == 5.0, ladder_end=v == 5.0)
             for v, a in ((0.15, 40), (0.5, 45), (1.5, 50), (5.0, 52))]
    summary = compare.tuning_summary(pd.DataFrame(rows))
    assert summary["at the ladder's end"].to_dict() == {"zero-shot": "", "LLU": "", "CoOp": "yes"}
    assert summary["values tried"].to_dict() == {"zero-shot": 0, "LLU": 3, "CoOp": 4}
    assert summary.loc["LLU", "validation accuracy by value"] == "2: 60.0 · 10: 61.0 · 50: 51.0"


def test_meta_training_runs_once_per_value_and_seed():
    calls = []
    trained = compare.MetaTrained(lambda value, seed: calls.append((value, seed)) or f"{value}/{seed}")
    assert [trained(0.1, 1), trained(0.1, 1), trained(0.1, 2), trained(0.2, 1)] == ["0.1/1", "0.1/1", "0.1/2", "0.2/1"]
    assert calls == [(0.1, 1), (0.1, 2), (0.2, 1)] and set(trained.seconds) == set(calls)
    assert trained.mean_seconds(0.1, [1, 2]) >= 0
    test_time_only = compare.MetaTrained(lambda value, seed: calls.append(("once", seed)), key=lambda value: None)
    test_time_only(0.1, 1), test_time_only(0.5, 1)
    assert calls[-1] == ("once", 1) and calls.count(("once", 1)) == 1


def test_mamf_episode_count_sums_its_rule_over_the_domains():
    from fslib.methods.smat import make_benchmark
    bench = make_benchmark(["shapes", "textures"], ["counting"], n_way=5, shots=1, queries=1, train_tasks=60, test_tasks=2,
                           val_tasks=1, novel=5, seed=0)
    # shapes keeps 7 base classes, textures 5: K(5 of 7) = round(ln 0.001 / ln(2/7)) = 6, K(5 of 5) = 1
    assert compare.mamf_episode_count(bench, 5) == 6 + 1
    tasks = list(compare.episodic_tasks({0: bench}, shots=1))
    assert len(tasks) == 3 * 2 and {t.protocol for t in tasks} == {"episodic"}
    assert all(set(t.tests) == {"query"} and t.support.classnames == t.tests["query"].classnames for t in tasks)


def test_episodic_scores_average_each_dataset_first():
    rows = [dict(protocol="episodic", dataset=d, shots=2, seed=1, method="A", part="query", accuracy=a)
            for d, accs in (("x", [10.0, 30.0, 50.0]), ("y", [80.0])) for a in accs]
    got = compare.scores(pd.DataFrame(rows))
    assert got.setting.tolist() == ["2-shot episodes"] and got.score.tolist() == [55.0]  # mean of 30 and 80
