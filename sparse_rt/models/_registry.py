"""Name -> factory registry behind :func:`sparse_rt.models.create`.

Kept in its own module so the family files can import :func:`register` without a
circular import through ``sparse_rt/models/__init__.py``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch.nn as nn

__all__ = ["ModelArgumentError", "register", "create", "names", "get_factory", "input_shape", "keep_dense"]

Factory = Callable[..., nn.Module]
# A fixed per-sample shape, or a function of the factory's keyword arguments.
InputShape = Union[Tuple[int, ...], Callable[..., Tuple[int, ...]], None]


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    input_shape: InputShape
    keep_dense: Tuple[str, ...]


_REGISTRY: Dict[str, _Entry] = {}


class ModelArgumentError(TypeError, ValueError):
    """Bad keyword arguments for a zoo model.

    Derives from both ``TypeError`` (what Python raises for an unexpected keyword)
    and ``ValueError`` so callers may catch either.
    """


def register(name: str, *, input_shape: InputShape = None,
             keep_dense: Tuple[str, ...] = ()) -> Callable[[Factory], Factory]:
    """Decorator: ``@register("resnet18", input_shape=(3, 224, 224), keep_dense=("conv1",))`` adds
    a factory under ``name`` with the facts other parts ask of a zoo model: its standard per-sample
    input shape (a tuple, or a function of the factory's keyword arguments) and the layers that
    pruning recipes leave dense (the stem convolution of a CNN).

    A factory takes keyword arguments only and returns an ``nn.Module``.
    Registering the same name twice is an error.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")

    def deco(fn: Factory) -> Factory:
        if name in _REGISTRY and _REGISTRY[name].factory is not fn:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = _Entry(fn, input_shape, tuple(keep_dense))
        return fn

    return deco


def names() -> List[str]:
    """Sorted list of the registered model names."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(names())}"
        ) from None


def get_factory(name: str) -> Factory:
    """The factory registered under ``name`` (``ValueError`` if unknown)."""
    return _entry(name).factory


def input_shape(name: str, **kwargs) -> Optional[Tuple[int, ...]]:
    """The standard per-sample input shape of zoo model ``name`` built with ``kwargs`` (no batch
    dimension); ``None`` for a model registered without one."""
    shape = _entry(name).input_shape
    return shape(**kwargs) if callable(shape) else shape


def keep_dense(name: str) -> Tuple[str, ...]:
    """The layers of zoo model ``name`` that pruning recipes leave dense."""
    return _entry(name).keep_dense


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
