"""Live widgets for the papers' cheap knobs: move a control and the figure redraws in place.

Each explorer returns a :class:`LiveFigure`. Displayed (the last line of a cell), it shows its controls
and its first view as an ordinary figure output, so a papermill run saves a real figure; moving a
control in JupyterLab recomputes only what the knob touches (no training) and replaces that figure.

- :func:`explore_templates`: CLIP's prompt templates, how many are averaged (Radford et al., 2021, §3.1.4);
- :func:`explore_apex`: APEX's β and a fixed α on a fitted model's new classes (Yang et al., 2023, Alg. 2);
- :func:`explore_locality`: LLU's κ and γ on the 2-D toy field (Ibing et al., 2022, Eq. 3);
- :func:`explore_interpolation`: CLIP-CITE's weight-interpolation ratio (Liu et al., 2024, Fig. 5).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import display

from fslib.data import ImageDataset, load_dataset
from fslib.evaluation import accuracy, harmonic_mean_by_seed, summarise
from fslib.features import encode_images
from fslib.methods import apex
from fslib.methods.llu import update_field_2d
from fslib.models import Clip, ensemble_prompts
from fslib.studies.llu import update_fields


@dataclass
class LiveFigure:
    """Controls plus a figure that ``draw(**values)`` redraws whenever a control's value changes."""

    draw: Callable[..., plt.Figure]
    controls: dict[str, widgets.ValueWidget]
    figure: plt.Figure = field(init=False)
    redraws: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._handle = None
        self.figure = self._render()
        for control in self.controls.values():
            control.observe(self._redraw, names="value")

    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def _render(self) -> plt.Figure:
        figure = self.draw(**self.values())
        plt.close(figure)  # shown through the display handle only, never again by the inline backend
        return figure

    def _redraw(self, _change: dict) -> None:
        self.figure, self.redraws = self._render(), self.redraws + 1
        if self._handle is not None:
            self._handle.update(self.figure)

    def _ipython_display_(self) -> None:
        display(Controls(list(self.controls.values()), layout=widgets.Layout(flex_flow="row wrap")))
        self._handle = display(self.figure, display_id=True)


class Controls(widgets.HBox):
    """A row of controls whose saved view, where no live kernel draws the widgets (a saved or untrusted notebook,
    nbviewer, GitHub), is one line naming them instead of the ``HBox(children=(IntSlider(...`` repr."""

    def _repr_mimebundle_(self, **kwargs) -> dict:
        bundle = super()._repr_mimebundle_(**kwargs)
        names = ", ".join(child.description or type(child).__name__ for child in self.children)
        bundle["text/plain"] = f"[controls: {names}; they move the figure below in a running notebook]"
        return bundle


def _slider(kind: type, description: str, **options) -> widgets.ValueWidget:
    return kind(description=description, continuous_update=False, style={"description_width": "initial"}, **options)


def _chance_bars(ax: plt.Axes, labels: Sequence[str], values: Sequence[float], chance: Sequence[float]) -> None:
    ax.bar(labels, values, color=sns.color_palette()[0])
    ax.scatter(labels, chance, marker="_", s=400, color="black", zorder=3, label="chance")
    ax.set(ylim=(0, 100), ylabel="accuracy (%)")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(loc="upper right", fontsize=8)


def explore_templates(clip: Clip, datasets: Sequence[str]) -> LiveFigure:
    """Zero-shot test accuracy per dataset when the class weights average the first ``k`` of its templates,
    optionally with one template of your own. Image features are encoded once; a move encodes text only."""
    tests = {name: load_dataset(name, "test") for name in datasets}
    images = {name: encode_images(clip, test, progress=False) for name, test in tests.items()}

    def draw(templates: int, own_template: str) -> plt.Figure:
        scores = []
        for name, test in tests.items():
            chosen = test.templates[:templates] + ([own_template] if "{}" in own_template else [])
            prompts = clip.encode_text([t.format(c) for c in test.classnames for t in chosen])
            weights = ensemble_prompts(prompts.view(len(test.classnames), len(chosen), -1))
            scores.append(accuracy(images[name] @ weights.T, test.labels))
        fig, ax = plt.subplots(figsize=(8, 3.4))
        _chance_bars(ax, list(tests), scores, [100 / len(t.classnames) for t in tests.values()])
        own = f" + {own_template!r}" if "{}" in own_template else ""
        ax.set_title(f"zero-shot accuracy, first {templates} template(s) averaged{own}")
        fig.tight_layout()
        return fig

    most = max(len(test.templates) for test in tests.values())
    return LiveFigure(draw, {"templates": _slider(widgets.IntSlider, "templates averaged", min=1, max=most, value=most),
                             "own_template": widgets.Text(value="", placeholder="your template, e.g. a drawing of a {}.",
                                                          description="add", continuous_update=False)})


