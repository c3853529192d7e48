"""APEX: difficulty-agnostic efficient transfer (Yang, Ko, Yun, EMNLP 2024, arXiv 2311.15569).

One module, :class:`PromptedCLIP`, covers APEX and the efficient-transfer baselines it is compared
with, as switches on a frozen CLIP:

* deep visual prompts (VPT, §4.1 Eq. 6): ``visual_tokens`` learnable tokens appended after the patch
  tokens at the input (no positional embedding, before ``ln_pre``) and *replaced* by fresh learnable
  tokens before each of the first ``visual_depth`` blocks; the CLS token is pooled, so prompts are
  never averaged into the feature; init N(0, 0.02²);
* a shallow text prompt (§4.1): the first ``text_tokens`` words of "a photo of a {class}." become
  learnable vectors initialised from their own embeddings (CoOp-style with ``text_tokens=4``);
* a full-rank linear text adapter (Eq. 11): ``t = Aᵀ t̃ + b``, ``A = I``, ``b = 0`` at init;
* the adaptive ensemble at test time (§4.2, Alg. 2): per evaluation class, with zero-shot text
  features ``t'``, ``d_avg = 1 - mean_j cos(t'_eval, t'_j)`` and ``d_nn = 1 - max_j cos(...)`` over
  the training classes ``j``; ``α = exp(-β d_avg · 1[d_nn > ε])`` (``β = 4``, ``ε = 0.05``);
  text ``α (Aᵀ t̃ + b) + (1 - α) t_0`` and image ``ᾱ z_prompted + (1 - ᾱ) z_0``, mixed before L2
  normalisation. ᾱ weights the *adapted* image feature as in the official code: the paper's printed
  direction contradicts its own α = 1 ablation (notes §2.5, §9). ``z_0`` is clean zero-shot CLIP (the
  tower without prompts; the official code's copy carries random prompts, notes §8.4). ``t_0`` is the
  prompted pre-adapter feature ``t̃`` as in Eq. 12 (``ensemble_text="prompted"``), or clean zero-shot
  text (``"zero-shot"``).

CLIP's weights and temperature stay frozen; training is cross-entropy on ``exp(s) cos(z, t)`` (§2.4).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from fslib.data import ImageDataset
from fslib.features import augment_pixels, encode_images, memory_cache, preprocess_images
from fslib.methods.base import Images, Method
from fslib.methods.registry import Knob, create_method, register_method
from fslib.models import Clip, zero_shot_classifier
from fslib.training import autocast, frozen, minibatches, precision, train

APEX_TEMPLATE = "a photo of a {}."
ENSEMBLE_TEXT = ("prompted", "zero-shot")
_CLEAN = memory_cache()  # the frozen tower's unnormalised features per test set (PromptedCLIP.image_features_clean)
ENSEMBLE_MODALITIES = ("both", "text", "image", "off")


@dataclass(frozen=True)
class Ensemble:
    """How APEX mixes the adapted model with zero-shot CLIP at test time (§4.2, Alg. 2): on ``modality``
    ``"both"``, ``"text"`` or ``"image"`` (``"off"``: the adapted model alone), with α from the class
    distances (``beta``, ``epsilon``) or ``fixed_alpha`` (the paper's Table 13 ablation), and the text
    mixed back towards the prompted pre-adapter feature or clean zero-shot text (``text``). A test-time
    setting: ``PromptedCLIP.logits(images, names, ensemble=Ensemble(...))`` scores one fit several ways."""

    modality: str = "both"
    beta: float = 4.0
    epsilon: float = 0.05
    text: str = "prompted"
    fixed_alpha: float | None = None

    def __post_init__(self) -> None:
        if self.modality not in ENSEMBLE_MODALITIES:
            raise ValueError(f"unknown ensemble modality {self.modality!r}; allowed: {', '.join(ENSEMBLE_MODALITIES)}")
        if self.text not in ENSEMBLE_TEXT:
            raise ValueError(f"unknown ensemble text {self.text!r}; allowed: {', '.join(ENSEMBLE_TEXT)}")


def class_distances(train_text: torch.Tensor, eval_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d_avg, d_nn)`` per evaluation class (APEX §4.2): one minus the mean and the max cosine similarity
    to the training classes. Inputs are L2-normalised zero-shot text features (C_train, D), (C_eval, D)."""
    similarity = eval_text @ train_text.T
    return 1 - similarity.mean(dim=1), (1 - similarity.max(dim=1).values).clamp_min(0)


def ensemble_weights(train_text: torch.Tensor, eval_text: torch.Tensor, beta: float = 4.0,
                     epsilon: float = 0.05) -> torch.Tensor:
    """α per evaluation class (APEX Alg. 2): ``exp(-β d_avg)`` unless a training class is within ``ε``."""
    d_avg, d_nn = class_distances(train_text, eval_text)
    return torch.exp(-beta * d_avg * (d_nn > epsilon).float())


def relative_transfer_difficulty(zero_shot_accuracy: float, num_classes: int) -> float:
    """RTD = accuracy of a random classifier / accuracy of zero-shot CLIP = 1 / (C · acc_g) (Def. 1, with
    accuracy for the paper's unspecified "precision": it reproduces most of its Table 16, notes §2.2)."""
    return 1.0 / (num_classes * max(zero_shot_accuracy, 1e-8))


class PromptedCLIP(Method):
    """APEX (``visual_depth>0, text_tokens=2, adapter=True, ensemble=True``) and its ablations. A depth
    of -1 means every block. ``ensemble`` and the arguments after it set the fitted method's
    :class:`Ensemble`, which a scoring call may replace."""

    test_time_settings = ("ensemble",)

    def __init__(self, clip: Clip, name: str = "APEX", visual_depth: int = 0, visual_tokens: int = 2,
                 text_tokens: int = 2, adapter: bool = True, ensemble: bool = True, epochs: int = 10,
                 lr: float = 0.15, weight_decay: float = 1e-3, batch_size: int = 16, beta: float = 4.0,
                 epsilon: float = 0.05, ensemble_text: str = "prompted", fixed_alpha: float | None = None,
                 text_depth: int = 1, ensemble_modality: str = "both", augment: bool = False, seed: int = 0):
        super().__init__(clip)
        if ensemble_modality == "off":
            raise ValueError("ensemble_modality='off' is ensemble=False; allowed: both, text, image")
        self.ensemble = Ensemble(ensemble_modality if ensemble else "off", beta, epsilon, ensemble_text, fixed_alpha)
        if not hasattr(clip.model, "token_embedding"):
            raise ValueError(f"{clip.name}: APEX needs open_clip's standard CLIP text tower (token_embedding)")
        if not all(getattr(tower, "batch_first", True) for tower in (clip.model.visual.transformer, clip.model.transformer)):
            raise ValueError(f"{clip.name}: APEX's prompt insertion expects open_clip's batch-first transformer blocks")
        blocks, text_blocks = len(clip.model.visual.transformer.resblocks), len(clip.model.transformer.resblocks)
        visual_depth, text_depth = blocks if visual_depth == -1 else visual_depth, text_blocks if text_depth == -1 else text_depth
        if not 0 <= visual_depth <= blocks:
            raise ValueError(f"visual_depth={visual_depth} must lie in [0, {blocks}] for {clip.name}")
        if not 1 <= text_depth <= text_blocks:
            raise ValueError(f"text_depth={text_depth} must lie in [1, {text_blocks}] for {clip.name}")
        self.name, self.visual_depth, self.visual_tokens = name, visual_depth, visual_tokens
        self.text_tokens, self.adapter, self.text_depth, self.augment = text_tokens, adapter, text_depth, augment
        self.epochs, self.lr, self.weight_decay, self.batch_size, self.seed = epochs, lr, weight_decay, batch_size, seed
        generator = torch.Generator().manual_seed(seed)  # on the CPU, so a seed gives the same prompts on any device
        width, dim, device = clip.model.visual.conv1.out_channels, clip.model.text_projection.shape[1], clip.device
        prompts = torch.randn(visual_depth, visual_tokens, width, generator=generator) * 0.02
        self.visual_prompts = nn.Parameter(prompts.to(device))
        with torch.no_grad():
            prefix = clip.tokenizer(["a photo of a"])[0, 1:1 + text_tokens].to(device)
            self.text_context = nn.Parameter(clip.model.token_embedding(prefix).clone())
        # deep text prompts (TPT, J_T > 1): fresh tokens replace the context outputs before blocks 1..J_T-1
        text_width = clip.model.token_embedding.embedding_dim
        deep = torch.randn(text_depth - 1, text_tokens, text_width, generator=generator) * 0.02
        self.text_deep_prompts = nn.Parameter(deep.to(device))
        self.adapter_matrix = nn.Parameter(torch.eye(dim, device=device))
        self.adapter_bias = nn.Parameter(torch.zeros(dim, device=device))
        self.register_buffer("train_text_zero_shot", None)  # the training classes' zero-shot text, set by fit
        self._prompted: dict[str, torch.Tensor] = {}  # prompted image features per test set, for this fit

    @property
    def needs_pixels(self) -> bool:
        return bool(self.visual_depth)  # prompts inside the image tower: cached features will not do

    # -- the two towers -------------------------------------------------------------------------
    def image_features_prompted(self, pixels: torch.Tensor) -> torch.Tensor:
        """Deep VPT forward through open_clip's ViT (Eq. 6); unnormalised (B, D)."""
        visual = self.clip.model.visual
        x = visual.conv1(pixels.to(self.clip.device))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1).to(x.dtype), x], dim=1)
        x = x + visual.positional_embedding.to(x.dtype)
        n_prompts = self.visual_tokens if self.visual_depth else 0
        if n_prompts:  # appended after the positional embedding: prompts have no position
            x = torch.cat([x, self.visual_prompts[0].expand(x.shape[0], -1, -1)], dim=1)
        x = visual.ln_pre(x)
        for i, block in enumerate(visual.transformer.resblocks):
            if 1 <= i < self.visual_depth:  # replace the previous layer's prompt outputs
                x = torch.cat([x[:, :-n_prompts], self.visual_prompts[i].expand(x.shape[0], -1, -1)], dim=1)
            x = block(x)
        pooled = visual.ln_post(x[:, 0])
        return pooled @ visual.proj

    def image_features_frozen(self, images: Images) -> torch.Tensor:
        """Clean zero-shot image features (normalised), from the feature cache."""
        return images if isinstance(images, torch.Tensor) else encode_images(self.clip, images, progress=False)

    def text_features_prompted(self, classnames: Sequence[str]) -> torch.Tensor:
        """"a photo of a {c}." with the first ``text_tokens`` words learnable; unnormalised (C, D)."""
        model = self.clip.model
        tokens = self.clip.tokenizer([APEX_TEMPLATE.format(c) for c in classnames]).to(self.clip.device)
        x = model.token_embedding(tokens)
        context = self.text_context.expand(len(classnames), -1, -1)
        x = torch.cat([x[:, :1], context, x[:, 1 + self.text_tokens:]], dim=1)
        x = x + model.positional_embedding
        for i, block in enumerate(model.transformer.resblocks):
            if 1 <= i < self.text_depth and self.text_tokens:  # replace the context tokens' outputs (deep TPT)
                deep = self.text_deep_prompts[i - 1].expand(len(classnames), -1, -1)
                x = torch.cat([x[:, :1], deep, x[:, 1 + self.text_tokens:]], dim=1)
            x = block(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        return x[torch.arange(len(tokens), device=tokens.device), tokens.argmax(dim=-1)] @ model.text_projection

    def adapt_text(self, text: torch.Tensor) -> torch.Tensor:
        return text @ self.adapter_matrix + self.adapter_bias if self.adapter else text

    # -- Method interface -----------------------------------------------------------------------
    def _trainable(self) -> list[nn.Parameter]:
        params = [self.visual_prompts] if self.visual_depth else []
        params += [self.text_context] if self.text_tokens else []
        params += [self.text_deep_prompts] if self.text_tokens and self.text_depth > 1 else []
        return params + ([self.adapter_matrix, self.adapter_bias] if self.adapter else [])

    def fit(self, support: ImageDataset) -> "PromptedCLIP":
        self._remember(support)
        self._prompted = {}
        self.train_text_zero_shot = zero_shot_classifier(self.clip, self.classnames, [APEX_TEMPLATE])
        params = self._trainable()
        if not params:
            return self
        for p in params:
            p.requires_grad_(True)
        labels, device = torch.as_tensor(support.labels), self.clip.device
        # without visual prompts or augmentation the image tower's output never changes: use cached features
        pixels = bool(self.visual_depth or self.augment)
        inputs = preprocess_images(self.clip, support) if pixels else self.image_features_frozen(support)
        batches = minibatches(len(labels), self.batch_size, torch.Generator().manual_seed(self.seed))
        scale = self.clip.logit_scale

        def step_loss(step: int) -> torch.Tensor:
            idx = next(batches)
            # the official configs' training augmentation (notes §3): crops of 0.5-1 of the area and flips
            batch = augment_pixels(inputs[idx], self.seed * 100_003 + step, flip=True, min_scale=0.5) if self.augment else inputs[idx]
            if self.visual_depth:
                image = self.image_features_prompted(batch)
            elif pixels:  # augmented views through the frozen tower
                with torch.no_grad():
                    image = self.clip.model.encode_image(batch.to(device))
            else:
                image = batch.to(device)
            text = self.adapt_text(self.text_features_prompted(self.classnames))
            logits = scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
            return F.cross_entropy(logits, labels[idx].to(logits.device))

        steps = self.epochs * math.ceil(len(labels) / self.batch_size)
        # Adadelta with a high LR and a cosine schedule after one warm-up epoch (notes §3); CLIP stays frozen
        start = time.perf_counter()
        with frozen(self.clip.model):
            train(params, step_loss, steps, self.lr, optimizer="adadelta", weight_decay=self.weight_decay,
                  warmup_steps=math.ceil(len(labels) / self.batch_size), device=self.clip.device, progress=False)
        self.fit_seconds = time.perf_counter() - start
        for p in params:
            p.requires_grad_(False)
        return self

    @torch.no_grad()
    def image_features_clean(self, images: ImageDataset) -> torch.Tensor:
        """The frozen tower's unnormalised image features (what the ensemble mixes back in, Alg. 2).
        They depend on neither the prompts nor the seed: computed once per test set in this process."""
        key = f"{self.clip.weights_fingerprint()}:{images.fingerprint()}:{precision(self.clip.device)}"
        clean = _CLEAN.get(key)
        if clean is None:
            clean = _CLEAN[key] = self._encode_in_chunks(self.clip.model.encode_image, images)
        return clean

    def _encode_in_chunks(self, encode: Callable[[torch.Tensor], torch.Tensor], images: ImageDataset) -> torch.Tensor:
        """``encode`` over the preprocessed images, 256 at a time, under the kit's precision; fp32 out."""
        out = []
        for chunk in preprocess_images(self.clip, images).split(256):
            with autocast(self.clip.device):
                out.append(encode(chunk.to(self.clip.device)).float())
        return torch.cat(out)

    @torch.no_grad()
    def image_features_pair(self, images: Images, clean: torch.Tensor | None = None,
                            ensemble: Ensemble | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompted, clean zero-shot) image features, unnormalised; the second is None without VPT, and
        is only computed when ``ensemble`` (default: the fitted one) mixes images and ``clean`` was not
        passed in."""
        if not self.visual_depth:
            return self.image_features_frozen(images), None
        if isinstance(images, torch.Tensor):
            raise TypeError(f"{self.name} prompts the image tower: pass an ImageDataset, not cached features")
        key = images.fingerprint()  # one pass per test set and fit, however many ways it is scored
        if key not in self._prompted:
            self._prompted[key] = self._encode_in_chunks(self.image_features_prompted, images)
        prompted = self._prompted[key]
        if clean is None and (ensemble or self.ensemble).modality in ("both", "image"):
            clean = self.image_features_clean(images)
        return prompted, clean

    @torch.no_grad()
    def logits_from_features(self, prompted: torch.Tensor, clean: torch.Tensor | None, classnames: Sequence[str],
                             ensemble: Ensemble | None = None) -> torch.Tensor:
        """Logits from :meth:`image_features_pair`, so sweeps over β or α reuse one image pass;
        ``ensemble`` defaults to the fitted method's."""
        names, device, ensemble = list(classnames), self.clip.device, ensemble or self.ensemble
        prompted_text = self.text_features_prompted(names)  # = zero-shot text when text_tokens == 0
        text, image = self.adapt_text(prompted_text), prompted.to(device)
        if ensemble.modality != "off":
            alpha = self.alpha(names, ensemble).to(device)
            zero_text = prompted_text if ensemble.text == "prompted" else self.clip.model.encode_text(
                self.clip.tokenizer([APEX_TEMPLATE.format(c) for c in names]).to(device))
            if ensemble.modality in ("both", "text"):
                text = alpha[:, None] * text + (1 - alpha[:, None]) * zero_text
            if clean is not None and ensemble.modality in ("both", "image"):
                # mix unnormalised features, weight ᾱ on the adapted one (official code)
                image = alpha.mean() * image + (1 - alpha.mean()) * clean.to(device)
        return (self.clip.logit_scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T).float().cpu()

    def logits(self, images: Images, classnames: Sequence[str] | None = None,
               ensemble: Ensemble | None = None) -> torch.Tensor:
        return self.logits_from_features(*self.image_features_pair(images, ensemble=ensemble),
                                         classnames or self.classnames, ensemble)

    def alpha(self, classnames: Sequence[str], ensemble: Ensemble | None = None) -> torch.Tensor:
        """Ensemble weight α for each of ``classnames`` relative to the fitted (training) classes."""
        if self.train_text_zero_shot is None:
            raise RuntimeError(f"{self.name}: fit before asking for α")
        ensemble = ensemble or self.ensemble
        if ensemble.fixed_alpha is not None:  # the paper's fixed-α ablation (Table 13)
            return torch.full((len(classnames),), float(ensemble.fixed_alpha))
        eval_text = zero_shot_classifier(self.clip, list(classnames), [APEX_TEMPLATE])
        return ensemble_weights(self.train_text_zero_shot, eval_text, ensemble.beta, ensemble.epsilon)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self._trainable())

    def allocate(self, state_dict) -> None:
        self._prompted = {}
        super().allocate(state_dict)


