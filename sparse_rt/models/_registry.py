"""Name -> factory registry behind :func:`sparse_rt.models.create`.

Kept in its own module so the family files can import :func:`register` without a
circular import through ``sparse_rt/models/__init__.py``.
"""

from __future__ import annotations

import inspect
from typing import Callable, Dict, List

import torch.nn as nn

__all__ = ["ModelArgumentError", "register", "create", "names", "get_factory"]

Factory = Callable[..., nn.Module]

_REGISTRY: Dict[str, Factory] = {}


class ModelArgumentError(TypeError, ValueError):
    """Bad keyword arguments for a zoo model.

    Derives from both ``TypeError`` (what Python raises for an unexpected keyword)
    and ``ValueError`` so callers may catch either.
    """


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator: ``@register("resnet18")`` adds a factory under ``name``.

    A factory takes keyword arguments only and returns an ``nn.Module``.
    Registering the same name twice is an error.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")

    def deco(fn: Factory) -> Factory:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def names() -> List[str]:
    """Sorted list of the registered model names."""
    return sorted(_REGISTRY)


def get_factory(name: str) -> Factory:
    """The factory registered under ``name`` (``ValueError`` if unknown)."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(names())}"
        ) from None


def _describe_params(fn: Factory) -> str:
    parts = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return ", ".join(parts) if parts else "(none)"


def create(name: str, **kwargs) -> nn.Module:
    """Build the zoo model ``name`` with keyword arguments ``kwargs``.

    Raises ``ValueError`` for an unknown name (the message lists the known names),
    :class:`ModelArgumentError` for keyword arguments the model does not accept, and
    ``ValueError`` for accepted arguments with unsupported values (e.g. a depth).
    """
    fn = get_factory(name)
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        raise ModelArgumentError(
            f"bad arguments for model {name!r}: {e}; accepted keyword arguments: "
            f"{_describe_params(fn)}"
        ) from None
    return fn(**kwargs)
