"""The interface every method implements, so notebooks and comparison code treat them alike.

A method is built around a loaded :class:`~fslib.models.Clip`, ``fit`` on a labelled support set,
and then scores images against class names with ``logits``. Class names may differ from the ones it
was fitted on: that is how base-to-new generalisation is evaluated (fit on base, score new). A
method that cannot score unseen classes (a linear probe) raises a ``ValueError`` saying so.

``images`` may be an :class:`~fslib.data.ImageDataset` or, for methods on a frozen image encoder,
a tensor of cached image features from :func:`fslib.features.encode_images`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch

from fslib.data import ImageDataset
from fslib.evaluation import select_on_validation
from fslib.features import encode_images
from fslib.fewshot import restrict_classes
from fslib.models import Clip

Images = ImageDataset | torch.Tensor


class Method(ABC):
    """Base class: subclasses set ``name`` and implement ``fit`` and ``logits``."""

    name: str = "method"
    # seconds of fitting proper, set by methods on cached features: training only, feature encoding
    # excluded (it is shared by every method on the same frozen encoder). None: the wall time of fit counts
    fit_seconds: float | None = None

    def __init__(self, clip: Clip):
        self.clip = clip
        self.classnames: list[str] = []
        self.templates: list[str] = []

    @abstractmethod
    def fit(self, support: ImageDataset) -> "Method":
        """Adapt to ``support`` (its images, labels, class names and templates). Returns ``self``."""

    @abstractmethod
    def logits(self, images: Images, classnames: Sequence[str] | None = None) -> torch.Tensor:
        """(N, C) scores of ``images`` against ``classnames`` (default: the fitted classes), on the CPU
        whatever device the model is on, so evaluation code never has to ask."""

    def trainable_parameters(self) -> int:
        """Number of parameters ``fit`` trains (0 for zero-shot)."""
        return 0

    def image_features(self, images: Images) -> torch.Tensor:
        """Frozen-encoder features: a tensor is taken as given, a dataset is encoded (cached)."""
        if isinstance(images, torch.Tensor):
            return images
        return encode_images(self.clip, images, progress=False)

    def _remember(self, support: ImageDataset) -> None:
        self.classnames, self.templates = list(support.classnames), list(support.templates)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, trainable={self.trainable_parameters():,})"


class TunedOnValidation(Method):
    """A method whose hyper-parameter is chosen, at every ``fit``, on the validation split of the support
    set's own dataset and classes (how Tip-Adapter and CLIP-Adapter set theirs), then refitted.

    ``make(value)`` builds the method for one value of ``grid``; ``validation`` maps a dataset name to
    its validation split (the support's classes are picked out by name). Test images are never seen.
    With a ``memo`` dict shared across seeds, the value chosen for a dataset, class set and shot count
    is searched once (on the first seed's support) and reused: one search per dataset, as papers tune.
    """

    def __init__(self, make: Callable[[object], Method], grid: Sequence, validation: Mapping[str, ImageDataset],
                 memo: dict | None = None):
        self.chosen = make(grid[0])
        super().__init__(self.chosen.clip)
        self.name, self.make, self.grid, self.validation, self.memo = self.chosen.name, make, list(grid), validation, memo
        self.table: pd.DataFrame | None = None

    def fit(self, support: ImageDataset) -> "TunedOnValidation":
        self._remember(support)
        key = (support.name, tuple(support.classnames), len(support))
        if self.memo is not None and key in self.memo:
            value, self.table = self.memo[key]
        else:
            if support.name not in self.validation:
                raise ValueError(f"no validation split given for {support.name!r}; given: {', '.join(self.validation)}")
            val = self.validation[support.name]
            val = restrict_classes(val, [val.classnames.index(c) for c in support.classnames], "val")
            value, self.table = select_on_validation(self.make, self.grid, support, val)
            if self.memo is not None:
                self.memo[key] = value, self.table
        self.chosen = self.make(value).fit(support)
        self.fit_seconds = self.chosen.fit_seconds
        return self

    def logits(self, images: "ImageDataset | torch.Tensor", classnames: Sequence[str] | None = None) -> torch.Tensor:
        return self.chosen.logits(images, classnames)

    def trainable_parameters(self) -> int:
        return self.chosen.trainable_parameters()
