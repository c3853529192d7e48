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


def test_a_trend_across_fixed_datasets_is_shown_but_never_decided():
    rows = [{"seed": s, "dataset": d, "x": x, "y": 2 * x + noise}
            for s, noise in zip((1, 2, 3), (0.0, 0.3, -0.3)) for d, x in zip("abcd", range(4))]
    table = pd.DataFrame(rows)
    up = decide_trend(claim(kind="trend"), table, "y", "x")
    assert up.estimate == pytest.approx(1.0) and up.interval_kind == "bootstrap"
    assert up.verdict == "inconclusive" and "cannot be decided by design" in up.resolution
    with pytest.raises(ValueError, match=">= 3 datasets"):
        decide_trend(claim(kind="trend"), table[table.dataset.isin(["a", "b"])], "y", "x")


def test_unit_means_average_within_seed(capsys):
    results = pd.DataFrame({"seed": [1, 1, 2, 2], "method": ["A", "A", "A", "B"], "accuracy": [1.0, 3.0, 5.0, 7.0]})
    assert unit_means(results, method="A").to_dict() == {1: 2.0, 2: 5.0}
    declared = declare("nb", [{"key": "k", "claim": "A beats B", "paper_ref": "Tab. 1", "sides": ("A", "B")}])
    assert declared["k"].test == "A − B > 0 points" and "A beats B" in capsys.readouterr().out


def test_trend_over_the_swept_value_itself():
    """A designed grid (kappa) is fixed: rho per seed, t-interval over seeds."""
    grid = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0)
    rises = pd.DataFrame([{"seed": s, "kappa": k, "new": k + s} for s in (1, 2, 3) for k in grid])
    verdict = decide_trend(claim(kind="trend"), rises, "new", "kappa", group="kappa")
    assert verdict.estimate == pytest.approx(1.0) and verdict.verdict == "held" and verdict.interval_kind == "t"
    # one seed rising, one falling, one mostly rising: rho per seed +1, -1, +0.83 -> inconclusive
    mixed = pd.DataFrame([{"seed": s, "kappa": k, "new": f(i)} for s, f in ((1, lambda i: i), (2, lambda i: -i),
                          (3, lambda i: [0, 2, 1, 3, 5, 4][i])) for i, k in enumerate(grid)])
    verdict = decide_trend(claim(kind="trend"), mixed, "new", "kappa", group="kappa")
    assert verdict.verdict == "inconclusive" and list(verdict.per_unit.values()) == pytest.approx([1.0, -1.0, 0.886])


def test_a_designed_sweep_of_fewer_than_six_levels_is_refused_or_recorded_as_too_small():
    rises = pd.DataFrame([{"seed": s, "level": x, "y": x + s} for s in (1, 2, 3) for x in (0.0, 0.5, 1.0)])
    with pytest.raises(ValueError, match="a designed sweep of 3 levels cannot decide a trend; it needs at least 6"):
        decide_trend(claim(kind="trend"), rises, "y", "level", group="level")
    small = decide_trend(claim(kind="trend"), rises, "y", "level", group="level", too_few="record")
    # rho is +1 in every seed, yet three levels decide nothing
    assert small.estimate == pytest.approx(1.0) and small.verdict == "inconclusive"
    assert "needs at least 6 levels" in small.resolution
    with pytest.raises(ValueError, match="too_few='ignore'; allowed: refuse, record"):
        decide_trend(claim(kind="trend"), rises, "y", "level", group="level", too_few="ignore")


