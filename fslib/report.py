"""``make reproduce``: run every notebook with papermill on the embedded default and summarise its claims.

Each notebook records its claims through :mod:`fslib.evidence` in ``runs/claims/<notebook>.json``;
:func:`main` runs the notebooks at a scale (``--scale paper``, the default, or ``lesson``), then prints one
screen: each notebook's wall time, every claim's verdict with its estimate and 95% CI, and the held /
contradicted / inconclusive counts. ``--check`` compares every claim with the committed run of the same scale
(``fslib/records/<notebook>.<scale>.json``, :func:`fslib.evidence.compare_runs`) and fails if one moved past
the tolerance (``make check-reproduction`` at the paper scale); ``--record`` makes this run the committed one:
its records go to ``fslib/records/`` and, at the paper scale, the executed notebooks to ``notebooks/`` and their
figures to ``figures/``.

The notebooks run one per core at a time, each kernel on one thread (``OMP_NUM_THREADS=1``), longest
first. Why: the tiny CLIP's small matrix products gain only 1.2-1.6x from a second thread, so two
one-thread kernels side by side finish a 2-core machine's work sooner than one two-thread kernel after
another; and a kernel's numbers then do not depend on how many cores the machine has (a thread count can
change the order of float sums). ``make test`` schedules the notebooks the same way (``conftest.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import nbformat
import pandas as pd

from fslib.evidence import RECORDS, claims_file, committed, committed_file, compare_runs, counts, read_claims, read_run
from fslib.paths import checkout_dir, project_dir
from fslib.scales import REAL_SCALE, SCALES

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def committed_seconds(notebook: Path) -> float:
    """The wall time of ``notebook``'s committed run: the sum of its cells' papermill durations (0 if none)."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    return sum(cell["metadata"].get("papermill", {}).get("duration") or 0.0 for cell in cells)


_BAR = re.compile(r"^.*\|.*\|\s*\d+/\d+ \[.*\]\s*$")  # a tqdm text bar: "desc:  45%|████▌     | 5/11 [01:21<01:36, ...]"


