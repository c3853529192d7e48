"""Loading CLIP models through open_clip, and zero-shot text classifiers.

One call, :func:`load_clip`, serves both worlds:

* ``load_clip("ViT-B-16", "openai", "cuda")``: any open_clip architecture and pretrained tag;
* ``load_clip("ViT-B-16", "/path/to/checkpoint.pt")``: a local checkpoint file;
* ``load_clip()``: the kit's tiny CLIP (``fslib-tiny-vit``) and its shipped checkpoint.

Weights that were asked for must load: open_clip is always called with ``require_pretrained=True``
so a failed download or a missing file is an error, never a silently random model.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fslib.training import autocast

if TYPE_CHECKING:
    from fslib.data import ImageDataset

CONFIG_DIR = Path(__file__).parent / "model_configs"
EMBEDDED_MODEL = "fslib-tiny-vit"
EMBEDDED_PRETRAINED = "embedded"
EMBEDDED_CHECKPOINT = Path(__file__).parent / "world" / "assets" / "fslib-tiny-vit.pt"
RANDOM_INIT = "none"


def register_model_configs() -> None:
    """Make fslib's architectures known to open_clip (idempotent; runs on ``import fslib``)."""
    if EMBEDDED_MODEL not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


@dataclass
class Clip:
    """An open_clip model with the transform and tokenizer that belong to it."""

    model: open_clip.CLIP
    preprocess: Callable
    tokenizer: Callable
    name: str
    pretrained: str
    device: torch.device

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    def weights_fingerprint(self) -> str:
        """SHA-1 over the current parameter values: changes whenever any weight changes.

        Hashing ~10-500 MB of weights takes a moment, so the digest is reused while no tensor has been
        modified in place since (torch bumps a tensor's ``_version`` on every in-place update).
        """
        state = self.model.state_dict(keep_vars=True)
        versions = tuple((id(t), t._version) for t in state.values())
        if getattr(self, "_fingerprint_versions", None) == versions:
            return self._fingerprint
        h = hashlib.sha1(self.name.encode())
        for key, value in state.items():
            h.update(key.encode())
            h.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        self._fingerprint, self._fingerprint_versions = h.hexdigest(), versions
        return self._fingerprint

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text features, shape (len(texts), embed_dim), on the CPU."""
        was_training = self.model.training
        self.model.eval()
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start:start + batch_size])).to(self.device)
            out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        self.model.train(was_training)
        return torch.cat(out)


def resolve_pretrained(model: str, pretrained: str) -> str | None:
    if pretrained == RANDOM_INIT:
        return None
    if pretrained == EMBEDDED_PRETRAINED:
        if model != EMBEDDED_MODEL:
            raise ValueError(f"pretrained={EMBEDDED_PRETRAINED!r} is the shipped checkpoint of {EMBEDDED_MODEL!r} only, "
                             f"not of {model!r}")
        return str(EMBEDDED_CHECKPOINT)
    looks_like_path = any(sep in pretrained for sep in ("/", "\\")) or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors")
    if looks_like_path:
        if not Path(pretrained).is_file():
            raise FileNotFoundError(f"checkpoint file not found: {pretrained!r}")
        return pretrained
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained not in tags:
        allowed = ", ".join(tags + [RANDOM_INIT]) if tags else f"a checkpoint path or {RANDOM_INIT!r}"
        raise ValueError(f"unknown pretrained tag {pretrained!r} for model {model!r}; allowed: {allowed}")
    return pretrained


def load_clip(model: str = EMBEDDED_MODEL, pretrained: str = EMBEDDED_PRETRAINED, device: str = "cpu") -> Clip:
    """Load an open_clip model with its inference transform and tokenizer.

    ``pretrained`` is an open_clip tag (``"openai"``), a checkpoint path, ``"embedded"`` for the
    kit's shipped tiny CLIP, or ``"none"`` for random weights (explicitly; never as a fallback).
    """
    register_model_configs()
    if model not in open_clip.list_models():
        raise ValueError(f"unknown model {model!r}; allowed: {', '.join(open_clip.list_models())}")
    source = resolve_pretrained(model, pretrained)
    try:
        net, _, preprocess = open_clip.create_model_and_transforms(
            model, pretrained=source, device=device, require_pretrained=source is not None)
    except RuntimeError as err:
        raise RuntimeError(f"could not load weights {pretrained!r} for {model!r} (no internet, or a bad file?): {err}") from err
    net.eval()
    relayout_attention_inputs(net)
    return Clip(net, preprocess, open_clip.get_tokenizer(model), model, pretrained, torch.device(device))


def relayout_attention_inputs(model: torch.nn.Module) -> None:
    """Hand every batch-first self-attention of ``model`` its tokens in sequence-first memory (CPU only).

    Why: ``nn.MultiheadAttention(batch_first=True)`` transposes its (B, T, W) input to a (T, B, W) *view*;
    with frozen weights its packed q/k/v projection cannot fold that view into one matrix product (trainable
    weights fold through a copy of the input), so torch runs a batched product against the weight expanded
    over the T positions, which on a CPU in bf16 copies a T x W x 3W tensor on every call: 1.7x slower
    encoding of the tiny CLIP at batch 16. Storing the tokens sequence-first makes the transpose contiguous.
    Same values, same module, same weights; only the strides change (fp32 outputs are bit-identical).
    """
    for module in model.modules():
        if isinstance(module, torch.nn.MultiheadAttention) and module.batch_first:
            module.register_forward_pre_hook(_sequence_first_tokens, with_kwargs=True)


def _sequence_first_tokens(attn: torch.nn.MultiheadAttention, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    if len(args) < 3 or not (args[0] is args[1] is args[2]) or args[0].dim() != 3 or args[0].device.type != "cpu":
        return None  # cross-attention, keyword arguments, unbatched input or a GPU: leave the call as it is
    tokens = args[0].transpose(0, 1).contiguous().transpose(0, 1)
    return (tokens, tokens, tokens, *args[3:]), kwargs


def zero_shot_classifier(clip: Clip, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Class weights (C, D): per class, the normalised mean of its normalised prompt embeddings.

    This is CLIP's prompt ensembling (Radford et al., 2021, Sec. 3.1.4).
    """
    prompts = [template.format(name) for name in classnames for template in templates]
    return ensemble_prompts(clip.encode_text(prompts).view(len(classnames), len(templates), -1))