def test_premise_first_claims_are_decided_only_where_the_premise_held():
    from types import SimpleNamespace

    from fslib import evidence
    evidence.begin("nb", SimpleNamespace(scale="paper", seeds=[1, 2, 3], device="cpu"))
    premise = Claim("nb", "P loses more than 5 points", "Sec. 1", ("P", "zero-shot"),
                    margin=evidence.MARGINS["goes wrong"], direction="less", role="premise")
    zero = seeds([80.0, 80.0, 80.0])
    # level 0: P loses 10 points in every seed (held); level 1: P loses nothing (contradicted)
    staging = evidence.stage(premise, {0.0: (seeds([69.0, 70.0, 71.0]), zero), 1.0: (seeds([80.0, 81.0, 79.5]), zero)},
                             dial="dial")
    assert staging.levels == [0.0]
    assert [v.verdict for v in staging.verdicts.values()] == ["held", "contradicted"]
    asked = []

    def side(value):  # computed only where the premise held
        return lambda: asked.append(value) or seeds([value + 1, value + 2, value + 3])

    verdict = decide(claim(), side(10.0), side(0.0), staging=staging)
    assert verdict.verdict == "held" and asked == [10.0, 0.0] and "at the staged levels dial 0" in verdict.detail
    nowhere = evidence.stage(premise, {1.0: (seeds([80.0, 81.0, 79.5]), zero)}, dial="dial")
    skipped = decide(claim(text="M fixes it"), side(10.0), side(0.0), staging=nowhere)
    assert skipped.verdict == "not staged" and asked == [10.0, 0.0] and "held at no level of dial" in skipped.detail
    assert "1: +0.2 [-1.7, +2.1] contradicted" in skipped.detail
    # one experiment at one staged level; none where the premise held nowhere
    assert evidence.Staging(premise, staging.verdicts, "dial").restricted([0.0]).levels == [0.0]
    assert staging.restricted([]).levels == [] and list(staging.restricted([]).verdicts) == [1.0]
    per_level = evidence.level_sides(pd.DataFrame({"level": [0, 0, 1, 1], "seed": [1, 1, 1, 1], "method": ["P", "Z"] * 2,
                                                   "accuracy": [1.0, 2.0, 3.0, 4.0]}), dict(method="P"), dict(method="Z"))
    assert {x: (a.tolist(), b.tolist()) for x, (a, b) in per_level.items()} == {0: ([1.0], [2.0]), 1: ([3.0], [4.0])}
    records = {r["claim"]: r for r in read_claims("nb")}
    assert records["P loses more than 5 points (dial 0)"]["role"] == "premise"
    assert records["M fixes it"] == {**records["M fixes it"], "verdict": "not staged", "estimate": None, "n": 0}
    # a not-staged record compares by its word alone
    table = compare_runs({"claims": [records["M fixes it"]]}, {"claims": [records["M fixes it"]]})
    assert table.within.all() and table.committed[0] == "not staged"
    with pytest.raises(ValueError, match="has role 'claim'; stage\\(\\) decides a premise"):
        evidence.stage(claim(), {0.0: (zero, zero)})
    with pytest.raises(ValueError, match="role 'side'; allowed: claim, premise"):
        Claim("nb", "x", "Sec. 1", ("A", "B"), role="side")


def test_a_trend_premise_stages_trend_claims_only_where_it_held():
    from types import SimpleNamespace

    from fslib import evidence
    evidence.begin("nb", SimpleNamespace(scale="paper", seeds=[1, 2, 3], device="cpu"))
    premise = Claim("nb", "P falls along the dial", "Sec. 1", ("P", "level"), direction="less", kind="trend",
                    role="premise")
    levels = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    table = pd.DataFrame([(s, x, 80 - 10 * x - s) for s in (1, 2, 3) for x in levels], columns=["seed", "level", "P"])
    falls = evidence.trend_staging(decide_trend(premise, table, "P", "level", group="level"), "dial")
    assert falls.levels == ["all levels"]
    flat = evidence.trend_staging(decide_trend(premise, table.assign(P=table.seed * 1.0), "P", "level",
                                               group="level"), "dial")
    assert flat.levels == [] and "all levels: +0.00" in evidence.not_staged(claim(), flat).detail
    trend = Claim("nb", "M's gain grows along the dial", "Sec. 2", ("gain", "level"), kind="trend")
    gains = table.assign(gain=table.level * 10 + table.seed)
    assert decide_trend(trend, gains, "gain", "level", group="level", staging=falls).verdict == "held"
    skipped = decide_trend(trend, gains, "gain", "level", group="level", staging=flat)
    assert skipped.verdict == "not staged" and "held at no level of dial" in skipped.detail
    with pytest.raises(ValueError, match="is not a trend premise"):
        evidence.trend_staging(decide(claim(), seeds([1.0, 2.0, 3.0]), seeds([0.0, 0.0, 0.0])), "dial")


def test_one_margin_per_kind_of_claim():
    from fslib.evidence import MARGINS
    assert MARGINS == {"beats": 0.0, "within": -2.0, "goes wrong": -5.0}
    # a premise's loss must exceed what "on par" forgives, or a method could "fix" a loss that is noise
    assert MARGINS["goes wrong"] < 2 * MARGINS["within"] < MARGINS["within"] < MARGINS["beats"]


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
