"""The standard of evidence: three-valued verdicts from paired units, hand-checked intervals, loud failures."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from fslib.evidence import (Claim, compare_runs, decide, decide_trend, declare, read_claims,
                            seeds_to_resolve, tolerances, unit_means)


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
    from types import SimpleNamespace

    from fslib import evidence
    evidence.begin("nb", SimpleNamespace(scale="paper", seeds=[1, 2, 3], device="cpu"))
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


def _record(verdict="held", estimate=2.0, low=1.0, high=3.0, quantity="points", claim="A beats B"):
    return {"claim": claim, "verdict": verdict, "estimate": estimate, "ci_low": low, "ci_high": high, "margin": 0.0,
            "quantity": quantity}


def test_tolerances_by_hand():
    # half-width 1.0: 0.5 + 0.15 and 0.5 + 0.5 points; a trend's floor is 0.25
    assert tolerances(_record()) == pytest.approx((0.65, 1.0))
    assert tolerances(_record(quantity="rho", low=-0.9, high=-0.1)) == pytest.approx((0.25 + 0.06, 0.25 + 0.2))


def test_compare_runs_by_hand():
    reference = {"claims": [_record(), _record(claim="C", quantity="rho", estimate=-0.5, low=-0.9, high=-0.1,
                                               verdict="contradicted")]}
    same = compare_runs({"claims": [_record(estimate=2.3, high=3.9), _record(claim="C", quantity="rho", estimate=-0.4,
                                                                             low=-0.8, high=-0.15, verdict="contradicted")]},
                        reference)
    assert same.within.all() and list(same["estimate moved"]) == [0.3, 0.1] and list(same["bounds moved"]) == [0.9, 0.1]
    # an estimate shifted past its tolerance (0.65 here) fails, a bound past its own (1.0) too, and so do a missing
    # and an extra claim
    estimate_tol, bounds_tol = tolerances(reference["claims"][0])
    shifted = compare_runs({"claims": [_record(estimate=2.0 + estimate_tol + 0.01), reference["claims"][1]]}, reference)
    assert list(shifted.within) == [False, True]
    wider = compare_runs({"claims": [_record(low=1.0 - bounds_tol - 0.01), reference["claims"][1]]}, reference)
    assert list(wider.within) == [False, True]
    missing = compare_runs({"claims": [_record(), _record(claim="D")]}, reference)
    assert list(missing.within) == [True, False, False] and list(missing.now) == ["held +2.00 [+1.00, +3.00]",
                                                                                     "missing", "held +2.00 [+1.00, +3.00]"]


def test_compare_runs_lets_float_noise_tip_a_verdict_only_at_the_margin():
    reference = {"claims": [_record(low=0.1)]}
    tipped = {"claims": [_record(verdict="inconclusive", low=-0.1)]}  # the CI bound crossed the margin by 0.1
    assert compare_runs(tipped, reference).within.all()
    clear = {"claims": [_record(estimate=5.0, low=4.0, high=6.0)]}
    far = {"claims": [_record(verdict="inconclusive", estimate=5.0, low=4.0, high=6.0)]}  # a word change far from it
    assert not compare_runs(far, clear).within.any()


def test_a_lesson_run_labels_its_verdicts_and_shows_the_committed_paper_verdict(capsys, monkeypatch, tmp_path):
    from types import SimpleNamespace

    from fslib import evidence
    monkeypatch.setattr(evidence, "RECORDS", tmp_path)
    evidence.begin("nb", SimpleNamespace(scale="lesson", seeds=[1, 2, 3], device="cpu"))
    decide(claim(), seeds([5.0, 5.5, 6.0]), seeds([1.0, 1.0, 1.0]))
    shown = capsys.readouterr().out
    assert "lesson scale (3 seeds at class size): a lesson's verdict, not the kit's finding" in shown
    assert "paper scale: no committed record of this claim" in shown
    decide(claim(), seeds([5.0, 1.5, 6.0]), seeds([1.0, 1.0, 1.0]))
    assert "lesson scale (3 seeds at class size): this lesson cannot decide the claim" in capsys.readouterr().out
    (tmp_path / "nb.paper.json").write_text(json.dumps({
        "provenance": {"date": "2026-12-07", "commit": "abc1234", "cpu": "AMD EPYC (AVX2)", "precision": "fp32",
                       "seeds": [1, 2, 3, 4, 5]},
        "claims": [{**_record(verdict="contradicted", estimate=-1.0, low=-2.0, high=-0.5), "claim": claim().claim,
                    "n": 5}]}))
    decide(claim(), seeds([5.0, 5.5, 6.0]), seeds([1.0, 1.0, 1.0]))
    assert ("paper scale: CONTRADICTED -1.00 [-2.00, -0.50], n = 5 (committed 2026-12-07, fslib abc1234, "
            "AMD EPYC (AVX2), fp32, seeds 1,2,3,4,5)") in capsys.readouterr().out
    run = evidence.read_run(evidence.claims_file("nb"))
    assert run["provenance"]["scale"] == "lesson" and run["provenance"]["precision"] == "fp32"
