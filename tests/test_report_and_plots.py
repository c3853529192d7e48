import json

import matplotlib
import pandas as pd

from fslib import plots
from fslib.report import check_claim, print_summary, project_dir, reset_claims

matplotlib.use("Agg")


def test_check_claim_records_and_replaces(capsys):
    reset_claims("nb")
    check_claim("nb", "x beats y", True, "3 vs 2")
    check_claim("nb", "x beats y", False, "1 vs 2")  # a re-run of the same cell replaces the record
    check_claim("nb", "z holds", True, "ok")
    records = json.loads((project_dir("runs") / "claims" / "nb.json").read_text())
    assert [(r["claim"], r["held"]) for r in records] == [("x beats y", False), ("z holds", True)]
    assert "[DID NOT HOLD] x beats y" in capsys.readouterr().out


def test_summary_counts_claims(capsys):
    print_summary([{"notebook": "00_tour", "seconds": 12.0, "status": "ok",
                    "claims": [{"claim": "a", "held": True}, {"claim": "b", "held": False}]}])
    out = capsys.readouterr().out
    assert "1 notebooks, 1 ran; 1/2 claims held" in out and "NOT   b" in out


def test_save_writes_under_figures(tmp_path):
    results = pd.DataFrame({"dataset": ["d"] * 4, "method": ["m"] * 4, "shots": [1, 1, 2, 2], "accuracy": [1.0, 2.0, 3.0, 4.0]})
    path = plots.save(plots.shot_curves(results), "00_tour", "curve")
    assert path == project_dir("figures") / "00_tour" / "curve.png" and path.stat().st_size > 1000


def test_confidence_bands_stay_within_0_and_100_percent():
    # two seeds at 90 and 100 %: the t-interval (± 63.5 points) passes 100 %, accuracy cannot
    results = pd.DataFrame({"dataset": ["d"] * 4, "method": ["m"] * 4, "shots": [1, 1, 2, 2],
                            "accuracy": [90.0, 100.0, 2.0, 4.0]})
    band = plots.shot_curves(results).axes[0].collections[0]
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.max() == 100.0 and ys.min() == 0.0
