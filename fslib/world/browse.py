"""An ipywidgets browser for the embedded world: downstream datasets by class, and pretraining captions.

It draws its first view on creation, so it also shows something (and stays inert) under papermill.
"""
from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np

from fslib.world.corpus import sample_pretraining_pair
from fslib.world.render import render
from fslib.world.suite import WORLD_DATASETS, load_world_dataset


def _show_images(out: widgets.Output, images: list[np.ndarray], titles: list[str]) -> None:
    out.clear_output(wait=True)
    with out:
        fig, axes = plt.subplots(1, len(images), figsize=(1.9 * len(images), 2.3))
        for ax, image, title in zip(np.atleast_1d(axes), images, titles):
            ax.imshow(image)
            ax.set_title(title, fontsize=7, wrap=True)
            ax.axis("off")
        plt.show()


def browse(per_view: int = 6) -> widgets.Widget:
    """Tabs: *datasets* (pick a dataset, split and class) and *pretraining captions* (reshuffle)."""
    name = widgets.Dropdown(options=list(WORLD_DATASETS), value="counting", description="dataset")
    split = widgets.Dropdown(options=["train", "val", "test"], value="train", description="split")
    label = widgets.Dropdown(description="class")
    data_out, caption_out = widgets.Output(), widgets.Output()
    shuffle = widgets.Button(description="new captions")
    rng = np.random.default_rng(0)

    def show_class(*_):
        if label.value is None:
            return
        data = load_world_dataset(name.value, split.value)
        members = np.flatnonzero(data.labels == label.value)[:per_view]
        _show_images(data_out, [data.images[i] for i in members], [data.classnames[label.value]] * len(members))

    def pick_dataset(*_):
        data = load_world_dataset(name.value, split.value)
        label.options = [(c, i) for i, c in enumerate(data.classnames)]
        label.value = 0
        show_class()

    def show_captions(*_):
        pairs = [sample_pretraining_pair(rng) for _ in range(per_view)]
        _show_images(caption_out, [render(scene, rng) for scene, _ in pairs], [caption for _, caption in pairs])

    name.observe(pick_dataset, "value")
    split.observe(pick_dataset, "value")
    label.observe(show_class, "value")
    shuffle.on_click(show_captions)
    pick_dataset()
    show_captions()
    tabs = widgets.Tab([widgets.VBox([widgets.HBox([name, split, label]), data_out]),
                        widgets.VBox([shuffle, caption_out])])
    tabs.set_title(0, "datasets")
    tabs.set_title(1, "pretraining captions")
    return tabs
