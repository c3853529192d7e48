"""05_clip_cite's experiment helpers: one fine-tuning fit scored along its WiSE-FT interpolation path (Liu et
al., 2024, Eq. 7, Fig. 5) serves several arms of the comparison."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from fslib.bench import Stage, dataset_sizes
from fslib.evaluation import harmonic_mean_by_seed, summarise
from fslib.protocols import LADDER_TRIES

ABLATION_ROWS = 6  # Table 4 and Fig. 4's variants: DVA, SCL, DVA+SCL, DVA+VLD, FrozenTC, FrozenTE


def at_ratio(results: pd.DataFrame, rows: dict[str, tuple[str, float]]) -> pd.DataFrame:
    """Rows of a ``base_to_new`` run with a ``ratio`` column, relabelled: ``{label: (method, ratio)}``.
    How one fit serves several arms: plain fine-tuning (α = 1) and Table 4's DVA row (α = 0.5) share
    the DVA-only fit, and α = 0 is zero-shot with CLIP-CITE's own single prompt."""
    return pd.concat([results[(results.method == method) & (results.ratio == ratio)].assign(method=label)
                      for label, (method, ratio) in rows.items()], ignore_index=True)


def interpolation_path(ratios: Sequence[float]) -> list[dict]:
    """``variations`` for :func:`~fslib.protocols.base_to_new`: a fine-tuned model is scored at every
    WiSE-FT ratio in ``ratios`` (its test-time setting ``ratio``); any other method once, as it is."""
    return [{"ratio": ratio} for ratio in ratios]


# -- figures ---------------------------------------------------------------------------------------
def ablation_bars(ablation: pd.DataFrame, title: str = "loss ablation (95% CI over seeds)") -> plt.Figure:
    """Base, new and HM(mean base, mean new) per method, bars with 95% CIs over seeds (``ablation``:
    base-to-new rows; methods in order of first appearance)."""
    long = harmonic_mean_by_seed(ablation).melt(id_vars=["method", "seed"], value_vars=["base", "new", "HM"], var_name="metric", value_name="accuracy")
    summary = summarise(long, ["method", "metric"])
    methods = list(dict.fromkeys(ablation["method"]))
    fig, ax = plt.subplots(figsize=(1.3 * len(methods) + 2, 3.6))
    for i, metric in enumerate(("base", "new", "HM")):
        rows = summary[summary["metric"] == metric].set_index("method").loc[methods]
        ax.bar(np.arange(len(methods)) + (i - 1) * 0.27, rows["mean"], 0.27, yerr=rows["ci95"], capsize=2, label=metric)
    ax.set_xticks(np.arange(len(methods)), methods)
    ax.set(ylabel="accuracy (%)", title=title, ylim=(0, 1.25 * (summary["mean"] + summary["ci95"]).max()))  # legend headroom
    ax.legend(ncols=3, fontsize=8, loc="upper center")
    fig.tight_layout()
    return fig


def planned_work(P: SimpleNamespace) -> list[Stage]:
    """05's work at parameters ``P`` with named ``datasets``, counted before it runs (:func:`fslib.bench.expected_cost`):
    the two tower-training arms' LR search, their base-to-new fits scored along the interpolation path, the loss
    ablation (at one dataset: the largest, an upper bound) and the few-shot curve. The rivals on cached features
    cost seconds and are left out."""
    sizes = dataset_sizes(P.datasets, P.test_per_class)
    curve = dataset_sizes([P.curve_dataset], P.test_per_class).iloc[0]
    seeds, epochs = len(P.seeds), P.epochs
    per_fit = P.shots * sizes.base * epochs  # image passes of one fit on each dataset
    scored = sizes.val + sizes.test
    searched = 2 * LADDER_TRIES
    return [
        Stage("choosing the LRs (first seed, one dataset)", searched, int(searched * per_fit.max()),
              int(searched * sizes.val.max() // 2)),
        Stage("base-to-new: fine-tuning, CLIP-CITE", 2 * seeds * len(sizes), int(2 * seeds * per_fit.sum()),
              int(seeds * scored.sum() * (1 + len(P.ratios)) + scored.sum())),
        Stage("loss ablation (one dataset)", ABLATION_ROWS * seeds, int(ABLATION_ROWS * seeds * per_fit.max()),
              int(ABLATION_ROWS * seeds * sizes.test.max())),
        Stage(f"few-shot curve ({P.curve_dataset})", 2 * seeds * len(P.curve_shots),
              int(2 * seeds * sum(P.curve_shots) * curve.classes * epochs),
              int(3 * seeds * len(P.curve_shots) * curve.test)),
    ]
