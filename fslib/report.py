"""Claims and the reproduce run.

Each notebook states the paper's claims as checks: :func:`check_claim` prints whether a claim held,
with the numbers behind it, and records it in ``runs/claims/<notebook>.json``. ``make reproduce``
runs :func:`main`, which executes every notebook with papermill on the embedded default and prints a
one-screen summary from those records.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import fslib


def project_dir(kind: str) -> Path:
    """``runs``/``figures`` folder: ``$FSLIB_<KIND>`` if set, else beside the source checkout, else cwd."""
    env = os.environ.get(f"FSLIB_{kind.upper()}")
    if env:
        return Path(env)
    checkout = Path(fslib.__file__).resolve().parents[1]
    return (checkout if (checkout / "pyproject.toml").exists() else Path.cwd()) / kind


def _claims_file(notebook: str) -> Path:
    return project_dir("runs") / "claims" / f"{notebook}.json"


def reset_claims(notebook: str) -> None:
    """Forget the claims of an earlier run of ``notebook`` (call once at the notebook's start)."""
    _claims_file(notebook).unlink(missing_ok=True)


def check_claim(notebook: str, claim: str, held: bool, evidence: str) -> None:
    """Print and record whether ``claim`` held on this run, with the numbers in ``evidence``.

    Returns nothing, so a notebook cell that ends with a check shows only the printed verdict."""
    held = bool(held)
    print(f"[{'HELD' if held else 'DID NOT HOLD'}] {claim}\n    {evidence}")
    path = _claims_file(notebook)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(path.read_text()) if path.exists() else []
    records = [r for r in records if r["claim"] != claim] + [{"claim": claim, "held": held, "evidence": evidence}]
    path.write_text(json.dumps(records, indent=2))


def run_notebooks(notebooks: list[Path], out_dir: Path) -> list[dict]:
    import papermill

    rows = []
    for nb in notebooks:
        start = time.time()
        status = "ok"
        try:
            papermill.execute_notebook(str(nb), str(out_dir / nb.name), cwd=str(nb.parent), progress_bar=False)
        except Exception as err:  # keep going: the summary reports the failure
            status = f"FAILED: {type(err).__name__}"
        claims_path = _claims_file(nb.stem)
        claims = json.loads(claims_path.read_text()) if claims_path.exists() else []
        rows.append({"notebook": nb.stem, "seconds": time.time() - start, "status": status, "claims": claims})
    return rows


def print_summary(rows: list[dict]) -> None:
    print(f"\n{'notebook':<16} {'time':>7}  status / claims")
    print("-" * 78)
    for row in rows:
        print(f"{row['notebook']:<16} {row['seconds']:6.0f}s  {row['status']}")
        for claim in row["claims"]:
            print(f"{'':<26}{'held ' if claim['held'] else 'NOT  '} {claim['claim'][:60]}")
    held = sum(c["held"] for r in rows for c in r["claims"])
    total = sum(len(r["claims"]) for r in rows)
    print("-" * 78)
    print(f"{len(rows)} notebooks, {sum(r['status'] == 'ok' for r in rows)} ran; {held}/{total} claims held")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every notebook on the embedded default and summarise its claims.")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((project_dir("runs").parent / "notebooks").glob("*.ipynb"))
    out_dir = project_dir("runs")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = run_notebooks(notebooks, out_dir)
    print_summary(rows)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
