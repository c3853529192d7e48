"""The numbers the papers print, as data: what a run on real CLIP can be held against, and what a run on the
embedded world is shown beside as context (never compared with: the protocols differ).

Each record is one printed number with where it is printed and under which protocol; nothing here is
computed or re-derived. A paper's own conventions travel with its numbers (``protocol``): APEX averages the
harmonic mean as the mean of the per-dataset HMs, CoCoOp and CLIP-CITE as the HM of the mean base and new
accuracies, and the averages are over different numbers of seeds.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd


@dataclass(frozen=True)
class Reported:
    """One printed number: ``value`` (%) of ``metric`` for ``method`` on ``dataset`` in ``source``."""

    paper: str
    source: str
    dataset: str
    method: str
    metric: str
    value: float
    protocol: str


_APEX_TABLE_2 = ("CLIP ViT-B/16, base-to-new over the 11 CoOp datasets, 16 shots, mean over 20 seeds; average HM "
                 "= mean of the per-dataset HMs for APEX and the re-run baselines (80.04; HM of the means would "
                 "be 80.21), HM of the means for the zero-shot CLIP row (CoCoOp's number)")
_APEX_AVERAGES = {  # method: (base, new, HM), Table 2, "Average on 11 datasets"
    "CLIP (zero-shot)": (69.34, 74.22, 71.70), "CLIP-Adapter": (83.23, 70.13, 75.64),
    "CoCoOp": (81.11, 70.55, 75.03), "MaPLe": (82.52, 74.24, 77.86), "ProGrad": (82.55, 72.20, 76.77),
    "APEX": (83.99, 76.76, 80.04),
}

_CITE_TABLE_1 = ("CLIP ViT-B/16, base-to-new over the 11 CoOp datasets, 16 shots, mean over 3 seeds; average HM = HM "
                 "of the mean base and new accuracies (CoCoOp's convention); the baselines' rows are copied from "
                 "their papers")
_CITE_AVERAGES = {  # method: (base, new, HM), Table 1, "Average"
    "CLIP (zero-shot)": (69.34, 74.22, 71.70), "CoOp": (82.69, 63.22, 71.66), "CoCoOp": (80.47, 71.69, 75.83),
    "MaPLe": (82.28, 75.14, 78.55), "CLIPood": (83.90, 74.50, 78.92), "CLIP-CITE": (85.48, 77.08, 81.06),
}

REPORTED: list[Reported] = [
    *(Reported("APEX", "Yang, Ko, Yun 2023, Table 2", "average of 11", method, metric, value, _APEX_TABLE_2)
      for method, values in _APEX_AVERAGES.items() for metric, value in zip(("base", "new", "HM"), values)),
    *(Reported("CLIP-CITE", "Liu, Li, Yu et al. 2024, Table 1", "average of 11", method, metric, value, _CITE_TABLE_1)
      for method, values in _CITE_AVERAGES.items() for metric, value in zip(("base", "new", "HM"), values)),
]


def reported(paper: str, source: str | None = None) -> pd.DataFrame:
    """The records of ``paper`` (and of ``source``, a table or figure, if given), one row each."""
    rows = [asdict(r) for r in REPORTED if r.paper == paper and (source is None or r.source.endswith(source))]
    if not rows:
        papers = sorted({r.paper for r in REPORTED})
        raise ValueError(f"no reported numbers for paper={paper!r}, source={source!r}; papers: {', '.join(papers)}")
    return pd.DataFrame(rows)


def averages_table(paper: str, source: str) -> pd.DataFrame:
    """``paper``'s base / new / HM averages of ``source`` as printed, one row per method."""
    table = reported(paper, source).pivot_table(index="method", columns="metric", values="value", sort=False)
    return table[["base", "new", "HM"]]
