"""The standard of evidence: three-valued verdicts from paired units, hand-checked intervals, loud failures."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from fslib.evidence import Claim, decide, decide_trend, declare, read_claims, reset_claims, seeds_to_resolve, unit_means


def claim(margin=0.0, direction="greater", kind="paired", text="A beats B"):
    return Claim("nb", text, "Sec. 1", ("A", "B"), margin=margin, direction=direction, kind=kind)


def seeds(values):
    return pd.Series(values, index=[1, 2, 3][:len(values)] if len(values) <= 3 else range(len(values)))


def test_paired_interval_matches_a_hand_computed_t_interval():
    # differences 1, 2, 3: mean 2, sd 1, sem 1/sqrt(3), t(0.975, 2) = 4.3027
    verdict = decide(claim(), seeds([11.0, 12.0, 13.0]), seeds([10.0, 10.0, 10.0]))
    half = 4.302653 / math.sqrt(3)
    assert verdict.estimate == pytest.approx(2.0)
    assert (verdict.ci_low, verdict.ci_high) == pytest.approx((2 - half, 2 + half), abs=1e-4)
    assert verdict.verdict == "inconclusive" and verdict.n == 3  # the CI [-0.48, 4.48] spans the margin 0


def test_three_verdicts():
    assert decide(claim(), seeds([5.0, 5.5, 6.0]), seeds([1.0, 1.0, 1.0])).verdict == "held"
    assert decide(claim(), seeds([1.0, 1.0, 1.0]), seeds([5.0, 5.5, 6.0])).verdict == "contradicted"
    # "on par" (margin -2): a 1-point deficit, tightly measured, holds; a 4-point deficit contradicts
    assert decide(claim(-2), seeds([9.0, 9.1, 8.9]), seeds([10.0, 10.0, 10.0])).verdict == "held"
    assert decide(claim(-2), seeds([6.0, 6.1, 5.9]), seeds([10.0, 10.0, 10.0])).verdict == "contradicted"
    # "less" claims flip the sides of the margin
    assert decide(claim(direction="less"), seeds([1.0, 1.0, 1.2]), seeds([5.0, 5.5, 6.0])).verdict == "held"


def test_inconclusive_says_how_many_seeds_would_resolve_it():
    differences = np.array([1.0, 2.0, 3.0])
    n = seeds_to_resolve(differences, 0.0)
    from scipy import stats
    assert stats.t.ppf(0.975, n - 1) / math.sqrt(n) < 2.0 <= stats.t.ppf(0.975, n - 2) / math.sqrt(n - 1)
    assert seeds_to_resolve(np.array([-1.0, 1.0]), 0.0) is None  # mean on the margin: no n resolves it


def test_missing_or_unpaired_data_raise_naming_the_claim():
    with pytest.raises(ValueError, match="A beats B.*'A' is missing"):
        decide(claim(), seeds([1.0, float("nan"), 2.0]), seeds([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="no values for 'B'"):
        decide(claim(), seeds([1.0, 2.0]), pd.Series(dtype=float))
    with pytest.raises(ValueError, match="not paired"):
        decide(claim(), pd.Series([1.0, 2.0], index=[1, 2]), pd.Series([1.0, 2.0], index=[1, 3]))
    with pytest.raises(ValueError, match="one seed cannot give an interval"):
        decide(claim(), pd.Series([1.0], index=[1]), pd.Series([0.0], index=[1]))
    with pytest.raises(ValueError, match="direction 'up'"):
        claim(direction="up")


def test_records_have_the_documented_keys_and_replace_on_rerun():
    reset_claims("nb")
    decide(claim(), seeds([5.0, 5.5, 6.0]), seeds([1.0, 1.0, 1.0]))
    decide(claim(), seeds([1.0, 1.0, 1.0]), seeds([5.0, 5.5, 6.0]))  # the same claim again replaces its record
    records = read_claims("nb")
    assert len(records) == 1 and records[0]["verdict"] == "contradicted"
    assert {"claim", "paper_ref", "verdict", "estimate", "ci_low", "ci_high", "margin", "n", "unit"} <= set(records[0])
    json.dumps(records)


def test_trend_from_a_bootstrap_over_seeds_and_datasets():
    rows = [{"seed": s, "dataset": d, "x": x, "y": 2 * x + noise}
            for s, noise in zip((1, 2, 3), (0.0, 0.3, -0.3)) for d, x in zip("abcdef", range(6))]
    table = pd.DataFrame(rows)
    up = decide_trend(claim(kind="trend"), table, "y", "x")
    assert up.estimate == pytest.approx(1.0) and up.verdict == "held"
    down = decide_trend(claim(kind="trend", direction="less"), table, "y", "x")
    assert down.verdict == "contradicted"
    flat = table.assign(y=np.random.default_rng(0).normal(size=len(table)))
    assert decide_trend(claim(kind="trend"), flat, "y", "x").verdict != "held"
    with pytest.raises(ValueError, match=">= 3 datasets"):
        decide_trend(claim(kind="trend"), table[table.dataset.isin(["a", "b"])], "y", "x")


def test_unit_means_average_within_seed(capsys):
    results = pd.DataFrame({"seed": [1, 1, 2, 2], "method": ["A", "A", "A", "B"], "accuracy": [1.0, 3.0, 5.0, 7.0]})
    assert unit_means(results, method="A").to_dict() == {1: 2.0, 2: 5.0}
    declared = declare("nb", [{"key": "k", "claim": "A beats B", "paper_ref": "Tab. 1", "sides": ("A", "B")}])
    assert declared["k"].test == "A − B > 0 points" and "A beats B" in capsys.readouterr().out


def test_trend_over_the_swept_value_itself():
    """A designed grid (kappa) is fixed: rho per seed, t-interval over seeds."""
    rises = pd.DataFrame([{"seed": s, "kappa": k, "new": k + s} for s in (1, 2, 3) for k in (0.0, 1.0, 5.0, 10.0)])
    verdict = decide_trend(claim(kind="trend"), rises, "new", "kappa", group="kappa")
    assert verdict.estimate == pytest.approx(1.0) and verdict.verdict == "held" and verdict.interval_kind == "t"
    # one seed rising, one falling, one flat-ish: rho per seed +1, -1, +0.4 -> inconclusive, with a seed count
    mixed = pd.DataFrame([{"seed": s, "kappa": k, "new": f(k)} for s, f in ((1, lambda k: k), (2, lambda k: -k),
                          (3, lambda k: [0, 2, 1, 3][int(k) % 4])) for k in (0.0, 1.0, 2.0, 3.0)])
    verdict = decide_trend(claim(kind="trend"), mixed, "new", "kappa", group="kappa")
    assert verdict.verdict == "inconclusive" and list(verdict.per_unit.values()) == pytest.approx([1.0, -1.0, 0.8])
