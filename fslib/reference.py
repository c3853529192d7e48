"""The numbers the papers print, as data (MAMF's and LLU's results tables could not be read from the papers,
so none of theirs is here): what a run on real CLIP can be held against, and what a run on the
embedded world is shown beside as context (never compared with: the protocols differ).

Each record is one printed number with where it is printed and under which protocol; nothing here is
computed or re-derived. A paper's own conventions travel with its numbers (``protocol``): APEX averages the
harmonic mean as the mean of the per-dataset HMs, CoCoOp and CLIP-CITE as the HM of the mean base and new
accuracies, and the averages are over different numbers of seeds.

:func:`beside_run` puts a run's base, new and HM averages beside a table's, by that table's HM convention: with the
difference where the run matches the table's protocol (:data:`PROTOCOLS`: backbone, weights, datasets, shots),
as context otherwise.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from fslib.evaluation import harmonic_mean_by_seed, mean_ci, mean_of_harmonic_means_by_seed
from fslib.scales import COOP_DATASETS


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

_CITE_TABLE_2 = ("CLIP ViT-B/16 fine-tuned on 16-shot ImageNet, scored on ImageNet (ID) and its four shifted test "
                 "sets; OOD average = mean of the four targets, except the zero-shot row's printed 57.2 (its four "
                 "targets average 57.4)")
_CITE_DG = {  # method: (ImageNet, -V2, -S, -A, -R, average over the four targets), Table 2
    "CLIP (zero-shot)": (66.7, 60.8, 46.1, 47.8, 74.8, 57.2), "fine-tuning": (68.2, 61.9, 46.8, 46.4, 75.1, 57.6),
    "CoOp": (71.5, 64.2, 48.0, 49.7, 75.2, 59.3), "CoCoOp": (71.0, 64.2, 48.8, 50.6, 76.2, 59.9),
    "MaPLe": (70.7, 64.1, 49.1, 50.9, 77.0, 60.3), "CLIPood": (71.6, 64.9, 49.3, 50.4, 77.2, 60.4),
}
_SMAT_TABLE = ("main results table (presumably Table 1; backbone presumably DINO ViT-S: both unconfirmed), 5-way "
               "Meta-Dataset-style episodes, ID = mean over 8 meta-training domains, OOD = mean over 10 held-out "
               "domains; +full / +LoRA: with test-time fine-tuning; PMF's rows re-run by the authors (†)")
_SMAT_AVERAGES = {  # method: (ID average, OOD average)
    "pre-trained": (71.29, 64.07), "PMF": (84.23, 64.10), "SoftMerge": (84.40, 64.87), "SMAT": (85.14, 67.27),
    "pre-trained + full": (77.81, 74.16), "PMF + full": (84.99, 72.73), "SoftMerge + full": (85.56, 74.08),
    "SMAT + full": (85.81, 75.31), "pre-trained + LoRA": (79.47, 74.51), "PMF + LoRA": (85.59, 72.91),
    "SMAT + LoRA": (85.88, 75.02),
}

REPORTED: list[Reported] = [
    *(Reported("APEX", "Yang, Ko, Yun 2023, Table 2", "average of 11", method, metric, value, _APEX_TABLE_2)
      for method, values in _APEX_AVERAGES.items() for metric, value in zip(("base", "new", "HM"), values)),
    *(Reported("CLIP-CITE", "Liu, Li, Yu et al. 2024, Table 1", "average of 11", method, metric, value, _CITE_TABLE_1)
      for method, values in _CITE_AVERAGES.items() for metric, value in zip(("base", "new", "HM"), values)),
    *(Reported("CLIP-CITE", "Liu, Li, Yu et al. 2024, Table 2", target, method, "accuracy", value, _CITE_TABLE_2)
      for method, values in _CITE_DG.items()
      for target, value in zip(("ImageNet", "ImageNet-V2", "ImageNet-Sketch", "ImageNet-A", "ImageNet-R",
                                "average of 4 targets"), values)),
    *(Reported("SMAT", "Chen et al. 2024, main results table", dataset, method, "accuracy", value, _SMAT_TABLE)
      for method, values in _SMAT_AVERAGES.items()
      for dataset, value in zip(("ID average of 8", "OOD average of 10"), values)),
]


def reported(paper: str, source: str | None = None) -> pd.DataFrame:
    """The records of ``paper`` (and of ``source``, a table or figure, if given), one row each."""
    rows = [asdict(r) for r in REPORTED if r.paper == paper and (source is None or r.source.endswith(source))]
    if not rows:
        papers = sorted({r.paper for r in REPORTED})
        raise ValueError(f"no reported numbers for paper={paper!r}, source={source!r}; papers: {', '.join(papers)}")
    return pd.DataFrame(rows)


def accuracy_table(paper: str, source: str) -> pd.DataFrame:
    """``paper``'s accuracies of ``source`` as printed, one row per method and one column per dataset."""
    return reported(paper, source).pivot_table(index="method", columns="dataset", values="value", sort=False)


def averages_table(paper: str, source: str) -> pd.DataFrame:
    """``paper``'s base / new / HM averages of ``source`` as printed, one row per method."""
    table = reported(paper, source).pivot_table(index="method", columns="metric", values="value", sort=False)
    return table[["base", "new", "HM"]]


HM_OF_MEANS = "HM of the mean base and new accuracies"
MEAN_OF_HMS = "mean of the per-dataset HMs"


@dataclass(frozen=True)
class Protocol:
    """What a run must share with a printed table for its numbers to be held against the table's."""

    model: str
    pretrained: str
    datasets: tuple[str, ...]
    shots: int
    hm: str  # the table's average-HM convention: HM_OF_MEANS or MEAN_OF_HMS


