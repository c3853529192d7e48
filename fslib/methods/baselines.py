"""Baselines every notebook compares against: zero-shot CLIP and a linear probe."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from fslib.data import ImageDataset
from fslib.methods.base import Images, Method
from fslib.methods.registry import Knob, register_method
from fslib.models import Clip, zero_shot_classifier


class ZeroShot(Method):
    """CLIP's zero-shot classifier with prompt ensembling (Radford et al., 2021, Sec. 3.1.4) over the dataset's
    templates, or over its first ``prompts`` of them (``prompts=1``: one prompt per class, as the methods that
    fine-tune with a single prompt score classes)."""

    name = "zero-shot"

    def __init__(self, clip: Clip, prompts: int | None = None):
        super().__init__(clip)
        if prompts is not None and prompts < 1:
            raise ValueError(f"prompts={prompts} is not allowed; give None (every template) or at least 1")
        self.prompts = prompts

    def fit(self, support: ImageDataset) -> "ZeroShot":
        self._remember(support)
        self.templates = self.templates[:self.prompts]
        return self

    def logits(self, images: Images, classnames: Sequence[str] | None = None) -> torch.Tensor:
        weights = zero_shot_classifier(self.clip, classnames or self.classnames, self.templates)
        return self.clip.logit_scale * self.image_features(images) @ weights.T


class LinearProbe(Method):
    """Multinomial logistic regression on frozen, L2-normalised image features.

    The linear-probe protocol of Radford et al. (2021, Sec. 3.2): scikit-learn's L-BFGS logistic
    regression. ``C`` is the inverse L2 strength; with unit-norm features it needs to be large.
    It has no text side, so it can only score the classes it was fitted on.
    """

    name = "linear probe"
    scores_unseen_classes = False

    def __init__(self, clip: Clip, C: float = 10.0, max_iter: int = 1000):
        super().__init__(clip)
        self.C, self.max_iter = C, max_iter
        self.model: LogisticRegression | None = None

    def fit(self, support: ImageDataset) -> "LinearProbe":
        self._remember(support)
        features = self.image_features(support).numpy()
        self.model = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(features, support.labels)
        return self

    def logits(self, images: Images, classnames: Sequence[str] | None = None) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError("LinearProbe.logits called before fit")
        if classnames is not None and list(classnames) != self.classnames:
            raise ValueError("a linear probe can only score the classes it was fitted on "
                             f"({len(self.classnames)} classes); it has no text side for new classes")
        features = self.image_features(images).numpy()
        # log-probabilities as logits; a class absent from the support set gets -inf
        scores = np.full((len(features), len(self.classnames)), -np.inf, dtype=np.float32)
        scores[:, self.model.classes_] = self.model.predict_log_proba(features)
        return torch.from_numpy(scores)

    def trainable_parameters(self) -> int:
        return 0 if self.model is None else int(self.model.coef_.size + self.model.intercept_.size)

    def get_extra_state(self) -> dict:
        return {**super().get_extra_state(), "model": self.model}  # scikit-learn's fitted estimator

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self.model = state["model"]


register_method("zero-shot", ZeroShot, paper="Radford et al., 2021, Sec. 3.1.4", compared=True)
register_method("linear probe", LinearProbe, paper="Radford et al., 2021, Sec. 3.2", compared=True,
                parameter_efficient=True, knob=Knob("C", (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0), 1))
