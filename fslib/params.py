"""Validation of a notebook's ``parameters`` cell before any work is done.

papermill injects ``-p name value`` as plain assignments and silently accepts names the notebook
never declared, so a typo (``-p shot 5``) would run the defaults. Each notebook therefore calls

    P = fslib.params.validate(globals(), NOTEBOOK)

right after its parameters cell: every user-defined global must be a parameter the kit knows (one
table, :data:`CHECKS`, says what each name means), every parameter must pass its check, and the
parameters left at ``None`` take the chosen scale's value (:mod:`fslib.scales`). The error names the bad
value and what is allowed. (So the cells before it import only modules, functions and classes, and name
constants in capitals: those are not taken for parameters.)
"""
from __future__ import annotations

import ast
import os
import textwrap
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Callable

import numpy as np
import open_clip

from fslib import scales
from fslib.evidence import MIN_LEVELS
from fslib.training import PRECISIONS

Check = Callable[[str, Any], Any]
_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "open"}


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not allowed; it must be an integer >= 1")
    return value


def positive_int_or_all(name: str, value: Any) -> int | None:
    """A count of (last) blocks, or ``"all"`` for the whole tower (returned as ``None``)."""
    if value == "all":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: a positive integer or 'all'")
    return value


def non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}={value!r} is not allowed; it must be an integer >= 0")
    return value


def positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name}={value!r} is not allowed; it must be a number > 0")
    return float(value)


def non_negative_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name}={value!r} is not allowed; it must be a number >= 0")
    return float(value)


def boolean(name: str, value: Any) -> bool:
    """True or False; papermill's text "true" / "false" (any case), "yes" / "no" and "1" / "0" too."""
    if isinstance(value, bool):
        return value
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]
    raise ValueError(f"{name}={value!r} is not allowed; it must be True or False")


def fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name}={value!r} is not allowed; it must be a number in [0, 1)")
    return float(value)


