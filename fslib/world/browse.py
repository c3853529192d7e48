"""An ipywidgets browser for the embedded world: downstream datasets by class, and pretraining captions.

It draws its first view on creation as ordinary figures, so a saved or headless notebook shows them too; in a
running notebook the controls redraw them in place (as :class:`fslib.widgets.LiveFigure` does).
"""
from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from fslib.widgets import Controls
from fslib.world.corpus import sample_pretraining_pair
from fslib.world.render import render
from fslib.world.suite import WORLD_DATASETS, load_world_dataset


def _image_row(images: list[np.ndarray], titles: list[str]) -> plt.Figure:
    fig, axes = plt.subplots(1, len(images), figsize=(1.9 * len(images), 2.3))
    for ax, image, title in zip(np.atleast_1d(axes), images, titles):
        ax.imshow(image)
        ax.set_title(title, fontsize=7, wrap=True)
        ax.axis("off")
    plt.close(fig)  # shown through a display handle only
    return fig


class Browser:
    """Two rows of controls, each above an ordinary figure that it redraws: a saved notebook keeps both figures."""

    def __init__(self, per_view: int = 6) -> None:
        self.per_view, self.rng = per_view, np.random.default_rng(0)
        self.name = widgets.Dropdown(options=list(WORLD_DATASETS), value="counting", description="dataset")
        self.split = widgets.Dropdown(options=["train", "val", "test"], value="train", description="split")
        self.label = widgets.Dropdown(description="class")
        self.shuffle = widgets.Button(description="new captions")
        self._handles: dict = {}
        self._pick_dataset()
        self.captions = self._caption_figure()
        self.name.observe(self._pick_dataset, "value")
        self.split.observe(self._pick_dataset, "value")
        self.label.observe(self._show_class, "value")
        self.shuffle.on_click(self._new_captions)

    def _class_figure(self) -> plt.Figure:
        data = load_world_dataset(self.name.value, self.split.value)
        members = np.flatnonzero(data.labels == self.label.value)[:self.per_view]
        return _image_row([data.images[i] for i in members], [data.classnames[self.label.value]] * len(members))

    def _caption_figure(self) -> plt.Figure:
        pairs = [sample_pretraining_pair(self.rng) for _ in range(self.per_view)]
        return _image_row([render(scene, self.rng) for scene, _ in pairs], [caption for _, caption in pairs])

    def _pick_dataset(self, *_) -> None:
        data = load_world_dataset(self.name.value, self.split.value)
        self.label.options = [(c, i) for i, c in enumerate(data.classnames)]
        self.label.value = 0
        self._show_class()

    def _show_class(self, *_) -> None:
        if self.label.value is None:
            return
        self.examples = self._class_figure()
        if "examples" in self._handles:
            self._handles["examples"].update(self.examples)

    def _new_captions(self, *_) -> None:
        self.captions = self._caption_figure()
        self._handles["captions"].update(self.captions)

    def _ipython_display_(self) -> None:
        display(Controls([self.name, self.split, self.label]))
        self._handles["examples"] = display(self.examples, display_id=True)
        display(Controls([self.shuffle]))
        self._handles["captions"] = display(self.captions, display_id=True)


def browse(per_view: int = 6) -> Browser:
    """Downstream datasets by class (pick a dataset, split and class) and pretraining captions (reshuffle)."""
    return Browser(per_view)
