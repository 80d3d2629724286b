"""Registry of optimizer builders: adding an optimizer is one module with one `@register`.

A builder is `builder(model, *, hparam=default, ...) -> OptimizerBundle`; its keyword-only
arguments ARE the optimizer's hyper-parameters (and the keys of conf/optim/<name>.yaml).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from specsweep.optim.bundle import OptimizerBundle

Builder = Callable[..., OptimizerBundle]
TagFn = Callable[[Mapping[str, Any]], str]


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    tag: TagFn | None


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, *, tag: TagFn | None = None) -> Callable[[Builder], Builder]:
    """Decorator registering `builder` under `name`; `tag(hparams)` gives the run-id piece
    (hparams there are the builder defaults updated with the given ones)."""

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"optimizer {name!r} is already registered")
        _check_builder_signature(name, builder)
        _REGISTRY[name] = _Entry(builder, tag)
        return builder

    return decorate


def registered_optimizers() -> list[str]:
    """Names of every registered optimizer, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def hparam_defaults(name: str) -> dict[str, Any]:
    """The hyper-parameters of optimizer `name` with their defaults."""
    return {k: p.default for k, p in _hparam_params(_entry(name).builder).items()}


def hparam_owners() -> dict[str, list[str]]:
    """Every hyper-parameter of any registered optimizer -> the optimizers that take it (sorted)."""
    owners: dict[str, list[str]] = {}
    for name in registered_optimizers():
        for key in _hparam_params(_REGISTRY[name].builder):
            owners.setdefault(key, []).append(name)
    return dict(sorted(owners.items()))


def build_optimizer(model: nn.Module, name: str, **hparams: Any) -> OptimizerBundle:
    """Build the optimizer `name` for `model`; unknown names or hparams raise ValueError."""
    entry = _entry(name)
    known = _hparam_params(entry.builder)
    unknown = sorted(set(hparams) - set(known))
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s) {unknown} for optimizer {name!r}; known: {sorted(known)}")
    return entry.builder(model, **hparams)


def optimizer_tag(name: str, hparams: Mapping[str, Any] | None = None) -> str:
    """Run-id piece of an optimizer, e.g. 'adamw', 'muon', 'dion-r0.0625'."""
    entry = _entry(name)
    if entry.tag is None:
        return name
    hparams = dict(hparams or {})
    hparams.pop("name", None)
    return entry.tag({**hparam_defaults(name), **hparams})


def _entry(name: str) -> _Entry:
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def _hparam_params(builder: Builder) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(builder).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check_builder_signature(name: str, builder: Builder) -> None:
    params = list(inspect.signature(builder).parameters.values())
    if not params or params[0].kind is inspect.Parameter.KEYWORD_ONLY:
        raise TypeError(f"builder of {name!r} must take the model as its first positional argument")
    for p in params[1:]:
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is inspect.Parameter.empty:
            raise TypeError(f"builder of {name!r}: hyper-parameter {p.name!r} must be keyword-only with a default")


def _load_builtin() -> None:
    # each built-in optimizer module registers its builder on import; imported lazily
    # because those modules import this one
    import specsweep.optim.adamw  # noqa: F401
    import specsweep.optim.dion  # noqa: F401
    import specsweep.optim.lion  # noqa: F401
    import specsweep.optim.muon  # noqa: F401
    import specsweep.optim.normuon  # noqa: F401
