"""06_compare's summaries: the aggregate, the pairwise comparison, the leaderboard, the episodic scores."""
import numpy as np
import pandas as pd
import pytest

from fslib.studies import compare


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


def test_mamf_episode_count_sums_its_rule_over_the_domains():
    from fslib.protocols import episodic_tasks, make_benchmark
    bench = make_benchmark(["shapes", "textures"], ["counting"], n_way=5, shots=1, queries=1, train_tasks=60, test_tasks=2,
                           val_tasks=1, novel=5, seed=0)
    # shapes keeps 7 base classes, textures 5: K(5 of 7) = round(ln 0.001 / ln(2/7)) = 6, K(5 of 5) = 1
    assert compare.mamf_episode_count(bench, 5) == 6 + 1
    tasks = list(episodic_tasks({0: bench.test}, shots=1))
    assert len(tasks) == 3 * 2 and {t.protocol for t in tasks} == {"episodic"}
    assert all(set(t.tests) == {"query"} and t.support.classnames == t.tests["query"].classnames for t in tasks)


def test_episodic_scores_average_each_dataset_first():
    rows = [dict(protocol="episodic", dataset=d, shots=2, seed=1, method="A", part="query", accuracy=a)
            for d, accs in (("x", [10.0, 30.0, 50.0]), ("y", [80.0])) for a in accs]
    got = compare.scores(pd.DataFrame(rows))
    assert got.setting.tolist() == ["2-shot episodes"] and got.score.tolist() == [55.0]  # mean of 30 and 80


def test_only_methods_with_a_score_in_a_protocol_can_be_its_rival():
    import numpy as np
    import pandas as pd

    from fslib.studies.compare import scored_in

    per_seed = pd.DataFrame([("base-to-new", "HM", "linear probe", 1, np.nan), ("base-to-new", "HM", "CoOp", 1, 70.0),
                             ("few-shot", "8 shots", "linear probe", 1, 60.0)],
                            columns=["protocol", "setting", "method", "seed", "score"])
    assert scored_in(per_seed, "base-to-new", "HM") == ["CoOp"]
    assert scored_in(per_seed, "few-shot", "8 shots") == ["linear probe"]


def test_the_dataset_rule_keeps_the_band_and_the_most_room_on_both_sides():
    from fslib.studies.zero_shot import chosen, datasets_by_rule

    # chance 10 and ROOM 10: the band is [20, 90], its middle 55
    zero_shot = pd.Series({"a": 50.0, "ceiling": 95.0, "chance": 15.0, "d": 60.0, "e": 85.0})
    table = datasets_by_rule(zero_shot, 10.0, keep=2)
    assert table["in band"].to_dict() == {"a": True, "ceiling": False, "chance": False, "d": True, "e": True}
    assert chosen(table) == ["a", "d"]  # 5 points off the middle each; e is 30 off
    assert chosen(datasets_by_rule(zero_shot, 10.0, keep=1)) == ["a"]  # a tie: the first listed
    assert table.loc["a", "band"] == "20.0-90"
    with pytest.raises(ValueError, match="keep=0"):
        datasets_by_rule(zero_shot, 10.0, keep=0)
    with pytest.raises(ValueError, match=r"ceiling 95.0 \(band 20.0-90\)"):
        chosen(datasets_by_rule(zero_shot[["ceiling"]], 10.0, keep=1))