def explore_apex(method: apex.PromptedCLIP, test: ImageDataset) -> LiveFigure:
    """A fitted APEX (VPT+TA with the ensemble) on ``test``'s classes: α per class against ``d_avg`` and the
    accuracy, for the adaptive α = exp(-β d_avg) or a fixed α. One image pass; a move re-mixes the logits."""
    if not (method.ensemble.modality != "off" and method.train_text_zero_shot is not None):
        raise ValueError(f"{method.name}: explore_apex needs a fitted PromptedCLIP with ensemble=True (APEX)")
    features = method.image_features_pair(test)
    distances = apex.distance_table(method.clip, method.classnames, test.classnames)["d_avg"].to_numpy()

    def draw(beta: float, fixed: bool, alpha: float) -> plt.Figure:
        ensemble = replace(method.ensemble, beta=beta, fixed_alpha=alpha if fixed else None)
        weights = method.alpha(test.classnames, ensemble).numpy()
        score = accuracy(method.logits_from_features(*features, test.classnames, ensemble), test.labels)
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.3), gridspec_kw={"width_ratios": [3, 1]})
        grid = np.linspace(0, max(distances.max() * 1.1, 1e-3), 100)
        left.plot(grid, np.full_like(grid, alpha) if fixed else np.exp(-beta * grid), color="grey", lw=1)
        left.scatter(distances, weights, color=sns.color_palette()[0], zorder=3)
        left.set(xlabel="d_avg: distance of a class to the training classes", ylabel="α (weight of the adapted model)",
                 ylim=(-0.05, 1.05), title=f"fixed α = {alpha:.2f}" if fixed else f"adaptive α, β = {beta:g}")
        _chance_bars(right, [test.name], [score], [100 / len(test.classnames)])
        right.set_title(f"accuracy {score:.1f}%")
        fig.tight_layout()
        return fig

    return LiveFigure(draw, {"beta": _slider(widgets.FloatSlider, "β", min=0, max=12, step=0.5, value=method.ensemble.beta),
                             "fixed": widgets.Checkbox(value=False, description="fixed α instead"),
                             "alpha": _slider(widgets.FloatSlider, "fixed α", min=0, max=1, step=0.05, value=0.5)})


def explore_locality(kappa: float = 10.0, gamma: float = 1.0, rotation_deg: float = 40.0) -> LiveFigure:
    """LLU's update on unit vectors in 2-D: a rotation blended in with weight γ exp(-κ dist) around one
    training centre at angle 0 (:func:`fslib.methods.llu.update_field_2d`)."""
    def draw(kappa: float, gamma: float, rotation_deg: float) -> plt.Figure:
        field_ = update_field_2d(np.array([[1.0, 0.0]]), rotation_deg=rotation_deg, kappa=kappa, gamma=gamma)
        fig = update_fields({kappa: field_})
        fig.axes[0].set_title(f"κ = {kappa:g}, γ = {gamma:g}, rotation {rotation_deg:g}°")
        return fig

    return LiveFigure(draw, {"kappa": _slider(widgets.FloatSlider, "κ", min=0, max=50, step=0.5, value=kappa),
                             "gamma": _slider(widgets.FloatSlider, "γ", min=0, max=1, step=0.05, value=gamma),
                             "rotation_deg": _slider(widgets.FloatSlider, "rotation (°)", min=-90, max=90, step=5,
                                                     value=rotation_deg)})


def explore_interpolation(path: pd.DataFrame, method: str = "CLIP-CITE") -> LiveFigure:
    """Base, new and harmonic-mean accuracy of ``method`` at one weight-interpolation ratio, mean over the
    datasets with 95% CIs over seeds, beside the whole path. ``path``: rows ``dataset, method, seed,
    ratio, part, accuracy`` of fits already scored along the path (no refitting)."""
    rows = path[path.method == method]
    if rows.empty:
        raise ValueError(f"no rows for method {method!r}; methods in path: {', '.join(sorted(path.method.unique()))}")
    ratios = sorted(rows.ratio.unique())
    per_seed = pd.concat([rows.groupby(["seed", "ratio", "part"], as_index=False).accuracy.mean()] +
                         [harmonic_mean_by_seed(rows[rows.ratio == r], method).rename("accuracy").reset_index()
                          .assign(ratio=r, part="HM") for r in ratios], ignore_index=True)
    summary = summarise(per_seed, ["ratio", "part"])

    def draw(ratio: float) -> plt.Figure:
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.3), gridspec_kw={"width_ratios": [2, 1]})
        for part, curve in summary.groupby("part", sort=False):
            left.plot(curve.ratio, curve["mean"], marker="o", label=part)
            left.fill_between(curve.ratio, curve["mean"] - curve.ci95, curve["mean"] + curve.ci95, alpha=0.2)
        left.axvline(ratio, color="black", lw=1, ls="--")
        left.set(xlabel="ratio α (0 = pretrained, 1 = fine-tuned)", ylabel="accuracy (%)", title=method)
        left.legend(fontsize=8)
        here = summary[summary.ratio == ratio]
        right.bar(here.part, here["mean"], yerr=here.ci95, capsize=4, color=sns.color_palette()[:len(here)])
        right.set(ylim=(0, 100), title=f"α = {ratio:g} (95% CI over seeds)")
        fig.tight_layout()
        return fig

    middle = ratios[len(ratios) // 2]
    return LiveFigure(draw, {"ratio": widgets.SelectionSlider(options=ratios, value=middle, description="ratio α",
                                                             continuous_update=False)})
