import json
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from fslib import plots
from fslib.paths import project_dir
from fslib.report import committed_seconds, print_summary

matplotlib.use("Agg")


def test_summary_counts_three_verdicts(capsys):
    claim = {"claim": "a", "estimate": 1.0, "ci_low": 0.5, "ci_high": 1.5, "n": 3}
    print_summary([{"notebook": "00_tour", "seconds": 12.0, "status": "ok",
                    "claims": [{**claim, "verdict": "held"}, {**claim, "claim": "b", "verdict": "inconclusive"},
                               {**claim, "claim": "c", "verdict": "inconclusive"}]}])
    out = capsys.readouterr().out
    assert "1 held / 0 contradicted / 2 inconclusive" in out
    assert "3 claims: 1 held / 0 contradicted / 2 inconclusive" in out


def test_summary_counts_premises_apart_and_not_staged_claims_without_numbers(capsys):
    claim = {"claim": "a", "estimate": 1.0, "ci_low": 0.5, "ci_high": 1.5, "n": 3, "verdict": "held"}
    print_summary([{"notebook": "04_llu", "seconds": 12.0, "status": "ok",
                    "claims": [{**claim, "role": "premise"}, {**claim, "claim": "b", "role": "claim"},
                               {**claim, "claim": "c", "verdict": "not staged", "estimate": None, "ci_low": None,
                                "ci_high": None, "n": 0}]}])
    out = capsys.readouterr().out
    assert "1 held / 0 contradicted / 0 inconclusive / 1 not staged (premises: 1 of 1 held)" in out
    assert "(premise held nowhere)" in out


def test_a_premise_along_a_dial_shades_the_levels_where_it_held():
    from fslib import evidence

    premise = evidence.Claim("nb", "P forgets", "Sec. 1", ("P", "Z"), margin=-5.0, direction="less", role="premise")
    seeds = lambda *v: pd.Series(v, index=[1, 2, 3])
    staging = evidence.stage(premise, {0.0: (seeds(70.0, 71.0, 69.0), seeds(80.0, 80.0, 80.0)),
                                       0.5: (seeds(80.0, 79.0, 81.0), seeds(80.0, 80.0, 80.0))}, dial="d")
    fig = plots.premise_along_dial(staging, xlabel="level")
    ax = fig.axes[0]
    assert len(ax.patches) == 1  # one shaded level
    assert ax.get_lines()[-2].get_ydata()[0] == -5.0  # the margin
    verdicts = [evidence.not_staged(evidence.Claim("nb", "M fixes it", "Sec. 2", ("M", "Z")), staging)]
    assert plots.verdicts(verdicts).axes[0].get_title(loc="left") == "not staged: M fixes it"


def test_save_writes_under_figures_and_shows_no_path(tmp_path, monkeypatch):
    results = pd.DataFrame({"dataset": ["d"] * 4, "method": ["m"] * 4, "shots": [1, 1, 2, 2], "accuracy": [1.0, 2.0, 3.0, 4.0]})
    assert plots.save(plots.shot_curves(results), "00_tour", "curve") is None  # no machine path in a cell's output
    assert (project_dir("figures") / "00_tour" / "curve.png").stat().st_size > 1000


def test_runs_and_figures_go_under_runs_unless_the_environment_says_otherwise(monkeypatch):
    from fslib.paths import checkout_dir
    monkeypatch.delenv("FSLIB_FIGURES")
    monkeypatch.delenv("FSLIB_RUNS")
    assert project_dir("figures") == checkout_dir() / "runs" / "figures"  # never the tracked figures/
    assert project_dir("runs") == checkout_dir() / "runs"


def test_confidence_bands_stay_within_0_and_100_percent():
    # two seeds at 90 and 100 %: the t-interval (± 63.5 points) passes 100 %, accuracy cannot
    results = pd.DataFrame({"dataset": ["d"] * 4, "method": ["m"] * 4, "shots": [1, 1, 2, 2],
                            "accuracy": [90.0, 100.0, 2.0, 4.0]})
    band = plots.shot_curves(results).axes[0].collections[0]
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.max() == 100.0 and ys.min() == 0.0


def test_verdict_figure_has_one_row_per_claim_with_its_interval():
    from fslib.evidence import Claim, Verdict

    claim = Claim("nb", "A beats B", "Tab. 1", ("A", "B"))
    rows = [Verdict(claim, "held", 2.0, 1.0, 3.0, 3), Verdict(claim, "inconclusive", 0.5, -1.0, 2.0, 3, seeds_needed=9)]
    fig = plots.verdicts(rows)
    assert len(fig.axes) == 2
    assert fig.axes[0].get_title(loc="left").startswith("held: A beats B")
    low, high = fig.axes[1].get_xlim()
    assert low < -1.0 and high > 2.0  # the whole interval and the margin are in view


