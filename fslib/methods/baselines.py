"""Baselines every notebook compares against: zero-shot CLIP and a linear probe."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from sklearn.linear_model import LogisticRegression

from fslib.data import ImageDataset, load_dataset
from fslib.evaluation import evaluate
from fslib.fewshot import base_new_split
from fslib.methods.base import Images, Method
from fslib.methods.registry import Knob, register_method
from fslib.models import Clip, zero_shot_classifier


class ZeroShot(Method):
    """CLIP's zero-shot classifier with prompt ensembling (Radford et al., 2021, Sec. 3.1.4)."""

    name = "zero-shot"

    def fit(self, support: ImageDataset) -> "ZeroShot":
        self._remember(support)
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
                knob=Knob("C", (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0), 1))


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


def new_class_signal(clip: Clip, names: Sequence[str], split: str = "val", above_chance: float = 10.0,
                     ceiling: float = 90.0) -> pd.DataFrame:
    """Which datasets can show whether a method keeps its new classes: zero-shot accuracy on the base
    and new halves of ``split`` (validation by default, so no test image decides it), with
    ``informative`` set where new-class accuracy lies ``above_chance`` points over chance and below
    ``ceiling``. At chance there is nothing to lose, at the ceiling no room to show a loss."""
    rows = []
    for name in names:
        base, new = base_new_split(load_dataset(name, split))
        zero_shot = {part: evaluate(ZeroShot(clip).fit(data), data) for part, data in (("base", base), ("new", new))}
        chance = 100 / new.num_classes
        rows.append({"dataset": name, "zero-shot base": zero_shot["base"], "zero-shot new": zero_shot["new"],
                     "new chance": chance,
                     "informative": bool(chance + above_chance <= zero_shot["new"] <= ceiling)})
    return pd.DataFrame(rows).set_index("dataset")
