"""CLIP-CITE: fully fine-tuned CLIP models are efficient few-shot learners (Li et al., 2024, arXiv 2407.04003).

Both encoders are fine-tuned, plus a class weight matrix ``W`` initialised from the text embeddings
of "a photo of a {class}", with (Eq. 6)

    L = L_DVA + λ · L_SCL + η · L_VLD,     λ = 0.7, η = 0.1,

* ``L_DVA`` (Eq. 3): cross-entropy of the image features against ``W`` (the text encoder is not involved);
* ``L_SCL`` (Eq. 4): image↔text contrastive on the batch's (image, class prompt) pairs, both
  directions, with the *other* same-class pairs removed from the negatives (the positive stays in the
  denominator, so that the loss reduces to FLYP's when a batch has one image per class; notes §2.4);
* ``L_VLD`` (Eq. 5): KL between the in-batch image-text similarity distributions (rows of the B×B
  matrix) of the fine-tuned model and of the frozen pretrained CLIP, in the printed direction
  ``KL(p_fine-tuned ‖ p_pretrained)``.

The paper prints no temperature for Eqs. 2-5: every softmax here uses CLIP's own logit scale, frozen.
At inference both encoders are interpolated in weight space with the pretrained ones (Eq. 7, WiSE-FT,
ratio 0.5) and classify zero-shot style with the class prompts, so new classes can be scored.

``FullFineTune`` with other switches gives the baselines of the same harness: plain fine-tuning
(``L_DVA`` only, no interpolation) and FLYP (CLIP's contrastive loss on class prompts, no masking).
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from fslib.data import ImageDataset
from fslib.evaluation import evaluate
from fslib.features import preprocess_images
from fslib.methods.base import Images, Method
from fslib.models import Clip, prompt_logits_cpu, prompt_tokens
from fslib.training import minibatches, train


def dva_loss(image_features: torch.Tensor, classifier: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """Eq. 3: cross-entropy of normalised image features against the normalised class weights."""
    return F.cross_entropy(scale * image_features @ F.normalize(classifier, dim=-1).T, labels)


def same_class_negatives(labels: torch.Tensor) -> torch.Tensor:
    """(B, B) mask of pairs with the same class *off* the diagonal: false negatives to drop."""
    same = labels[:, None] == labels[None, :]
    return same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)


def scl_loss(similarity: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Eq. 4 on a scaled (B, B) image-text similarity matrix; ``labels=None`` keeps all negatives (FLYP)."""
    if labels is not None:
        similarity = similarity.masked_fill(same_class_negatives(labels), float("-inf"))
    targets = torch.arange(len(similarity), device=similarity.device)
    return F.cross_entropy(similarity, targets) + F.cross_entropy(similarity.T, targets)