def test_show_code_reads_the_source_from_fslib():
    from fslib.methods.llu import LocalAffine, locality_weight
    from fslib.teaching import show_code
    shown = show_code(locality_weight, LocalAffine.forward)
    assert shown.data.startswith("# fslib.methods.llu.locality_weight\ndef locality_weight(")
    assert "# fslib.methods.llu.LocalAffine.forward\ndef forward(self" in shown.data  # dedented method
    assert "gamma * torch.exp(-kappa * dist)" in shown.data
    assert '<span class="k">def</span>' in shown._repr_html_()  # highlighted in Jupyter
    with pytest.raises(TypeError, match=r"not int \(3\)"):
        show_code(3)
    with pytest.raises(ValueError, match="at least one"):
        show_code()


def test_committed_seconds_sums_the_cells_papermill_durations(tmp_path):
    path = tmp_path / "a.ipynb"
    path.write_text(json.dumps({"cells": [{"metadata": {"papermill": {"duration": 60}}}, {"metadata": {"papermill": {"duration": None}}},
                                          {"metadata": {}}, {"metadata": {"papermill": {"duration": 40.5}}}]}))
    assert committed_seconds(path) == 100.5


def test_recording_a_lesson_run_writes_its_records_only_and_check_reads_them_back(tmp_path, monkeypatch, capsys):
    from fslib import evidence, report
    monkeypatch.setattr(report, "RECORDS", tmp_path / "records")
    monkeypatch.setattr(evidence, "RECORDS", tmp_path / "records")
    monkeypatch.setattr(report, "NOTEBOOKS", tmp_path / "notebooks")
    run = {"provenance": {"scale": "lesson"}, "claims": [{"claim": "a", "verdict": "held", "estimate": 1.0, "ci_low": 0.5,
                                                          "ci_high": 1.5, "margin": 0.0, "quantity": "points"}]}
    evidence.claims_file("00_tour").parent.mkdir(parents=True)
    evidence.claims_file("00_tour").write_text(json.dumps(run))
    report.record([{"notebook": "00_tour"}], project_dir("runs"), "lesson")
    assert json.loads((tmp_path / "records" / "00_tour.lesson.json").read_text()) == run
    assert not (tmp_path / "notebooks").exists()  # the committed notebooks are the paper scale's
    assert report.print_check([{"notebook": "00_tour"}], "lesson")
    assert "1 of 1 claims within tolerance of the committed lesson-scale runs" in capsys.readouterr().out


def test_recording_a_paper_run_commits_the_notebook_without_papermill_s_injected_cell(tmp_path, monkeypatch):
    import nbformat

    from fslib import evidence, report
    for module in (report, evidence):
        monkeypatch.setattr(module, "RECORDS", tmp_path / "records")
    monkeypatch.setattr(report, "NOTEBOOKS", tmp_path / "notebooks")
    (tmp_path / "notebooks").mkdir()
    evidence.claims_file("00_tour").parent.mkdir(parents=True)
    evidence.claims_file("00_tour").write_text(json.dumps({"provenance": {"scale": "paper"}, "claims": []}))
    injected = nbformat.v4.new_code_cell('scale = "paper"', metadata={"tags": ["injected-parameters"]})
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"), injected]),
                   project_dir("runs") / "00_tour.ipynb")
    report.record([{"notebook": "00_tour"}], project_dir("runs"), "paper")
    assert [c.source for c in nbformat.read(tmp_path / "notebooks" / "00_tour.ipynb", as_version=4).cells] == ["x = 1"]


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_no_committed_notebook_pins_its_parameters_in_an_injected_cell(path):
    """A saved papermill cell would override the scale the tests and users choose (``$FSLIB_SCALE``)."""
    import nbformat
    cells = nbformat.read(path, as_version=4).cells
    assert not [c for c in cells if "injected-parameters" in c.metadata.get("tags", [])]


def test_saved_notebooks_keep_no_progress_bar_snapshots():
    import nbformat

    from fslib.report import without_progress_bars
    bar = "\rval: seeds x arms:  45%|████▌     | 5/11 [01:21<01:36, 16.10s/it]"
    cell = nbformat.v4.new_code_cell("run()", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text=bar + "\r" + bar),
        nbformat.v4.new_output("stream", name="stderr", text="UserWarning: something real\n"),
        nbformat.v4.new_output("stream", name="stdout", text="held\n")])
    kept = without_progress_bars(nbformat.v4.new_notebook(cells=[cell])).cells[0].outputs
    assert [o["text"] for o in kept] == ["UserWarning: something real\n", "held\n"]


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_no_committed_notebook_shows_a_progress_bar_or_a_machine_path(path):
    import nbformat
    outputs = [o for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("name") == "stderr"]
    assert not [o for o in outputs if "PosixPath(" in str(o) or str(Path.home()) + "/" in str(o)]
