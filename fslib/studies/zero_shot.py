"""Which datasets stage what: zero-shot CLIP's accuracy per dataset (00's difficulty spectrum), the
datasets whose new classes can show a loss (04, 05), and the rule that picks each protocol's datasets (06)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from scipy import stats

from fslib.bench import Stage, dataset_sizes
from fslib.data import ImageDataset, load_dataset
from fslib.evaluation import evaluate
from fslib.fewshot import Episode, base_new_split
from fslib.methods.baselines import ZeroShot
from fslib.models import Clip
from fslib.protocols import episode_accuracies

# The one rule for the datasets a comparison runs each protocol on: zero-shot accuracy on the validation images
# of the part the protocol scores must lie ROOM points above chance (a signal for the shots to sharpen) and ROOM
# points below 100 (something for adaptation to win). At the ceiling every method ties with zero-shot; at chance
# the class names carry nothing a prompt or an adapter could start from.
ROOM = 10.0


def zero_shot_table(clip: Clip, names: Sequence[str], split: str = "test") -> pd.DataFrame:
    """Zero-shot accuracy of ``clip`` on each named dataset, with its 95% Wilson interval over the test
    images: ``dataset, domain, classes, images, chance, zero_shot, ci_low, ci_high``. ``dataset`` is the
    loaded dataset's own name (an image folder's name, not its path), as every other table uses."""
    rows = []
    for name in names:
        data = load_dataset(name, split)
        acc = evaluate(ZeroShot(clip).fit(data), data)
        interval = stats.binomtest(round(acc * len(data) / 100), len(data)).proportion_ci(method="wilson")
        rows.append({"dataset": data.name, "domain": data.domain, "classes": data.num_classes, "images": len(data),
                     "chance": 100 / data.num_classes, "zero_shot": acc,
                     "ci_low": 100 * interval.low, "ci_high": 100 * interval.high})
    return pd.DataFrame(rows)


def zero_shot_halves(clip: Clip, names: Sequence[str], split: str = "val") -> pd.DataFrame:
    """Zero-shot accuracy of ``clip`` on the base and the new half of each dataset's ``split`` (validation by
    default, so no test image decides what is chosen from it): ``zero-shot base, zero-shot new, new chance``
    per dataset."""
    rows = []
    for name in names:
        base, new = base_new_split(load_dataset(name, split))
        zero_shot = {part: evaluate(ZeroShot(clip).fit(data), data) for part, data in (("base", base), ("new", new))}
        rows.append({"dataset": name, "zero-shot base": zero_shot["base"], "zero-shot new": zero_shot["new"],
                     "new chance": 100 / new.num_classes})
    return pd.DataFrame(rows).set_index("dataset")


def zero_shot_episodes(clip: Clip, episodes: Mapping[str, Sequence[Episode]]) -> pd.Series:
    """Zero-shot accuracy per dataset, averaged over its (validation) episodes: what an episodic protocol
    scores, at chance 100 / N."""
    return pd.Series({name: float(np.mean(episode_accuracies(lambda: ZeroShot(clip), per_dataset)))
                      for name, per_dataset in episodes.items()}, name="zero-shot")


def datasets_by_rule(zero_shot: pd.Series, chance: pd.Series | float, keep: int, room: float = ROOM) -> pd.DataFrame:
    """The rule (:data:`ROOM`) applied to ``zero_shot`` accuracy per dataset (validation, never test) with its
    ``chance`` level: a dataset is in the band when zero-shot lies in [chance + room, 100 − room], and of those
    the ``keep`` with the most room on both sides (nearest the band's middle; the first listed on a tie) are
    chosen, a fixed cap that bounds the comparison's cost. Rows per dataset: ``zero-shot, chance, band, in band,
    chosen``, in the order given."""
    if keep < 1:
        raise ValueError(f"keep={keep} is not allowed; keep at least 1 dataset per protocol")
    table = pd.DataFrame({"zero-shot": zero_shot, "chance": chance}, index=zero_shot.index)
    low, high = table.chance + room, 100 - room
    table["band"] = [f"{lo:.1f}-{high:.0f}" for lo in low]
    table["in band"] = table["zero-shot"].between(low, high)
    off_middle = (table["zero-shot"] - (low + high) / 2).abs()
    chosen = off_middle[table["in band"]].sort_values(kind="stable").index[:keep]
    table["chosen"] = table.index.isin(chosen)
    return table.round({"zero-shot": 1, "chance": 1}).rename_axis("dataset")


def protocol_datasets(clip: Clip, pool: Sequence[str], keep: int,
                      shift_levels: Sequence[str] = ()) -> dict[str, pd.DataFrame]:
    """:func:`datasets_by_rule` over ``pool`` for the few-shot protocol (zero-shot accuracy on all classes of the
    validation split) and for base-to-new (on its new classes), indexed by the names given; with a style dial's
    ``shift_levels``, also the one level domain shift fits on (all classes: the source must leave adaptation
    something to win, as ImageNet leaves CLIP in CLIP-CITE's DG protocol)."""
    whole = zero_shot_table(clip, pool, "val").set_axis(list(pool))
    halves = zero_shot_halves(clip, pool)
    tables = {"few-shot": datasets_by_rule(whole.zero_shot, whole.chance, keep),
              "base-to-new": datasets_by_rule(halves["zero-shot new"], halves["new chance"], keep)}
    if shift_levels:
        levels = zero_shot_table(clip, shift_levels, "val").set_axis(list(shift_levels))
        tables["domain shift"] = datasets_by_rule(levels.zero_shot, levels.chance, 1)
    return tables


def chosen(table: pd.DataFrame) -> list[str]:
    """The datasets :func:`datasets_by_rule` chose, in the order given; an error if none lies in the band."""
    names = list(table.index[table.chosen])
    if not names:
        raise ValueError("no dataset leaves zero-shot accuracy the room the rule asks for (fslib.studies.zero_shot."
                         f"ROOM = {ROOM:g} points from chance and from 100): " + ", ".join(
                             f"{name} {row['zero-shot']:.1f} (band {row.band})" for name, row in table.iterrows()))
    return names


def planned_work(P: SimpleNamespace) -> list[Stage]:
    """00's work at parameters ``P`` (:func:`fslib.bench.expected_cost`): zero-shot and a linear probe on frozen
    features, so every training and test image is encoded once; the probes' fits take seconds."""
    sizes = dataset_sizes(P.datasets, None)
    return [Stage("encoding: training and test images", 0, 0, int((sizes.train + sizes.test).sum()))]


# -- figures ---------------------------------------------------------------------------------------
def sample_grid(datasets: Sequence[ImageDataset], per_dataset: int = 8, seed: int = 0) -> plt.Figure:
    """One row per dataset: ``per_dataset`` images from distinct classes, titled by class name."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(datasets), per_dataset, figsize=(1.3 * per_dataset, 1.45 * len(datasets)), squeeze=False)
    for row, dataset in zip(axes, datasets):
        classes = rng.permutation(dataset.num_classes)[:per_dataset]
        for ax, c in zip(row, classes):
            ax.imshow(dataset.image(int(rng.choice(np.flatnonzero(dataset.labels == c)))))
            ax.set_title(dataset.classnames[c], fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[len(classes):]:
            ax.axis("off")
        row[0].set_ylabel(dataset.name, rotation=0, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    return fig


def difficulty_spectrum(table: pd.DataFrame) -> plt.Figure:
    """Horizontal bars of zero-shot accuracy per dataset (columns ``dataset, domain, zero_shot, chance``,
    and ``ci_low, ci_high`` for 95% error bars over the test images)."""
    table = table.sort_values("zero_shot")
    fig, ax = plt.subplots(figsize=(7, 0.38 * len(table) + 1))
    colours = {"id": sns.color_palette()[0], "ood": sns.color_palette()[3]}
    error = [table["zero_shot"] - table["ci_low"], table["ci_high"] - table["zero_shot"]] if "ci_low" in table else None
    ax.barh(table["dataset"], table["zero_shot"], xerr=error, capsize=2,
            color=[colours.get(d, "grey") for d in table["domain"]])
    ax.scatter(table["chance"], table["dataset"], marker="|", s=300, color="black", label="chance", zorder=3)
    for y, value in enumerate(table["zero_shot"]):
        ax.text(min(value + 3, 101), y, f"{value:.0f}", va="center", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles + ax.get_legend_handles_labels()[0], ["in-distribution", "out-of-distribution", "chance"],
              loc="lower right", fontsize=8)
    ax.set(xlim=(0, 108), xlabel="zero-shot accuracy (%)", title="Transfer difficulty (zero-shot, 95% CI)")
    fig.tight_layout()
    return fig
