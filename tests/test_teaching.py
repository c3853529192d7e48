"""The course apparatus: exercise checks, student / solution versions, live widgets, progress bars."""
import ast
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from nbclient import NotebookClient

from fslib import course, progress, widgets
from fslib.methods import llu
from fslib.teaching import CASES, check

matplotlib.use("Agg")
NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


# -- exercise checks -------------------------------------------------------------------------------
def test_check_accepts_the_reference_itself(capsys):
    for reference in CASES:
        check(reference, reference)
    assert capsys.readouterr().out.count("✓") == len(CASES)


def test_check_reports_an_unfinished_exercise_without_failing(capsys):
    def my_weight(z, centres, gamma, kappa):
        raise NotImplementedError
    check(my_weight, llu.locality_weight)
    assert "my_weight: not implemented yet" in capsys.readouterr().out


def test_check_names_the_first_case_that_differs():
    def forgot_the_clamp(z, centres, gamma, kappa):
        return gamma * torch.exp(-kappa * (1 - (torch.nn.functional.normalize(z, dim=-1) @ centres.T).max(dim=1).values))
    with pytest.raises(AssertionError, match=r"forgot_the_clamp, case 1 of 2, arguments \(tensor\(10, 8\), tensor\(3, 8\), 0.5, 10.0\)"):
        check(forgot_the_clamp, llu.locality_weight)
    with pytest.raises(AssertionError, match="case 1"):
        check(lambda *args: 1.0, llu.locality_weight)  # a float where a tensor is due


def test_check_refuses_a_function_without_an_exercise():
    with pytest.raises(ValueError, match=r"no exercise checks fslib.methods.llu.reduce_centres; exercises: .*locality_weight"):
        check(llu.reduce_centres, llu.reduce_centres)


# -- student and solution versions -----------------------------------------------------------------
EXERCISE = '''def f(x):
    """doc"""
    # BEGIN SOLUTION
    y = x + 1
    return y
    # END SOLUTION

check(f, g)'''


def test_student_source_keeps_the_signature_and_the_indentation():
    assert course.student_source(EXERCISE) == ('def f(x):\n    """doc"""\n    raise NotImplementedError("your code here")\n'
                                               '\ncheck(f, g)')
    assert course.solution_source(EXERCISE) == 'def f(x):\n    """doc"""\n    y = x + 1\n    return y\n\ncheck(f, g)'


@pytest.mark.parametrize("source", ["def f():\n    return 1", "# BEGIN SOLUTION\nx = 1", "# END SOLUTION"])
def test_an_exercise_without_matching_markers_is_refused(source):
    with pytest.raises(ValueError, match="matching"):
        course.student_source(source)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_has_an_exercise_and_both_versions_differ_only_there(path):
    source = nbformat.read(path, as_version=4)
    made = course.versions(source)
    student, solution = made["student"], made["solution"]
    assert course.exercise_cells(student), f"{path.name} has no exercise"
    for s, full, original in zip(student.cells, solution.cells, source.cells):
        if course.EXERCISE_TAG in s.metadata.get("tags", []):
            assert course.BEGIN not in s.source and "NotImplementedError" in s.source
            assert course.BEGIN not in full.source and full.source != s.source
        else:
            assert full.source == original.source
            assert s.source == course.hide_references(original.source, course.exercise_references(source))
        if s.cell_type == "code":
            assert s.outputs == [] and s.execution_count is None
    assert "widgets" not in student.metadata
    references = course.exercise_references(source)
    assert references and not any(f".{name}" in c.source or f"({name}" in c.source for c in student.cells
                                  if "show_code(" in c.source for name in references)


def test_the_student_copy_hides_the_reference_that_show_code_would_print():
    assert course.hide_references("show_code(mamf.task_count, mamf.fomaml_task_update)", {"task_count"}) == \
        "show_code(mamf.fomaml_task_update)"
    assert course.hide_references("show_code(locality_weight)", {"locality_weight"}).startswith("# its code is the exercise")
    assert course.hide_references("x = 1", {"x"}) == "x = 1"


def test_build_skips_notebooks_without_an_exercise_and_names_them(tmp_path, capsys):
    plain = tmp_path / "Untitled.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), plain)
    assert course.build([plain], tmp_path / "course") == []
    assert "skipped Untitled.ipynb: no cell tagged 'exercise'" in capsys.readouterr().out


