"""Masks as checkpoints and users hand them over: unwrapping, validation, re-keying."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .errors import MaskKeyError, MaskShapeError, MaskValueError
from .loading import check_tensor, key_families
from .matching import align_subset

__all__ = ["load_mask_mapping", "as_bool_mask", "align_mask_names"]


def _as_tensor(value: Any) -> Any:
    """NumPy arrays become tensors; anything else is returned as it is (and rejected later)."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        import numpy as np

        if isinstance(value, np.ndarray):
            return torch.as_tensor(value)
    except ImportError:  # pragma: no cover
        pass
    return value


def load_mask_mapping(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """``{name: mask tensor}`` from ``{name: mask}``, ``sparsifier.state_dict()``,
    ``sparsifier.state``, rigl-reproducibility ``Masking.state_dict()`` or a whole
    rigl-reproducibility checkpoint.  ``None`` entries (layers kept dense) are skipped."""
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise MaskValueError(f"{source}: masks must be a dict {{name: tensor}}, got {type(obj).__name__}")
    if isinstance(obj.get("state"), Mapping) and "groups" in obj:
        obj = obj["state"]
    elif isinstance(obj.get("mask"), Mapping) and isinstance(obj["mask"].get("masks"), Mapping):
        obj = obj["mask"]["masks"]
    elif isinstance(obj.get("masks"), Mapping):
        obj = obj["masks"]
    masks = {}
    for name, value in obj.items():
        if isinstance(value, Mapping) and "mask" in value:
            value = value["mask"]
        if value is None:
            continue
        value = _as_tensor(value)
        if not isinstance(value, torch.Tensor):
            raise MaskValueError(f"{source}: masks[{name!r}] is a {type(value).__name__}, expected a 0/1 tensor")
        masks[str(name)] = value
    return masks


def as_bool_mask(name: str, mask: torch.Tensor, shape, source: str) -> torch.Tensor:
    """``mask`` as ``torch.bool`` after checking it is a tensor of ``shape`` holding only 0 and 1."""
    if not isinstance(mask, torch.Tensor):
        raise MaskValueError(f"{source}: mask for {name!r} is a {type(mask).__name__}, expected a 0/1 tensor")
    check_tensor(name, mask, source)
    if tuple(mask.shape) != tuple(shape):
        if mask.numel() == int(torch.Size(shape).numel()):
            hint = " (same number of elements: a reshaped or transposed mask?)"
        else:
            hint = ""
        raise MaskShapeError(
            f"{source}: mask for {name!r} has shape {list(mask.shape)} but the tensor has shape {list(shape)}{hint}"
        )
    if mask.dtype == torch.bool:
        return mask.clone()
    if mask.is_complex():
        raise MaskValueError(f"{source}: mask for {name!r} is complex ({mask.dtype})")
    bad = (mask != 0) & (mask != 1)
    if bool(bad.any()):
        values = torch.unique(mask[bad])[:5].tolist()
        raise MaskValueError(
            f"{source}: mask for {name!r} ({mask.dtype}) holds values other than 0 and 1, e.g. {values} "
            f"({int(bad.sum())} of {mask.numel()} entries). Masks must be 0/1 (or bool); scores need their "
            "form's mask_form= (e.g. 'continuous_sparsification')."
        )
    return mask != 0


def align_mask_names(masks: dict, weights: Mapping, source: str, notes: list[str], what: str) -> dict:
    """``masks`` re-keyed onto ``weights``' names (a prefix added or stripped, noted);
    raises :class:`MaskKeyError` when a mask names no tensor.  ``what`` names the masks in messages."""
    if not masks:
        return {}
    if all(name in weights for name in masks):
        return dict(masks)
    name_map, description = align_subset(list(masks), list(weights))
    unknown = [name for name in masks if name_map[name] not in weights]
    if unknown:
        raise MaskKeyError(
            f"{source}: {what} name {len(unknown)} tensors the checkpoint does not have: {unknown[:10]}"
            f"{' ...' if len(unknown) > 10 else ''}. Checkpoint key families: {key_families(weights)}; "
            f"first keys: {list(weights)[:5]}"
        )
    if description:
        notes.append(f"{what}: {description} on {len(masks)} names to match the checkpoint keys")
    return {name_map[name]: mask for name, mask in masks.items()}
