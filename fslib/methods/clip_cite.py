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

``FullFineTune`` with other switches gives the ablations and baselines of the same harness (``VARIANTS``):
Table 4's loss subsets, FrozenTC / FrozenTE, plain fine-tuning (``L_DVA`` only, no interpolation) and FLYP
(CLIP's contrastive loss on class prompts, no masking).
"""
from __future__ import annotations

import copy
import math
import time
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from fslib import distributed
from fslib.data import ImageDataset
from fslib.features import augment_pixels, preprocess_images
from fslib.methods.base import Images, Method
from fslib.methods.registry import TOWER_LEARNING_RATES, Knob, create_method, register_method
from fslib.models import Clip, in_text_tower, prompt_logits_cpu, prompt_tokens
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
                        ratio: float, into: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Eq. 7 (WiSE-FT on every tensor): ``ratio · fine-tuned + (1 - ratio) · pretrained``. With ``into``,
    each blended tensor is copied into that model's own as soon as it is made, so a ViT-B needs one
    tensor's worth of extra memory instead of a whole model's."""
    def blend(key: str, value: torch.Tensor) -> torch.Tensor:
        return ratio * finetuned[key] + (1 - ratio) * value if value.is_floating_point() else value

    if into is None:
        return {k: blend(k, v) for k, v in pretrained.items()}
    target = into.state_dict()
    with torch.no_grad():
        for k, v in pretrained.items():
            target[k].copy_(blend(k, v))
    return target


class FullFineTune(Method):
    """CLIP-CITE (defaults) and its ablations / baselines as switches (see the module docstring).

    Training follows the paper's §4.1: AdamW with a cosine schedule for ``epochs`` (20) epochs at batch
    32, on random resized crops of the shots (open_clip's training crop, 90-100% of the area: in the tiny
    world a smaller crop can cut away the objects that make the label). ``train_classifier=False`` is the paper's FrozenTC (the DVA
    classifier stays at the text embeddings), ``train_text=False`` its FrozenTE (the text encoder is
    frozen, Fig. 4). The seed sets the minibatch order and the crops. ``grad_checkpointing`` (open_clip's)
    trades a third more time for the activations' memory, for a ViT-B on a small machine.

    The fitted state is the fine-tuned model (``student``); ``logits(..., ratio=r)`` scores with the weights
    interpolated at ``r`` (default: ``interpolation``), so one fit is scored along the whole WiSE-FT path.
    """

    needs_pixels = True
    test_time_settings = ("ratio",)

    def __init__(self, clip: Clip, name: str = "CLIP-CITE", dva: float = 1.0, scl: float = 0.7, vld: float = 0.1,
                 mask_same_class: bool = True, interpolation: float = 0.5, epochs: int = 20, lr: float = 1e-5,
                 batch_size: int = 32, augment: bool = True, train_classifier: bool = True, train_text: bool = True,
                 grad_checkpointing: bool = False, seed: int = 0):
        super().__init__(clip)
        self.name, self.dva, self.scl, self.vld, self.mask_same_class = name, dva, scl, vld, mask_same_class
        self.interpolation, self.epochs, self.lr, self.batch_size, self.seed = interpolation, epochs, lr, batch_size, seed
        self.augment, self.train_classifier, self.train_text = augment, train_classifier, train_text
        self.grad_checkpointing = grad_checkpointing
        self.student: nn.Module | None = None  # the fine-tuned CLIP, set by fit
        self._scoring: tuple[float, nn.Module] | None = None  # (ratio, interpolated model): not part of the state

    def fit(self, support: ImageDataset) -> "FullFineTune":
        self._remember(support)
        student = copy.deepcopy(self.clip.model).train()
        student.set_grad_checkpointing(self.grad_checkpointing)  # recompute activations in backward: less memory
        student.logit_scale.requires_grad_(False)  # CLIP's temperature, frozen (the paper prints none)
        if not self.train_text:  # FrozenTE
            for name, p in student.named_parameters():
                if in_text_tower(name):
                    p.requires_grad_(False)
        teacher, scale, device = self.clip.model, self.clip.logit_scale, self.clip.device
        tokens = prompt_tokens(self.clip, support).to(device)
        with torch.no_grad():
            teacher_text = F.normalize(teacher.encode_text(tokens), dim=-1)
        classifier = nn.Parameter(teacher_text.clone(), requires_grad=self.train_classifier)  # Eq. 2: W = θ_T(t)
        images, labels = preprocess_images(self.clip, support), torch.as_tensor(support.labels)
        batches = minibatches(len(labels), self.batch_size, torch.Generator().manual_seed(self.seed))

        def step_loss(step: int) -> torch.Tensor:
            idx = next(batches)
            mine = distributed.local_slice(len(idx))  # the whole batch in one process; a rank's share under torchrun
            # crops are drawn image by image from one seed: those of the first images do not depend on the rest
            x = augment_pixels(images[idx[:mine.stop]], self.seed * 100_003 + step)[mine] if self.augment else images[idx[mine]]
            x, y = x.to(device), labels[idx].to(device)
            image = distributed.gather(F.normalize(student.encode_image(x), dim=-1), len(idx))
            loss = self.dva * dva_loss(image, classifier, y, scale) if self.dva else 0.0
            if self.scl or self.vld:
                # each class prompt is encoded once and gathered per image: the same values and gradients
                # as encoding the batch's repeated prompts, at a fraction of the cost
                classes, index = y.unique(return_inverse=True)
                text = F.normalize(student.encode_text(tokens[classes]), dim=-1)[index]
                similarity = scale * image @ text.T
                if self.scl:
                    loss = loss + self.scl * scl_loss(similarity, y if self.mask_same_class else None)
                if self.vld:
                    with torch.no_grad():
                        teacher_image = distributed.gather(F.normalize(teacher.encode_image(x), dim=-1), len(idx))
                    loss = loss + self.vld * vld_loss(similarity, scale * teacher_image @ teacher_text[y].T)
            return loss

        steps = self.epochs * math.ceil(len(labels) / self.batch_size)
        params = [p for p in student.parameters() if p.requires_grad] + ([classifier] if self.dva and self.train_classifier else [])
        start = time.perf_counter()
        train(params, step_loss, steps, self.lr, optimizer="adamw", weight_decay=0.0, device=device, progress=False)
        self.fit_seconds = time.perf_counter() - start
        self.student, self._scoring = student.eval().requires_grad_(False), None
        return self

    @property
    def finetuned(self) -> dict[str, torch.Tensor]:
        """The fine-tuned weights (Eq. 7's θ_ft)."""
        if self.student is None:
            raise RuntimeError(f"{self.name}: fit before asking for the fine-tuned weights")
        return self.student.state_dict()

    def interpolated(self, ratio: float | None = None) -> nn.Module:
        """The model that scores at WiSE-FT ``ratio`` (0 = pretrained, 1 = fine-tuned; default: the fitted
        ``interpolation``), blended once per ratio into one copy of the pretrained model (Eq. 7)."""
        ratio = self.interpolation if ratio is None else ratio
        if self._scoring is None or self._scoring[0] != ratio:
            model = self._scoring[1] if self._scoring else copy.deepcopy(self.clip.model).eval()
            interpolate_weights(self.finetuned, self.clip.model.state_dict(), ratio, into=model)
            self._scoring = ratio, model
        return self._scoring[1]

    @torch.no_grad()
    def logits(self, images: Images, classnames: Sequence[str] | None = None, ratio: float | None = None) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            raise TypeError(f"{self.name} fine-tunes the image tower: pass an ImageDataset, not cached features")
        names = list(classnames or self.classnames)
        tokens = self.clip.tokenizer([self.templates[0].format(n) for n in names])
        return prompt_logits_cpu(self.interpolated(ratio), preprocess_images(self.clip, images), tokens)

    def trainable_parameters(self) -> int:
        towers = sum(p.numel() for n, p in self.clip.model.named_parameters()
                     if n != "logit_scale" and (self.train_text or not in_text_tower(n)))
        classifier = len(self.classnames) * self.clip.model.text_projection.shape[1] if self.dva and self.train_classifier else 0
        return towers + classifier

    def allocate(self, state_dict) -> None:
        if self.student is None:  # a copy of CLIP to load the fine-tuned weights into
            self.student = copy.deepcopy(self.clip.model).eval().requires_grad_(False)
        self._scoring = None
        super().allocate(state_dict)


# The named configurations: CLIP-CITE, the rows of the paper's Table 4 (loss ablation, all interpolated
# at 0.5), FrozenTC / FrozenTE (Fig. 4) and the baselines (plain fine-tuning and FLYP, not interpolated).
VARIANTS = {
    "CLIP-CITE": {},
    "fine-tuning": dict(scl=0.0, vld=0.0, interpolation=1.0),
    "FLYP": dict(dva=0.0, scl=1.0, vld=0.0, mask_same_class=False, interpolation=1.0),
    "DVA": dict(scl=0.0, vld=0.0),
    "SCL": dict(dva=0.0, vld=0.0),
    "DVA+SCL": dict(vld=0.0),
    "DVA+VLD": dict(scl=0.0),
    "FrozenTC": dict(train_classifier=False),
    "FrozenTE": dict(train_text=False),
}


_PAPERS = {"CLIP-CITE": "Liu et al., 2024, Eq. 6-7", "fine-tuning": "Liu et al., 2024, Table 4 (baseline)",
           "FLYP": "Goyal et al., 2023", "FrozenTC": "Liu et al., 2024, Fig. 4", "FrozenTE": "Liu et al., 2024, Fig. 4"}
for _variant in sorted(VARIANTS, key=lambda v: v != "fine-tuning"):  # 06 lists fine-tuning before CLIP-CITE
    register_method(_variant, FullFineTune, paper=_PAPERS.get(_variant, "Liu et al., 2024, Table 4"), name=_variant,
                    **VARIANTS[_variant], compared=_variant in ("fine-tuning", "CLIP-CITE"),
                    knob=Knob("lr", TOWER_LEARNING_RATES, 1))


def make_variant(clip: Clip, variant: str, **overrides) -> FullFineTune:
    """One of ``VARIANTS`` (its registered method), with any :class:`FullFineTune` argument overridden."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    return create_method(variant, clip, **overrides)