def test_build_writes_both_versions(tmp_path):
    written = course.build(NOTEBOOKS[:1], tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [f"solution/{NOTEBOOKS[0].name}",
                                                                          f"student/{NOTEBOOKS[0].name}"]


@pytest.mark.parametrize("kind, expected", [("solution", "✓ my_"), ("student", "not implemented yet")])
def test_the_exercises_of_both_versions_run(kind, expected):
    """Every notebook's exercise cells, executed in a real kernel: solved in the solution version, reported as
    unfinished (not failing) in the student version."""
    cells = [cell for path in NOTEBOOKS for cell in course.exercise_cells(course.versions(nbformat.read(path, as_version=4))[kind])]
    notebook = nbformat.v4.new_notebook(cells=cells)
    NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    printed = ["".join(o.get("text", "") for o in cell.outputs) for cell in notebook.cells]
    assert all(expected in text for text in printed), printed
    assert len(printed) == len(NOTEBOOKS)


# -- the code shown beside the equations -------------------------------------------------------------
def shown_code_cells(path: Path) -> list[tuple[int, str, str]]:
    """(index, what fslib shows now, what the saved notebook shows) for each ``show_code(...)`` cell,
    evaluated with the imports of the cells before it."""
    source = nbformat.read(path, as_version=4)
    namespace: dict = {}
    shown = []
    for index, cell in enumerate(source.cells):
        if cell.cell_type != "code":
            continue
        if cell.source.startswith("show_code("):
            saved = [o["data"]["text/plain"] for o in cell.outputs if "data" in o]
            shown.append((index, eval(cell.source, namespace).data.rstrip("\n"), saved[0] if saved else ""))
        imports = [node for node in ast.parse(cell.source).body if isinstance(node, (ast.Import, ast.ImportFrom))]
        exec(compile(ast.Module(imports, type_ignores=[]), path.name, "exec"), namespace)
    return shown


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_saved_notebooks_show_fslib_as_it_is(path):
    """A reader of a saved notebook sees the method's code beside its equation: that code must be fslib's
    current source, not the one of the run that saved the outputs (re-run the cell after changing it)."""
    cells = shown_code_cells(path)
    assert cells, f"{path.name} shows no fslib code"
    for index, now, saved in cells:
        assert saved == now, f"{path.name}, cell {index}: the saved output shows an older version of the code"


# -- live widgets ----------------------------------------------------------------------------------
def test_a_live_figure_redraws_when_a_control_moves():
    live = widgets.explore_locality(kappa=10.0)
    first = live.figure
    assert first.axes[0].get_title().startswith("κ = 10, γ = 1")
    live.controls["kappa"].value = 0.0
    assert live.redraws == 1 and live.figure is not first
    assert live.figure.axes[0].get_title().startswith("κ = 0, γ = 1")
    saved = widgets.Controls(list(live.controls.values()))._repr_mimebundle_()["text/plain"]
    assert saved.startswith("[controls: κ") and "HBox" not in saved  # what a saved or untrusted notebook shows


def _path(rng):
    return pd.DataFrame([{"dataset": d, "method": m, "seed": s, "ratio": r, "part": p, "accuracy": rng.uniform(20, 80)}
                         for d in ("a", "b") for m in ("CLIP-CITE", "fine-tuning") for s in (1, 2, 3)
                         for r in (0.0, 0.5, 1.0) for p in ("base", "new")])


def test_the_interpolation_explorer_reads_the_chosen_ratio():
    path = _path(np.random.default_rng(0))
    live = widgets.explore_interpolation(path)
    assert live.controls["ratio"].value == 0.5
    live.controls["ratio"].value = 1.0
    bars = [p.get_height() for p in live.figure.axes[1].patches]
    at_one = path[(path.method == "CLIP-CITE") & (path.ratio == 1.0)]
    expected_base = at_one[at_one.part == "base"].groupby("seed").accuracy.mean().mean()
    assert bars[0] == pytest.approx(expected_base)
    with pytest.raises(ValueError, match="no rows for method 'LLU'; methods in path: CLIP-CITE, fine-tuning"):
        widgets.explore_interpolation(path, "LLU")


def test_the_apex_explorer_needs_a_fitted_ensemble(random_clip):
    from fslib.methods.apex import make_family
    with pytest.raises(ValueError, match="fitted PromptedCLIP with ensemble=True"):
        widgets.explore_apex(make_family(random_clip, "zero-shot"), None)


# -- progress bars ---------------------------------------------------------------------------------
def test_progress_kind_comes_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("FSLIB_PROGRESS", "text")
    bar = progress.tqdm(range(3), leave=False)
    assert list(bar) == [0, 1, 2] and bar.delay == progress.TEXT_INTERVAL_S
    assert capsys.readouterr().err == ""  # a short loop leaves nothing in a saved notebook
    monkeypatch.setenv("FSLIB_PROGRESS", "off")
    assert progress.tqdm(range(2)).disable
    monkeypatch.setenv("FSLIB_PROGRESS", "widgets")
    with pytest.raises(ValueError, match="FSLIB_PROGRESS='widgets' is not a progress kind; allowed: auto, text, off"):
        progress.tqdm(range(2))


def test_the_student_version_of_the_tour_runs_end_to_end(tmp_path, monkeypatch):
    """A whole student notebook, unsolved exercise included, runs in a kernel (the solution versions run
    under nbval)."""
    monkeypatch.delenv("FSLIB_CACHE")  # the project's feature cache, shared with the nbval run of the same notebook
    monkeypatch.setenv("FSLIB_PROGRESS", "text")
    tour = next(p for p in NOTEBOOKS if p.stem == "00_tour")
    student = course.versions(nbformat.read(tour, as_version=4))["student"]
    NotebookClient(student, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tour.parent)}}).execute()
    assert "not implemented yet" in "".join(o.get("text", "") for o in student.cells[-1].outputs)


def test_the_world_browser_shows_ordinary_figures_and_redraws_them():
    from fslib.world.browse import browse
    browser = browse(per_view=3)
    first, captions = browser.examples, browser.captions
    assert len(first.axes) == 3 and first.axes[0].get_title() == "one"  # counting's first class
    browser.label.value = 2
    assert browser.examples is not first and browser.examples.axes[0].get_title() == "three"
    browser.name.value = "colors"
    assert browser.label.value == 0 and browser.examples.axes[0].get_title() == "red"
    assert browser.captions is captions  # the captions redraw only on their own button