def vld_loss(student_similarity: torch.Tensor, teacher_similarity: torch.Tensor) -> torch.Tensor:
    """Eq. 5: mean over images of KL(p_student ‖ p_teacher) between softmaxed similarity rows."""
    log_p = F.log_softmax(student_similarity, dim=-1)
    log_q = F.log_softmax(teacher_similarity, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def interpolate_weights(finetuned: dict[str, torch.Tensor], pretrained: dict[str, torch.Tensor],
                        ratio: float) -> dict[str, torch.Tensor]:
    """Eq. 7 (WiSE-FT on every tensor): ``ratio · fine-tuned + (1 - ratio) · pretrained``."""
    return {k: ratio * finetuned[k] + (1 - ratio) * v if v.is_floating_point() else v for k, v in pretrained.items()}


class FullFineTune(Method):
    """CLIP-CITE (defaults) and its ablations / baselines as switches (see the module docstring)."""

    def __init__(self, clip: Clip, name: str = "CLIP-CITE", dva: float = 1.0, scl: float = 0.7, vld: float = 0.1,
                 mask_same_class: bool = True, interpolation: float = 0.5, epochs: int = 10, lr: float = 1e-5,
                 batch_size: int = 32, seed: int = 0):
        super().__init__(clip)
        self.name, self.dva, self.scl, self.vld, self.mask_same_class = name, dva, scl, vld, mask_same_class
        self.interpolation, self.epochs, self.lr, self.batch_size, self.seed = interpolation, epochs, lr, batch_size, seed
        self.finetuned: dict[str, torch.Tensor] = {}
        self.model = clip.model

    def fit(self, support: ImageDataset) -> "FullFineTune":
        self._remember(support)
        torch.manual_seed(self.seed)
        student = copy.deepcopy(self.clip.model).train()
        student.logit_scale.requires_grad_(False)  # CLIP's temperature, frozen (the paper prints none)
        teacher, scale = self.clip.model, self.clip.logit_scale
        tokens = prompt_tokens(self.clip, support).to(self.clip.device)
        with torch.no_grad():
            classifier = nn.Parameter(F.normalize(teacher.encode_text(tokens), dim=-1).clone())
        images, labels = preprocess_images(self.clip, support), torch.as_tensor(support.labels)
        batches = minibatches(len(labels), self.batch_size, torch.Generator().manual_seed(self.seed))

        def step_loss(_: int) -> torch.Tensor:
            idx = next(batches)
            x, y = images[idx].to(self.clip.device), labels[idx].to(self.clip.device)
            image = F.normalize(student.encode_image(x), dim=-1)
            loss = self.dva * dva_loss(image, classifier, y, scale) if self.dva else 0.0
            if self.scl or self.vld:
                similarity = scale * image @ F.normalize(student.encode_text(tokens[y]), dim=-1).T
                if self.scl:
                    loss = loss + self.scl * scl_loss(similarity, y if self.mask_same_class else None)
                if self.vld:
                    with torch.no_grad():
                        teacher_similarity = scale * F.normalize(teacher.encode_image(x), dim=-1) @ \
                            F.normalize(teacher.encode_text(tokens[y]), dim=-1).T
                    loss = loss + self.vld * vld_loss(similarity, teacher_similarity)
            return loss

        steps = self.epochs * math.ceil(len(labels) / self.batch_size)
        params = [p for p in student.parameters() if p.requires_grad] + ([classifier] if self.dva else [])
        train(params, step_loss, steps, self.lr, optimizer="adamw", weight_decay=0.0, device=self.clip.device, progress=False)
        self.finetuned = {k: v.detach() for k, v in student.state_dict().items()}
        self.set_interpolation(self.interpolation)
        return self

    def set_interpolation(self, ratio: float) -> "FullFineTune":
        """Rebuild the inference model at another WiSE-FT ratio (0 = pretrained, 1 = fine-tuned)."""
        self.interpolation = ratio
        self.model = copy.deepcopy(self.clip.model).eval()
        self.model.load_state_dict(interpolate_weights(self.finetuned, self.clip.model.state_dict(), ratio))
        return self

    @torch.no_grad()
    def logits(self, images: Images, classnames: Sequence[str] | None = None) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            raise TypeError(f"{self.name} fine-tunes the image tower: pass an ImageDataset, not cached features")
        names = list(classnames or self.classnames)
        tokens = self.clip.tokenizer([self.templates[0].format(n) for n in names])
        return prompt_logits_cpu(self.model, preprocess_images(self.clip, images), tokens)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for n, p in self.clip.model.named_parameters() if n != "logit_scale") + \
            (len(self.classnames) * self.clip.model.text_projection.shape[1] if self.dva else 0)


def make_variant(clip: Clip, variant: str, **overrides) -> FullFineTune:
    """The named configurations of the notebook: CLIP-CITE, its loss ablations, and the baselines."""
    variants = {
        "CLIP-CITE": {},
        "fine-tuning": dict(scl=0.0, vld=0.0, interpolation=1.0),
        "FLYP": dict(dva=0.0, scl=1.0, vld=0.0, mask_same_class=False, interpolation=1.0),
        "DVA": dict(scl=0.0, vld=0.0),
        "DVA+SCL": dict(vld=0.0),
    }
    if variant not in variants:
        raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(variants)}")
    return FullFineTune(clip, name=variant, **{**variants[variant], **overrides})


def interpolation_sweep(method: FullFineTune, tests: dict[str, ImageDataset], ratios: Sequence[float]):
    """Accuracy of a fitted method on each named test set over WiSE-FT ratios (0 = pretrained)."""
    rows, previous = [], method.interpolation
    for ratio in ratios:
        method.set_interpolation(ratio)
        rows += [{"ratio": ratio, "part": part, "accuracy": evaluate(method, test, test.classnames)}
                 for part, test in tests.items()]
    method.set_interpolation(previous)
    return pd.DataFrame(rows)