def without_progress_bars(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``notebook`` without the stderr outputs that hold only text progress bars: a finished bar erases itself on
    a terminal, but each of its snapshots stays in a saved notebook as a box of its own."""
    def is_bar(output: dict) -> bool:
        pieces = [p for p in re.split(r"[\r\n]", output.get("text", "")) if p.strip()]
        return output.get("name") == "stderr" and all(_BAR.match(p) for p in pieces)

    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.get("output_type") == "stream" and is_bar(o))]
    return notebook


def _run_one(notebook: Path, out_dir: Path) -> dict:
    import papermill

    start, status = time.time(), "ok"
    try:
        papermill.execute_notebook(str(notebook), str(out_dir / notebook.name), cwd=str(notebook.parent),
                                   progress_bar=False)
        executed = out_dir / notebook.name
        nbformat.write(without_progress_bars(nbformat.read(executed, as_version=4)), executed)
    except Exception as err:  # keep going: the summary reports the failure
        status = f"FAILED: {type(err).__name__}"
    return {"notebook": notebook.stem, "seconds": time.time() - start, "status": status, "claims": read_claims(notebook.stem)}


def run_notebooks(notebooks: list[Path], out_dir: Path, jobs: int = 1, scale: str = "paper") -> list[dict]:
    """Execute ``notebooks`` at ``scale`` with papermill into ``out_dir``, ``jobs`` at a time, each kernel on one
    thread; one row per notebook, in the order given."""
    os.environ.setdefault("FSLIB_PROGRESS", "text")  # saved notebooks keep no frozen "0%" widget bars (fslib.progress)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by every kernel; see the module docstring
    os.environ.setdefault("FSLIB_PROCESSES", str(max(1, (os.cpu_count() or 1) // max(1, jobs))))  # fslib.parallel
    os.environ["FSLIB_SCALE"] = scale  # the kernels' default scale: no injected cell pins it in a saved copy
    queue = sorted(notebooks, key=committed_seconds, reverse=True)
    with ProcessPoolExecutor(max(1, min(jobs, len(queue)))) as pool:
        rows = {row["notebook"]: row for row in pool.map(_run_one, queue, repeat(out_dir))}
    return [rows[nb.stem] for nb in notebooks]


def _tally(records: list[dict]) -> str:
    """``2 held / 0 contradicted / 1 inconclusive`` (and ``/ 1 not staged`` where some are), premises apart."""
    claims = [r for r in records if r.get("role", "claim") == "claim"]
    premises = [r for r in records if r.get("role") == "premise"]
    tally = " / ".join(f"{n} {v}" for v, n in counts(claims).items() if n or v != "not staged")
    return tally + (f" (premises: {sum(r['verdict'] == 'held' for r in premises)} of {len(premises)} held)"
                    if premises else "")


def print_summary(rows: list[dict], wall_seconds: float | None = None) -> None:
    print(f"\n{'notebook':<14} {'time':>6}  status; claims")
    print("-" * 100)
    for row in rows:
        print(f"{row['notebook']:<14} {row['seconds']:5.0f}s  {row['status']}; {_tally(row['claims'])}")
        for c in row["claims"]:
            numbers = ("(premise held nowhere)" if c["estimate"] is None else
                       f"{c['estimate']:+7.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] n={c['n']}")
            print(f"{'':<4}{c['verdict']:<13} {c['claim'][:58]:<58} {numbers}")
    every = [c for r in rows for c in r["claims"]]
    print("-" * 100)
    print(f"{len(rows)} notebooks, {sum(r['status'] == 'ok' for r in rows)} ran, "
          f"{sum(r['seconds'] for r in rows) / 60:.1f} kernel-min"
          + (f" in {wall_seconds / 60:.1f} min of wall time" if wall_seconds is not None else "")
          + f"; {len(every)} claims: {_tally(every)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every notebook on the embedded default and summarise its claims.")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="notebooks at a time (default: one per core)")
    # paper-real needs a real model and datasets, given per notebook: run those notebooks with papermill
    parser.add_argument("--scale", choices=[s for s in SCALES if s != REAL_SCALE], default="paper",
                        help="the scale every notebook runs at (default: paper)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="compare every claim with the committed run of this scale")
    action.add_argument("--record", action="store_true", help="make this run the committed one (fslib/records; notebooks/ and figures/ at the paper scale)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    notebooks = args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb"))
    missing = [str(nb) for nb in notebooks if not Path(nb).is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    out_dir = project_dir("runs")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows = run_notebooks(notebooks, out_dir, args.jobs, args.scale)
    print_summary(rows, time.time() - started)
    ok = all(r["status"] == "ok" for r in rows)
    if args.check:
        ok &= print_check(rows, args.scale)
    if args.record and ok:
        record(rows, out_dir, args.scale)
    return 0 if ok else 1


def print_check(rows: list[dict], scale: str) -> bool:
    """Each notebook's claims beside its committed run of ``scale``; whether every claim is within tolerance."""
    every = []
    for row in rows:
        table = compare_runs(read_run(claims_file(row["notebook"])), committed(row["notebook"], scale))
        every.append(table.assign(notebook=row["notebook"]))
    table = pd.concat(every, ignore_index=True)
    with pd.option_context("display.max_colwidth", 60, "display.width", 200):
        print(table[["notebook", "claim", "committed", "now", "estimate moved", "bounds moved", "tolerance",
                     "within"]].to_string(index=False))
    print(f"{int(table.within.sum())} of {len(table)} claims within tolerance of the committed {scale}-scale runs")
    return bool(table.within.all())


def record(rows: list[dict], out_dir: Path, scale: str) -> None:
    """Make this run the committed one: its claim records into ``fslib/records/``; at the paper scale (what a
    notebook runs by default) also the executed notebooks into ``notebooks/`` and their figures into ``figures/``."""
    RECORDS.mkdir(exist_ok=True)
    for row in rows:
        shutil.copyfile(claims_file(row["notebook"]), committed_file(row["notebook"], scale))
        if scale == "paper":
            executed = nbformat.read(out_dir / f"{row['notebook']}.ipynb", as_version=4)
            # a cell papermill injected would pin its parameters in the committed copy (and in the tests' runs)
            executed.cells = [c for c in executed.cells if "injected-parameters" not in c.metadata.get("tags", [])]
            nbformat.write(executed, NOTEBOOKS / f"{row['notebook']}.ipynb")
            figures = project_dir("figures") / row["notebook"]
            if figures.is_dir():
                shutil.rmtree(checkout_dir() / "figures" / row["notebook"], ignore_errors=True)
                shutil.copytree(figures, checkout_dir() / "figures" / row["notebook"])
        print(f"recorded {row['notebook']} ({scale})")


if __name__ == "__main__":
    sys.exit(main())
