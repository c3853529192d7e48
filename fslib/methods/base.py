"""The contract every method fulfils, so notebooks, drivers and 06 treat them alike.

A :class:`Method` is an ``nn.Module`` built around a loaded :class:`~fslib.models.Clip`: ``fit`` adapts it
to a labelled support set, then ``logits`` scores images against class names (``forward`` scores them
against the fitted classes). Class names may differ from the fitted ones: that is how base-to-new
generalisation is evaluated (fit on base, score new). What ``fit`` learned is the module's state:
``state_dict()`` saves it and ``load_state_dict`` into a fresh method of the same configuration
reproduces its logits; ``.to(device)`` moves it. The frozen CLIP is not part of that state (it is a
plain attribute, shared by every method built on it).

A method *declares* what it can do, and drivers ask before they call:

* ``scores_unseen_classes``: it has a text side, so it can score classes it was not fitted on (a linear
  probe or a ProtoNet head cannot; asking them to raises a ``ValueError``, a genuine error);
* ``needs_pixels``: it changes the image tower, so ``images`` must be an
  :class:`~fslib.data.ImageDataset`, not cached features;
* ``meta_trains``: it has a meta-training step on episodes before its per-task ``fit``;
* ``test_time_settings``: keyword arguments ``logits`` takes beyond images and class names (CLIP-CITE's
  interpolation ratio, APEX's ensemble), so one fit can be scored several ways, never by setting an
  attribute from outside.

``images`` may be an :class:`~fslib.data.ImageDataset` or, for methods on a frozen image encoder, a
tensor of cached image features from :func:`fslib.features.encode_images`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping, Sequence

import torch
import torch.nn as nn

from fslib.data import ImageDataset
from fslib.features import encode_images
from fslib.models import Clip

Images = ImageDataset | torch.Tensor


class Method(nn.Module, ABC):
    """Base class: subclasses set ``name`` and implement ``fit`` and ``logits`` (see the module docstring)."""

    name: str = "method"
    scores_unseen_classes: ClassVar[bool] = True
    needs_pixels: ClassVar[bool] = False
    meta_trains: ClassVar[bool] = False
    test_time_settings: ClassVar[tuple[str, ...]] = ()
    # seconds of fitting proper, set by methods on cached features: training only, feature encoding
    # excluded (it is shared by every method on the same frozen encoder). None: the wall time of fit counts
    fit_seconds: float | None = None

    def __init__(self, clip: Clip):
        super().__init__()
        self.clip = clip  # a dataclass, not a module: the frozen CLIP is shared, not part of the state
        self.classnames: list[str] = []
        self.templates: list[str] = []

    @abstractmethod
    def fit(self, support: ImageDataset) -> "Method":
        """Adapt to ``support`` (its images, labels, class names and templates). Returns ``self``."""

    @abstractmethod
    def logits(self, images: Images, classnames: Sequence[str] | None = None, **settings: Any) -> torch.Tensor:
        """(N, C) scores of ``images`` against ``classnames`` (default: the fitted classes), on the CPU
        whatever device the model is on, so evaluation code never has to ask. ``settings`` are the
        method's declared ``test_time_settings``."""

    def forward(self, images: Images) -> torch.Tensor:
        """Scores against the fitted classes: ``method(images)``."""
        return self.logits(images)

    def can_score(self, classnames: Sequence[str]) -> bool:
        """Whether :meth:`logits` scores ``classnames``: any classes with a text side, else the fitted ones."""
        return self.scores_unseen_classes or list(classnames) == self.classnames

    def meta_train(self, episodes: Sequence) -> "Method":
        """Meta-train on N-way episodes before any ``fit`` (methods that declare ``meta_trains``)."""
        raise TypeError(f"{self.name} does not meta-train (meta_trains is False); fit it on a support set")

    def trainable_parameters(self) -> int:
        """Number of parameters ``fit`` trains: the module's own (0 for zero-shot)."""
        return sum(p.numel() for p in self.parameters())

    def image_features(self, images: Images) -> torch.Tensor:
        """Frozen-encoder features: a tensor is taken as given, a dataset is encoded (cached)."""
        if isinstance(images, torch.Tensor):
            return images
        return encode_images(self.clip, images, progress=False)

    def _remember(self, support: ImageDataset) -> None:
        self.classnames, self.templates = list(support.classnames), list(support.templates)

    # -- state: what fit learned ------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        """The fitted classes and templates (and a subclass's non-tensor state), saved with the tensors."""
        return {"classnames": self.classnames, "templates": self.templates}

    def set_extra_state(self, state: dict) -> None:
        self.classnames, self.templates = list(state["classnames"]), list(state["templates"])

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` after :meth:`allocate`: a fresh method has not yet made the
        tensors whose shape depends on the support set (a cache of its features, clustered centres)."""
        self.allocate(state_dict)
        return super().load_state_dict(state_dict, strict, assign)

    def allocate(self, state_dict: Mapping[str, Any]) -> None:
        """Give every parameter and buffer the shape it has in ``state_dict`` (values follow on loading);
        subclasses whose ``fit`` builds submodules build them here first."""
        for key, value in state_dict.items():
            owner_name, _, leaf = key.rpartition(".")
            owner = self.get_submodule(owner_name) if owner_name else self
            current = getattr(owner, leaf, None) if leaf in owner._parameters or leaf in owner._buffers else None
            if not isinstance(value, torch.Tensor) or (current is not None and current.shape == value.shape):
                continue
            device = current.device if current is not None else self.clip.device
            empty = torch.empty(value.shape, dtype=value.dtype, device=device)
            if leaf in owner._parameters:
                owner._parameters[leaf] = nn.Parameter(empty, requires_grad=current.requires_grad)
            elif leaf in owner._buffers:
                owner._buffers[leaf] = empty

    def extra_repr(self) -> str:
        return f"name={self.name!r}, trainable={self.trainable_parameters():,}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
