"""One registry of the kit's methods, variants and baselines, filled where each is defined (as open_clip
registers its model configurations): ``create_method(name, clip, **overrides)`` builds any of them,
``list_methods()`` names them, ``save_method`` and ``load_method`` keep a fitted one.

A registration names the paper it comes from, its default settings, and, for the methods 06 compares
on labelled shots (``compared=True``), the one hyper-parameter 06 chooses on validation (a :class:`Knob`).
A new method registers itself in its own module and is one of 06's contenders with no other edit::

    register_method("nearest centroid", NearestCentroid, paper="Snell et al., 2017", compared=True)
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from fslib.methods.base import Method
from fslib.models import Clip

# The learning rates of every method that tunes a whole tower (a ladder of knob values, see Knob).
TOWER_LEARNING_RATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)


@dataclass(frozen=True)
class Knob:
    """The hyper-parameter chosen on validation: a keyword of the method, the ``ladder`` of values it may
    take in order, and the position of the first of the three values tried
    (:func:`fslib.protocols.search_ladder` climbs from there)."""

    name: str
    ladder: tuple
    start: int = 0


@dataclass(frozen=True)
class Registered:
    """A registered method: ``build(clip, **options)`` with ``defaults`` under any overrides."""

    name: str
    build: Callable[..., Method]
    paper: str
    defaults: dict = field(default_factory=dict)
    knob: Knob | None = None
    compared: bool = False
    parameter_efficient: bool = False

    def accepts(self, option: str) -> bool:
        """Whether the method takes ``option`` as a keyword (the shared budget is given to those that do)."""
        parameters = inspect.signature(self.build).parameters.values()
        return any(p.name == option or p.kind is p.VAR_KEYWORD for p in parameters)


_METHODS: dict[str, Registered] = {}


def register_method(name: str, build: Callable[..., Method], /, *, paper: str, knob: Knob | None = None,
                    compared: bool = False, parameter_efficient: bool = False, **defaults: Any) -> Registered:
    """Register ``build`` (a :class:`~fslib.methods.base.Method` class or factory taking the Clip first)
    under ``name`` with ``defaults``. ``compared``: one of 06's contenders on labelled shots, with ``knob``
    chosen on validation (None: nothing to choose); ``parameter_efficient``: it adapts without training a
    tower (a head, an adapter, a cache or prompts), so 06 counts it among the parameter-efficient rivals.
    Registering a taken name is an error."""
    if name in _METHODS:
        raise ValueError(f"a method named {name!r} is already registered ({_METHODS[name].paper})")
    entry = Registered(name, build, paper, dict(defaults), knob, compared, parameter_efficient)
    _METHODS[name] = entry
    return entry


def unregister_method(name: str) -> None:
    """Remove a registration (a test's own method, once the test is done)."""
    registered(name)
    del _METHODS[name]


def registered(name: str) -> Registered:
    """The registration of ``name``."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(_METHODS)}")
    return _METHODS[name]


def list_methods(compared: bool | None = None) -> list[str]:
    """Every registered name in registration order; ``compared=True`` only 06's contenders."""
    return [name for name, entry in _METHODS.items() if compared is None or entry.compared == compared]


def create_method(name: str, clip: Clip, /, **overrides: Any) -> Method:
    """A fresh, unfitted method ``name`` on ``clip``: its registered defaults with ``overrides``."""
    entry = registered(name)
    unknown = [option for option in overrides if not entry.accepts(option)]
    if unknown:
        allowed = [p for p in inspect.signature(entry.build).parameters if p != "clip"]
        raise ValueError(f"{name} takes no option {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")
    method = entry.build(clip, **{**entry.defaults, **overrides})
    method.made_as = (name, dict(overrides))  # what save_method records
    return method


def save_method(method: Method, path: str | Path) -> None:
    """Save a fitted method made by :func:`create_method`: its registered name, the options it was made
    with and its ``state_dict`` (what ``fit`` and any meta-training learned)."""
    if getattr(method, "made_as", None) is None:
        raise ValueError(f"{method.name} was not made by create_method: build it with create_method to save it")
    name, options = method.made_as
    torch.save({"method": name, "options": options, "state": method.state_dict()}, path)


def load_method(path: str | Path, clip: Clip) -> Method:
    """A method saved by :func:`save_method`, on ``clip`` (the model it was fitted from): its logits are
    the saved method's."""
    saved = torch.load(path, map_location=clip.device, weights_only=False)
    method = create_method(saved["method"], clip, **saved["options"])
    method.load_state_dict(saved["state"])
    return method