def _as_list(value: Any) -> list:
    """papermill's ``-p`` passes lists as text: accept "[1, 2]", "['a', 'b']", "[a, b]", "1,2" and a bare value."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                return list(ast.literal_eval(text))
            except (ValueError, SyntaxError):  # unquoted names: "[shapes, counting]"
                text = text[1:-1]
        return [v.strip() for v in text.split(",") if v.strip()]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _int_list(name: str, value: Any, check: Callable[[str, Any], int], requirement: str) -> list[int]:
    """``value`` as a non-empty list, text entries turned into integers, each checked by ``check``."""
    values = _as_list(value)
    values = [int(v) if isinstance(v, str) and v.lstrip("-").isdigit() else v for v in values]
    if not values:
        raise ValueError(f"{name}={value!r} is not allowed; it must be a non-empty list of integers {requirement}")
    return [check(name, v) for v in values]


def int_list(name: str, value: Any) -> list[int]:
    """A non-empty list of integers >= 1: a list, a bare integer, or text like "1,2,4" or "[1, 2, 4]"."""
    return _int_list(name, value, positive_int, ">= 1")


def non_negative_int_list(name: str, value: Any) -> list[int]:
    """A non-empty list of integers >= 0 (e.g. epochs, where 0 means "none")."""
    return _int_list(name, value, non_negative_int, ">= 0")


def seeds(name: str, value: Any) -> list[int]:
    """Seeds, the unit of replication of every claim: at least two distinct integers >= 1 (three or more
    recommended), since one seed gives no confidence interval."""
    values = int_list(name, value)
    if len(set(values)) < 2:
        raise ValueError(f"{name}={value!r} is not allowed; claims are decided over seeds, so give at least 2 "
                         "distinct seeds (3 or more recommended), e.g. 1,2,3")
    return values


def _float_list(name: str, value: Any, requirement: str) -> list:
    """``value`` as a non-empty list, text entries turned into floats; the caller checks each number."""
    values = _as_list(value)
    if not values:
        raise ValueError(f"{name}={value!r} is not allowed; it must be a non-empty list of numbers {requirement}")
    converted = []
    for v in values:
        try:
            converted.append(float(v) if isinstance(v, str) else v)
        except ValueError:
            raise ValueError(f"{name}: {v!r} is not a number; it must be a list of numbers {requirement}") from None
    return converted


def positive_float_list(name: str, value: Any) -> list[float]:
    """A non-empty list of numbers > 0: a list, a bare number, or text like "1e-5,3e-5"."""
    return [positive_float(name, v) for v in _float_list(name, value, "> 0")]


def fraction_list(name: str, value: Any) -> list[float]:
    """A non-empty list of numbers in [0, 1): a list, a bare number, or text like "0.5,0.99"."""
    return [fraction(name, v) for v in _float_list(name, value, "in [0, 1)")]


def wise_ratios(name: str, value: Any) -> list[float]:
    """WiSE-FT interpolation ratios in (0, 1], sorted, that must include 0.5 (CLIP-CITE's ratio) and 1 (the
    fine-tuned end), the two points notebook 05 compares (0 is the pretrained model: zero-shot, scored once)."""
    values = _float_list(name, value, "in (0, 1]")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1 for v in values):
        raise ValueError(f"{name}={value!r} is not allowed; it must be a list of numbers in (0, 1]")
    missing = [r for r in (0.5, 1.0) if r not in values]
    if missing:
        raise ValueError(f"{name}={value!r} is not allowed; it must include {', '.join(f'{r:g}' for r in missing)} "
                         "(0.5 = CLIP-CITE, 1 = its fine-tuned end)")
    return sorted(float(v) for v in values)


def choice(*allowed: Any) -> Check:
    def check(name: str, value: Any) -> Any:
        if value not in allowed:
            raise ValueError(f"{name}={value!r} is not allowed; allowed: {', '.join(map(repr, allowed))}")
        return value
    return check


def precision(name: str, value: Any) -> str:
    """One of :data:`fslib.training.PRECISIONS` (what :func:`fslib.training.set_precision` takes)."""
    return choice(*PRECISIONS)(name, value)


def dataset_list(name: str, value: Any) -> list[str]:
    """Dataset names (embedded or torchvision) or image-folder paths: a list, or text "shapes,counting"."""
    from fslib.data import TORCHVISION_DATASETS, named_datasets

    values = _as_list(value)
    if not values:
        raise ValueError(f"{name} is empty; give at least one dataset")
    known = named_datasets() + TORCHVISION_DATASETS
    for v in values:
        if v not in known and not Path(v).is_dir():
            raise ValueError(f"{name}: unknown dataset {v!r}; allowed: {', '.join(known)}, or an image-folder path")
    return values


def dataset_name(name: str, value: Any) -> str:
    """One dataset, checked as :func:`dataset_list` checks each entry."""
    values = dataset_list(name, value)
    if len(values) != 1:
        raise ValueError(f"{name}={value!r} is not allowed; give exactly one dataset")
    return values[0]


def model_name(name: str, value: Any) -> str:
    models = open_clip.list_models()
    if value not in models:
        raise ValueError(f"{name}={value!r} is not an open_clip model; allowed: {', '.join(models)}")
    return value


def pretrained_tag(name: str, value: Any) -> str:
    """An open_clip pretrained tag ("openai", "laion2b_s34b_b88k", "embedded") or a checkpoint path.

    Which tags exist depends on the model, so ``load_clip`` checks the pair; here only the type.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}={value!r} is not allowed; it must be a pretrained tag such as 'openai' "
                         f"or 'embedded', or a checkpoint path")
    return value


def device(name: str, value: Any) -> str:
    import torch

    kind = str(value).split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{name}={value!r} is not allowed; allowed: 'cpu', 'cuda', 'cuda:N', 'mps'")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}={value!r} asked for CUDA, but no CUDA device is available; use 'cpu'")
    return str(value)


def _user_globals(namespace: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not k.isupper() and k not in _IPYTHON_NAMES  # NOTEBOOK is a constant
            and not isinstance(v, ModuleType) and not callable(v)}


def optional(check: Check) -> Check:
    """``check``, or ``None`` left as it is (a parameter that is off unless given)."""
    checked = lambda name, value: None if value is None else check(name, value)
    checked.wraps = getattr(check, "wraps", check)  # what the value is when given (check_own_data looks for it)
    return checked


TREND_POINTS = 3  # Spearman's rho needs three points per seed (MIN_LEVELS of them to decide a trend)


def over_a_trend(check: Check) -> Check:
    """``check``, then at least :data:`TREND_POINTS` values: a trend claim runs over them, and with fewer it
    would fail only after the work."""
    def checked(name: str, value: Any) -> Any:
        values = check(name, value)
        if len(values) < TREND_POINTS:
            raise ValueError(f"{name}={value!r} is not allowed: a trend claim runs over these, which needs at least "
                             f"{TREND_POINTS} (and {MIN_LEVELS} to be decided)")
        return values
    checked.wraps = getattr(check, "wraps", check)
    return checked


