"""``make reproduce``: run every notebook with papermill on the embedded default and summarise its claims.

Each notebook records its claims through :mod:`fslib.evidence` in ``runs/claims/<notebook>.json``;
:func:`main` runs the notebooks, then prints one screen: each notebook's wall time, every claim's
verdict with its estimate and 95% CI, and the held / contradicted / inconclusive counts.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from fslib.evidence import counts, read_claims
from fslib.paths import project_dir

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebooks(notebooks: list[Path], out_dir: Path) -> list[dict]:
    import papermill

    os.environ.setdefault("FSLIB_PROGRESS", "text")  # saved notebooks keep no frozen "0%" widget bars (fslib.progress)
    rows = []
    for nb in notebooks:
        start = time.time()
        status = "ok"
        try:
            papermill.execute_notebook(str(nb), str(out_dir / nb.name), cwd=str(nb.parent), progress_bar=False)
        except Exception as err:  # keep going: the summary reports the failure
            status = f"FAILED: {type(err).__name__}"
        rows.append({"notebook": nb.stem, "seconds": time.time() - start, "status": status, "claims": read_claims(nb.stem)})
    return rows


def _tally(records: list[dict]) -> str:
    return " / ".join(f"{n} {v}" for v, n in counts(records).items())


def print_summary(rows: list[dict]) -> None:
    print(f"\n{'notebook':<14} {'time':>6}  status; claims")
    print("-" * 100)
    for row in rows:
        print(f"{row['notebook']:<14} {row['seconds']:5.0f}s  {row['status']}; {_tally(row['claims'])}")
        for c in row["claims"]:
            print(f"{'':<4}{c['verdict']:<13} {c['claim'][:58]:<58} {c['estimate']:+7.2f} "
                  f"[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] n={c['n']}")
    every = [c for r in rows for c in r["claims"]]
    print("-" * 100)
    print(f"{len(rows)} notebooks, {sum(r['status'] == 'ok' for r in rows)} ran, "
          f"{sum(r['seconds'] for r in rows) / 60:.1f} min; {len(every)} claims: {_tally(every)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every notebook on the embedded default and summarise its claims.")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb"))
    out_dir = project_dir("runs")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = run_notebooks(notebooks, out_dir)
    print_summary(rows)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