def ensemble_prompts(prompt_features: torch.Tensor) -> torch.Tensor:
    """(C, T, D) normalised embeddings of T prompts per class → (C, D): each class's mean, normalised."""
    return F.normalize(prompt_features.mean(dim=1), dim=-1)


def in_text_tower(name: str) -> bool:
    """Whether a parameter of an open_clip CLIP belongs to the text tower (all but ``visual.*`` and the
    shared temperature): what FrozenTE and MAMF's ``freeze_text`` keep fixed."""
    return not name.startswith("visual.") and name != "logit_scale"


def prompt_tokens(clip: Clip, dataset: "ImageDataset") -> torch.Tensor:
    """One prompt per class (the dataset's first template), tokenised: (C, context_length)."""
    return clip.tokenizer([dataset.templates[0].format(name) for name in dataset.classnames])


def prompt_features(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor,
                    params: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised image features, normalised prompt features, ``exp(s)``) on the model's device;
    ``params`` evaluates the model functionally."""
    device = next(model.parameters()).device
    images, tokens = images.to(device), tokens.to(device)
    if params is None:
        return model(images, tokens)[:3]
    return functional_call(model, params, (images, tokens))[:3]


@torch.no_grad()
def prompt_logits_cpu(model: torch.nn.Module, pixels: torch.Tensor, tokens: torch.Tensor,
                      chunk_size: int = 256) -> torch.Tensor:
    """``exp(s) * cos(image, prompt)`` logits for a whole test set, in chunks (GPU memory), returned on the CPU: (N, C).

    The towers run under the kit's precision setting, as every encoding does; the cosines are taken in
    fp32, since a bf16 product would round logits of scale 100 by about ±0.3, enough to flip close calls."""
    device, logits = next(model.parameters()).device, []
    for chunk in pixels.split(chunk_size):
        with autocast(device):
            image_features, text_features, scale = prompt_features(model, chunk, tokens)
        logits.append((scale.float() * image_features.float() @ text_features.float().T).cpu())
    return torch.cat(logits)