def dial_name(name: str, value: Any) -> str:
    """One of the dials of :mod:`fslib.world.dials`."""
    from fslib.world.dials import DIALS

    return choice(*DIALS)(name, value)


def dial_levels(name: str, value: Any) -> list[float]:
    """Levels of a dial, non-negative and increasing (which of them the dial has is checked where it is used:
    ``sketch_shift`` has 0, 0.2, ..., 1 and ``class_distance`` 1, ..., 6)."""
    levels = [float(v) for v in _as_list(value)]
    if not levels or any(v < 0 for v in levels) or levels != sorted(set(levels)):
        raise ValueError(f"{name}={value!r} is not allowed; give increasing non-negative levels, e.g. [0, 0.4, 0.8]")
    return levels


def scale(name: str, value: Any) -> str:
    """``"paper"`` (the powered protocol) or ``"lesson"`` (the same code at class size): see :mod:`fslib.scales`."""
    return choice(*scales.SCALES)(name, value)


# What every parameter name means, once for the whole kit: a notebook's parameters cell only assigns values.
CHECKS: dict[str, Check] = dict(
    scale=scale, model=model_name, pretrained=pretrained_tag, device=device, precision=precision, seeds=seeds,
    datasets=dataset_list, shots=positive_int, n_way=positive_int, tasks=positive_int, epochs=positive_int,
    train_per_class=positive_int, inner_steps=positive_int, lr_grid=positive_float_list,
    adapt_grid=non_negative_int_list, val_tasks=positive_int, ceiling=positive_float, lr=positive_float,
    augment=boolean, test_per_class=non_negative_int, dg_source=dataset_name, dg_targets=dataset_list,
    id_datasets=dataset_list, ood_datasets=dataset_list, novel_classes=positive_int, queries=positive_int,
    train_queries=positive_int, train_tasks=positive_int, test_tasks=positive_int, sparsity=fraction,
    experts=positive_int, taus=fraction_list, expert_counts=int_list, expert_blocks=positive_int_or_all,
    pretrained_teacher=boolean, finetune_steps=positive_int, finetune_lrs=fraction_list, curve_shots=int_list,
    kappa=non_negative_float, steps=positive_int, views=non_negative_int, lrs=positive_float_list,
    tune_on=dataset_name, ablation_on=dataset_name, ratios=wise_ratios, curve_dataset=dataset_name,
    datasets_per_protocol=positive_int, base_to_new_shots=positive_int,
    dg_shots=positive_int, episode_id_datasets=dataset_list, episode_ood_datasets=dataset_list,
    episode_shots=positive_int, episode_queries=positive_int,
    adapt_epochs=positive_int, dial=dial_name, levels=dial_levels, distance_dial=dial_name,
    distance_levels=dial_levels, shift_dial=dial_name, shift_levels=dial_levels, official_epochs=positive_int,
)
# Where a notebook gives a name another shape (a list of shot counts for a curve, a list of task sizes).
NOTEBOOK_CHECKS: dict[str, dict[str, Check]] = {
    "00_tour": dict(shots=int_list),
    # None: the level of the shift dial the dataset rule picks
    "06_compare": dict(shots=int_list, dg_source=optional(dataset_name)),
    # instead of the dial's levels, named datasets (real data): each decided on its own
    "04_llu": dict(datasets=optional(dataset_list)),
    "05_clip_cite": dict(datasets=optional(dataset_list)),
    "02_apex": dict(datasets=optional(over_a_trend(dataset_list)), levels=over_a_trend(dial_levels),
                    distance_levels=over_a_trend(dial_levels)),
    # the dials' levels that trend claims run over
    "01_mamf": dict(levels=over_a_trend(dial_levels), shift_levels=over_a_trend(dial_levels)),
    "03_smat": dict(levels=over_a_trend(dial_levels)),
}


