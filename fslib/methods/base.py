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
from typing import Sequence

import torch

from fslib.data import ImageDataset
from fslib.features import encode_images
from fslib.models import Clip

Images = ImageDataset | torch.Tensor


class Method(ABC):
    """Base class: subclasses set ``name`` and implement ``fit`` and ``logits``."""

    name: str = "method"

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