# The efficient-transfer families compared in the paper, as switches of PromptedCLIP (-1: every block).
FAMILIES = {
    "zero-shot": dict(visual_depth=0, text_tokens=0, adapter=False, ensemble=False),
    "CoOp": dict(visual_depth=0, text_tokens=4, adapter=False, ensemble=False),
    "TPT": dict(visual_depth=0, text_tokens=2, text_depth=-1, adapter=False, ensemble=False),
    "VPT": dict(visual_depth=-1, text_tokens=0, adapter=False, ensemble=False),
    "TA": dict(visual_depth=0, text_tokens=0, adapter=True, ensemble=False),
    "VPT+TA": dict(visual_depth=-1, text_tokens=2, adapter=True, ensemble=False),
}
# APEX is the fitted VPT+TA with the adaptive ensemble on both modalities, or on one (the paper's Table 5)
ENSEMBLES = {"APEX": "both", "APEX (text only)": "text", "APEX (image only)": "image"}


# Each family and APEX variant is a registered method; the families' zero-shot is APEX's one prompt. Their
# Adadelta learning rates are chosen on validation from one ladder, searched from around the paper's 0.15.
ADADELTA_LEARNING_RATES = (0.005, 0.015, 0.05, 0.15, 0.5, 1.5, 5.0, 15.0, 50.0)
FAMILY_METHODS = {family: "zero-shot (APEX's prompt)" if family == "zero-shot" else family for family in FAMILIES}
_PAPERS = {"zero-shot": "Radford et al., 2021", "CoOp": "Zhou et al., 2022 (IJCV)", "TPT": "Yang, Ko, Yun, 2023, §3",
           "VPT": "Jia et al., 2022", "TA": "Yang, Ko, Yun, 2023, Eq. 11", "VPT+TA": "Yang, Ko, Yun, 2023, §4.1"}
