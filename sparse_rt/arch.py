"""Architectures named by a spec: a zoo name ("cifar_resnet") or an import string
("pkg.module:factory"), plus JSON-serializable keyword arguments. The spec is what a .srt file
records so that the model can be rebuilt."""

import importlib
import json
from typing import Optional, Tuple, Union

from torch import nn

from . import models


class ArchitectureError(ValueError):
    """The architecture cannot be built from what was given."""


def is_import_string(name: str) -> bool:
    return ":" in name


def spec_input_shape(spec: Optional[dict]) -> Optional[tuple]:
    """The standard per-sample input shape of the architecture a spec names, when it is a zoo
    model that knows its shape; None otherwise (a module instance, an import string, ...)."""
    if spec is None or is_import_string(spec["name"]) or spec["name"] not in models.names():
        return None
    return models.input_shape(spec["name"], **(spec.get("kwargs") or {}))


def build_arch(arch: Union[nn.Module, str], kwargs: Optional[dict] = None) -> Tuple[nn.Module, Optional[dict]]:
    """Returns (module, spec). `arch` is an nn.Module (used as is), a callable returning one (a
    class or a factory, called with `kwargs`: a fresh instance per call, as an ensemble's members
    need), a zoo name or "pkg.module:factory"; `kwargs` go to the factory. spec is {"name": arch,
    "kwargs": kwargs}, or None for a module or a callable, which a file cannot record."""
    kwargs = dict(kwargs or {})
    if isinstance(arch, nn.Module):
        if kwargs:
            raise ArchitectureError("arch_kwargs apply to a zoo name, an import string or a callable, not to an "
                                    "nn.Module instance")
        return arch, None
    if callable(arch):
        module = arch(**kwargs)
        if not isinstance(module, nn.Module):
            raise ArchitectureError(f"arch {getattr(arch, '__name__', arch)!r} returned a {type(module).__name__}, "
                                    "not an nn.Module")
        return module, None
    if not isinstance(arch, str) or not arch:
        raise ArchitectureError(f"arch must be an nn.Module, a callable returning one, a zoo name or "
                                f"'pkg.module:factory', got {arch!r}")
    try:
        json.dumps(kwargs)
    except TypeError as e:
        raise ArchitectureError(f"arch_kwargs for {arch!r} must be JSON values (they are recorded in "
                                f"the .srt file): {e}") from None
    module = _from_import_string(arch, kwargs) if is_import_string(arch) else _from_zoo(arch, kwargs)
    return module, {"name": arch, "kwargs": kwargs}


def _from_zoo(name, kwargs):
    if name not in models.names():
        raise ArchitectureError(f"arch {name!r} is neither a zoo model ({', '.join(models.names())}) "
                                "nor an import string 'pkg.module:factory'")
    try:
        return models.create(name, **kwargs)
    except (TypeError, ValueError) as e:
        raise ArchitectureError(str(e)) from None


def _from_import_string(spec, kwargs):
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ArchitectureError(f"import string {spec!r} must look like 'pkg.module:factory'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ArchitectureError(f"arch {spec!r}: cannot import {module_name!r}: {e}") from None
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise ArchitectureError(f"arch {spec!r}: {obj.__name__!r} has no attribute {attr!r}")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise ArchitectureError(f"arch {spec!r} is not callable")
    try:
        module = _from_hf_config(obj, kwargs["config"]) if _is_hf_config(kwargs) else obj(**kwargs)
    except TypeError as e:
        raise ArchitectureError(f"arch {spec!r} rejected the keyword arguments {kwargs}: {e}") from None
    if not isinstance(module, nn.Module):
        raise ArchitectureError(f"arch {spec!r} returned a {type(module).__name__}, not an nn.Module")
    return module


def _is_hf_config(kwargs):
    """arch_kwargs of a Hugging Face model class or Auto class: {"config": config.json as a dict}."""
    return set(kwargs) == {"config"} and isinstance(kwargs["config"], dict) and "model_type" in kwargs["config"]


def _from_hf_config(model_class, config):
    """A transformers model (random weights) of `config`, without the hub: an Auto class picks the
    class by its model_type, a model class takes the config object."""
    import transformers

    values = dict(config)
    try:
        hf_config = transformers.AutoConfig.for_model(values.pop("model_type"), **values)
    except (ValueError, KeyError) as e:
        raise ArchitectureError(f"the Hugging Face config cannot be built: {e}") from None
    builder = getattr(model_class, "from_config", None)
    return builder(hf_config) if builder is not None else model_class(hf_config)
