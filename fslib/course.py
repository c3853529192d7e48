"""Student and solution versions of the notebooks, both generated from ``notebooks/`` (``make course``).

The notebooks in ``notebooks/`` are the source and hold the solutions. An "Implement" exercise is a code
cell tagged ``exercise`` whose solution lies between the lines ``# BEGIN SOLUTION`` and ``# END SOLUTION``
(the convention of nbgrader). The generated versions:

- ``solution/``: the source with its outputs and without the marker lines;
- ``student/``: the same cells with every solution replaced by ``raise NotImplementedError`` (indented
  as the solution was) and all outputs cleared, a fresh worksheet. The exercise's check
  (:func:`fslib.teaching.check`) then reports "not implemented yet" instead of failing, so the student
  version runs end to end too. A ``show_code(...)`` cell that would print the exercise's reference (the
  function its ``check(mine, reference)`` compares with) shows the rest of its functions only.

Notebooks without an exercise are skipped, by name.

``python -m fslib.course [--out course] [notebook ...]``
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
EXERCISE_TAG = "exercise"
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
_SOLUTION = re.compile(rf"^([ \t]*){re.escape(BEGIN)}[ \t]*\n.*?^[ \t]*{re.escape(END)}[ \t]*$", re.S | re.M)
_MARKER = re.compile(rf"^[ \t]*(?:{re.escape(BEGIN)}|{re.escape(END)})[ \t]*\n?", re.M)


def _check_markers(source: str) -> None:
    begins, ends = source.count(BEGIN), source.count(END)
    if begins != ends or not begins:
        raise ValueError(f"an exercise cell needs matching {BEGIN!r} / {END!r} lines; found {begins} and {ends}:\n{source}")


def student_source(source: str) -> str:
    """The cell with each solution block replaced by ``raise NotImplementedError(...)`` at its indentation."""
    _check_markers(source)
    return _SOLUTION.sub(lambda m: f'{m.group(1)}raise NotImplementedError("your code here")', source)


def solution_source(source: str) -> str:
    """The cell with the marker lines removed and the solution kept."""
    _check_markers(source)
    return _MARKER.sub("", source)


def exercise_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if EXERCISE_TAG in cell.metadata.get("tags", [])]


def exercise_references(notebook: nbformat.NotebookNode) -> set[str]:
    """The names of the references the exercises check against: ``check(my_f, f)`` -> ``{"f"}``."""
    return {m.group(1).split(".")[-1] for cell in exercise_cells(notebook)
            for m in re.finditer(r"\bcheck\(\s*\w+\s*,\s*([\w.]+)", cell.source)}


def hide_references(source: str, references: set[str]) -> str:
    """``source`` with every ``show_code`` argument that names one of ``references`` removed (the cell becomes a
    comment when none is left)."""
    def strip(match: re.Match) -> str:
        kept = [a.strip() for a in match.group(1).split(",") if a.strip() and a.strip().split(".")[-1] not in references]
        return f"show_code({', '.join(kept)})" if kept else "# its code is the exercise at the end of this notebook"
    return re.sub(r"show_code\(([^()]*)\)", strip, source)


def versions(notebook: nbformat.NotebookNode) -> dict[str, nbformat.NotebookNode]:
    """``{"student": ..., "solution": ...}`` copies of ``notebook`` (see the module docstring)."""
    if not exercise_cells(notebook):
        raise ValueError("the notebook has no cell tagged 'exercise'")
    student, solution = copy.deepcopy(notebook), copy.deepcopy(notebook)
    references = exercise_references(notebook)
    for cell in student.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            if EXERCISE_TAG in cell.metadata.get("tags", []):
                cell.source = student_source(cell.source)
            else:
                cell.source = hide_references(cell.source, references)
    student.metadata.pop("widgets", None)  # the state of widgets whose outputs were just cleared
    for cell in exercise_cells(solution):
        cell.source = solution_source(cell.source)
    return {"student": student, "solution": solution}


def build(notebooks: list[Path], out_dir: Path) -> list[Path]:
    """Write ``out_dir/student/<name>.ipynb`` and ``out_dir/solution/<name>.ipynb`` for each notebook."""
    written = []
    for path in notebooks:
        source = nbformat.read(path, as_version=4)
        if not exercise_cells(source):
            print(f"skipped {path.name}: no cell tagged {EXERCISE_TAG!r}")
            continue
        for kind, notebook in versions(source).items():
            target = out_dir / kind / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, target)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the student and solution versions of the notebooks.")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--out", type=Path, default=Path("course"), help="output folder (default: course)")
    args = parser.parse_args(argv)
    written = build(args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb")), args.out)
    print(f"wrote {len(written)} notebooks under {args.out}/student and {args.out}/solution")
    return 0


if __name__ == "__main__":
    sys.exit(main())