def check_own_data(values: dict[str, Any], checks: dict[str, Check]) -> None:
    """Image folders among the datasets must hold enough training images per class for the largest shot count
    asked (``shots``, ``curve_shots``, ``base_to_new_shots``, ``dg_shots``) and at least ``n_way`` classes,
    checked before any work from the file listing alone."""
    from fslib.data import load_dataset

    folders = {v for name, value in values.items() if value is not None
               and getattr(checks[name], "wraps", checks[name]) in (dataset_list, dataset_name)
               for v in ([value] if isinstance(value, str) else value) if Path(v).is_dir()}
    shot_counts = [s for name in ("shots", "curve_shots", "base_to_new_shots", "dg_shots", "episode_shots")
                   for s in _as_list(values.get(name, []))]
    n_way = max(_as_list(values.get("n_way", 2)))
    for folder in sorted(folders):
        train = load_dataset(folder, "train")
        counts = np.bincount(train.labels, minlength=train.num_classes)
        if train.num_classes < max(2, n_way):
            raise ValueError(f"dataset {folder!r} has {train.num_classes} classes; this notebook needs at least "
                             f"{max(2, n_way)}")
        fewest = int(counts.argmin())
        if shot_counts and counts[fewest] < max(shot_counts):
            raise ValueError(
                f"dataset {folder!r}: class {train.classnames[fewest]!r} has {counts[fewest]} training images, fewer "
                f"than the {max(shot_counts)} shots asked; a <root>/<class>/ folder is cut 50/20/30 per class into "
                f"train/val/test, so a class needs at least {2 * max(shot_counts)} images (or lower the shots)")


def _refuse_embedded(model: Any, pretrained: Any) -> None:
    """``scale="paper-real"`` is the paper's protocol for real CLIP: the embedded model or random weights would
    spend a GPU's hours on numbers no paper reports."""
    from fslib.models import EMBEDDED_MODEL, EMBEDDED_PRETRAINED, RANDOM_INIT

    if model == EMBEDDED_MODEL or pretrained in (EMBEDDED_PRETRAINED, RANDOM_INIT):
        what = "the kit's embedded model" if model == EMBEDDED_MODEL else "random weights"
        raise ValueError(
            f"scale={scales.REAL_SCALE!r} runs the paper's protocol on real CLIP, but model={model!r}, "
            f"pretrained={pretrained!r} is {what}; "
            "give a real one, e.g. -p model ViT-B-16 -p pretrained openai -p device cuda (or -p pretrained "
            "/path/to/checkpoint.pt), or run scale='paper' on the embedded world")


def validate(namespace: dict[str, Any], notebook: str) -> SimpleNamespace:
    """Check ``notebook``'s parameters in ``namespace`` (its ``globals()``) and resolve its scale.

    Every user-defined global must be a parameter the kit knows (:data:`CHECKS`); a parameter left at
    ``None`` takes the value of the chosen ``scale`` (``None`` there too: ``$FSLIB_SCALE``, else
    ``"paper"``) from :mod:`fslib.scales`, and a value given explicitly wins over the scale's. Every value must
    pass its check; the error names the bad value and what is allowed. ``model`` and ``pretrained`` are
    checked together: the pretrained tag must exist for the model (or be a checkpoint path), without loading
    any weights. The result carries ``scale`` and ``given`` (the names set explicitly).
    """
    checks = {**CHECKS, **NOTEBOOK_CHECKS.get(notebook, {})}
    given = _user_globals(namespace)
    unknown = sorted(set(given) - set(checks))
    if unknown:
        known = ", ".join(k for k in given if k in checks)
        raise ValueError(f"unknown parameter(s) {', '.join(map(repr, unknown))}; {notebook}'s parameters: {known}")
    chosen_scale = scale("scale", given.get("scale") or os.environ.get("FSLIB_SCALE") or "paper")
    preset = scales.preset(notebook, chosen_scale)
    if chosen_scale == scales.REAL_SCALE:
        _refuse_embedded(given.get("model"), given.get("pretrained"))
    explicit = sorted(k for k, v in given.items() if v is not None and k in preset)
    values = {}
    for name, value in given.items():
        if name == "scale":
            continue
        if value is None and name not in preset:
            raise ValueError(f"{name}=None is not allowed: {notebook} has no scale value for it; give a value")
        values[name] = checks[name](name, preset[name] if value is None else value)
    values["scale"] = chosen_scale
    if "model" in values and "pretrained" in values:
        from fslib.models import resolve_pretrained

        resolve_pretrained(values["model"], values["pretrained"])
    check_own_data(values, checks)
    from_scale = [f"{k}={values[k]!r}" for k in preset if k in given and given[k] is None]
    print(textwrap.fill(f"scale {chosen_scale!r}" + (": " + ", ".join(from_scale) if from_scale else "")
                        + (f"; given explicitly: {', '.join(explicit)}" if explicit else ""), 100,
                        subsequent_indent="    "))
    return SimpleNamespace(**values, given=explicit)