for _family, _config in FAMILIES.items():
    register_method(FAMILY_METHODS[_family], PromptedCLIP, paper=_PAPERS[_family], name=_family, **_config,
                    compared=_family == "CoOp", parameter_efficient=_family != "zero-shot",
                    knob=None if _family == "zero-shot" else Knob("lr", ADADELTA_LEARNING_RATES, 3))
for _label, _modality in ENSEMBLES.items():  # with the official configs' training augmentation
    register_method(_label, PromptedCLIP, paper="Yang, Ko, Yun, 2023, §4.2, Table 5", name=_label,
                    **{**FAMILIES["VPT+TA"], "ensemble": True}, ensemble_modality=_modality, augment=True,
                    compared=_label == "APEX", parameter_efficient=True, knob=Knob("lr", ADADELTA_LEARNING_RATES, 2))


def make_family(clip: Clip, family: str, **overrides) -> PromptedCLIP:
    """A :class:`PromptedCLIP` configured as one of ``FAMILIES`` (the registered method of that family)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; allowed: {', '.join(FAMILIES)}")
    return create_method(FAMILY_METHODS[family], clip, **overrides)


def distance_table(clip: Clip, train_classes: Sequence[str], eval_classes: Sequence[str], beta: float = 4.0,
                   epsilon: float = 0.05) -> pd.DataFrame:
    """Per evaluation class: ``d_avg``, ``d_nn`` to the training classes and the ensemble's α (§4.2)."""
    train_text = zero_shot_classifier(clip, list(train_classes), [APEX_TEMPLATE])
    eval_text = zero_shot_classifier(clip, list(eval_classes), [APEX_TEMPLATE])
    d_avg, d_nn = class_distances(train_text, eval_text)
    alpha = ensemble_weights(train_text, eval_text, beta, epsilon)
    return pd.DataFrame({"class": list(eval_classes), "d_avg": d_avg.cpu().numpy(), "d_nn": d_nn.cpu().numpy(),
                         "alpha": alpha.cpu().numpy()})