PROTOCOLS: dict[tuple[str, str], Protocol] = {
    ("APEX", "Table 2"): Protocol("ViT-B-16", "openai", COOP_DATASETS, 16, MEAN_OF_HMS),
    ("CLIP-CITE", "Table 1"): Protocol("ViT-B-16", "openai", COOP_DATASETS, 16, HM_OF_MEANS),
}


def mismatches(paper: str, source: str, model: str, pretrained: str, datasets: Sequence[str], shots: int) -> list[str]:
    """How a run differs from the protocol of ``paper``'s ``source`` table (empty: it matches); a dataset counts by
    its name, or a folder by its own name (``/data/imagenet``: ``imagenet``)."""
    protocol = PROTOCOLS[(paper, source)]
    ran = sorted({Path(name).name.lower() for name in datasets})
    return [f"{what} {got!r}, the paper's {want!r}" for what, got, want in (
        ("model", model, protocol.model), ("pretrained", pretrained, protocol.pretrained),
        ("datasets", ran, sorted(protocol.datasets)), ("shots", shots, protocol.shots)) if got != want]


def run_averages(results: pd.DataFrame, hm: str) -> pd.DataFrame:
    """Per (method, seed): base and new accuracy averaged over datasets, and the HM by convention ``hm``
    (``results``: base-to-new rows ``method, seed, dataset, part, accuracy``)."""
    table = harmonic_mean_by_seed(results)
    if hm == MEAN_OF_HMS:
        table["HM"] = [mean_of_harmonic_means_by_seed(results, method).loc[seed]
                       for method, seed in zip(table.method, table.seed)]
    elif hm != HM_OF_MEANS:
        raise ValueError(f"hm={hm!r}; allowed: {HM_OF_MEANS!r}, {MEAN_OF_HMS!r}")
    return table


def beside_run(paper: str, source: str, results: pd.DataFrame, methods: Mapping[str, str], model: str,
               pretrained: str, shots: int) -> pd.DataFrame:
    """``paper``'s base / new / HM averages of ``source`` beside this run's (``methods``: the run's method name
    -> the paper's row), each run number the mean over seeds with its 95% CI, averaged by the table's own HM
    convention. Where the run matches the table's protocol the last column is run − paper; otherwise it says
    what differs, and the paper's numbers are context from another protocol, not a target."""
    printed = averages_table(paper, source)
    protocol = PROTOCOLS[(paper, source)]
    differs = mismatches(paper, source, model, pretrained, results.dataset.unique(), shots)
    per_seed = run_averages(results[results.method.isin(list(methods))], protocol.hm)
    rows = []
    for method, row in methods.items():
        seeds = per_seed[per_seed.method == method]
        for metric in ("base", "new", "HM"):
            ci = mean_ci(seeds[metric].tolist())
            rows.append({"method": f"{method} (paper: {row})", "metric": metric, "paper": printed.loc[row, metric],
                         "this run": str(ci),
                         "run − paper": f"{ci.mean - printed.loc[row, metric]:+.1f}" if not differs else "context"})
    table = pd.DataFrame(rows).set_index(["method", "metric"])
    verdict = ("matches its protocol" if not differs
               else "does not match its protocol (" + "; ".join(differs) + "): the paper's numbers are context")
    print(f"{paper}, {source}; average HM as the {protocol.hm}. This run {verdict}.")
    return table


# SMAT's main table: the row each of 03's variants (variant, test-time fine-tuning) stands beside
SMAT_ROWS = {("pretrained ProtoNet", "none"): "pre-trained", ("dense meta-tuning", "none"): "PMF",
             ("SMAT", "none"): "SMAT", ("pretrained ProtoNet", "full"): "pre-trained + full",
             ("dense meta-tuning", "full"): "PMF + full", ("SMAT", "full"): "SMAT + full"}
SMAT_PROTOCOL = ("DINO ViT-S/16, which open_clip cannot load, on Meta-Dataset's 8 training sources and 10 held-out "
                 "sets with variable-way, variable-shot episodes")


def beside_episodes(results: pd.DataFrame) -> pd.DataFrame:
    """SMAT's ID and OOD averages beside a run's (``results``: 03's test episodes, rows ``variant, finetune,
    domain, dataset, seed, accuracy``): per :data:`SMAT_ROWS` pair, the mean over the run's ID (OOD) datasets of
    the mean episode accuracy, then its mean and 95% CI over seeds. No run of the kit matches SMAT's protocol
    (:data:`SMAT_PROTOCOL`), so the paper's numbers are context."""
    printed = accuracy_table("SMAT", "main results table")
    per_dataset = results.groupby(["variant", "finetune", "domain", "seed", "dataset"]).accuracy.mean()
    per_seed = per_dataset.groupby(["variant", "finetune", "domain", "seed"]).mean()
    rows = []
    for (variant, finetune), row in SMAT_ROWS.items():
        for domain, column in (("ID", "ID average of 8"), ("OOD", "OOD average of 10")):
            rows.append({"method": f"{variant}{' + fine-tuning' if finetune == 'full' else ''} (paper: {row})",
                         "domain": domain, "paper": printed.loc[row, column],
                         "this run": str(mean_ci(per_seed[(variant, finetune, domain)].tolist()))})
    datasets = {domain: sorted(results[results.domain == domain].dataset.unique()) for domain in ("ID", "OOD")}
    print(f"SMAT, main results table: {SMAT_PROTOCOL}. This run's ID average is over {', '.join(datasets['ID'])} "
          f"and its OOD average over {', '.join(datasets['OOD'])}: the paper's numbers are context, not a target.")
    return pd.DataFrame(rows).set_index(["method", "domain"])
