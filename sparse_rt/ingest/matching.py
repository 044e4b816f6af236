"""Map checkpoint keys onto a model's ``state_dict`` keys.

:func:`match_state_dict` accepts a checkpoint whose keys differ from the model's only
by whole leading path components — ``module.`` (DataParallel / DDP), ``model.``
(open_lth's ``PrunedModel``, Lightning modules), ``_orig_mod.`` (``torch.compile``),
or any other prefix shared by every key — and by ``module.`` components inside the
path (``model.features = DataParallel(model.features)`` in the pytorch/examples ImageNet
script that rigl-torch and FreeTickets copy).  It tries every combination of
"strip a prefix common to all checkpoint keys" and "add a prefix common to all model
keys" and keeps the one that maps the key set exactly onto the model's.  Anything
else raises :class:`CheckpointMismatchError`, listing the missing, unexpected and
shape-mismatched keys, with the ``rename={"old.prefix": "new.prefix"}`` escape hatch.

``num_batches_tracked`` buffers (absent from checkpoints written before PyTorch 0.4.1)
are filled from the model with a note: they do not affect inference.

Masks: :func:`match_masks` maps ``Checkpoint.masks`` with the same key map (the dict
returned by :func:`match_state_dict` carries it as ``.key_map``), so the usual call is::

    state_dict = match_state_dict(ckpt, model)          # also appends its notes to ckpt.notes
    masks = match_masks(ckpt.masks, model, key_map=state_dict.key_map)
    model.load_state_dict(state_dict, strict=True)
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from .errors import CheckpointMismatchError, MaskKeyError, MaskShapeError

__all__ = ["MatchedStateDict", "match_state_dict", "match_masks", "apply_rename", "align_subset"]


class MatchedStateDict(dict):
    """A plain ``dict`` (ready for ``load_state_dict(strict=True)``) that also carries

    * ``key_map``: ``{checkpoint key: model key}`` for every key it kept,
    * ``notes``: what was mapped (empty when the keys matched as they were).
    """

    key_map: dict
    notes: list


def apply_rename(keys: Iterable[str], rename: Mapping[str, str] | None) -> dict[str, str]:
    """``{key: renamed key}``; the longest matching ``old`` prefix wins, ``""`` adds a prefix."""
    renamed = {}
    longest_first = sorted((rename or {}).items(), key=lambda old_new: -len(old_new[0]))
    for key in keys:
        new_key = key
        for old, new in longest_first:
            if key.startswith(old):
                new_key = new + key[len(old):]
                break
        renamed[key] = new_key
    return renamed


def _common_prefixes(keys: list[str]) -> list[str]:
    """Dotted prefixes shared by every key: ``["", "module.", "module.model."]``."""
    if not keys:
        return [""]
    paths = [key.split(".")[:-1] for key in keys]
    common: list[str] = []
    for parts in zip(*paths):
        if all(part == parts[0] for part in parts):
            common.append(parts[0])
        else:
            break
    return [""] + [".".join(common[: i + 1]) + "." for i in range(len(common))]


def _drop_module_components(key: str) -> str:
    return ".".join(part for part in key.split(".") if part != "module")


def _candidate_maps(source: list[str], destination: list[str]):
    """Yield ``(description, {source key: mapped key})`` candidates, simplest first."""
    yield "", {key: key for key in source}
    for strip in _common_prefixes(source):
        for add in _common_prefixes(destination):
            if not strip and not add:
                continue
            changes = []
            if strip:
                changes.append(f"stripped {strip!r} prefix")
            if add:
                changes.append(f"added {add!r} prefix")
            yield " and ".join(changes), {key: add + key[len(strip):] for key in source}
    if any("module" in key.split(".") for key in source):
        yield "removed 'module.' path components", {key: _drop_module_components(key) for key in source}


def _score(mapped: Mapping[str, str], destination: set) -> tuple[int, int]:
    names = list(mapped.values())
    hits = sum(name in destination for name in names)
    return hits, -abs(len(set(names)) - len(names))


def align_subset(src_keys: Iterable[str], dst_keys: Iterable[str]) -> tuple[dict[str, str], str]:
    """Map ``src_keys`` into ``dst_keys`` (a subset match, used for masks).

    Returns ``({src: dst}, description)``; keys that cannot be mapped map to themselves.
    """
    source, destination = list(src_keys), list(dst_keys)
    destination_set = set(destination)
    best, best_description, best_score = None, "", (-1, 0)
    for description, mapping in _candidate_maps(source, destination):
        score = _score(mapping, destination_set)
        if score[0] == len(source) and score[1] == 0:
            return mapping, description
        if score > best_score:
            best, best_description, best_score = mapping, description, score
    return best if best is not None else {key: key for key in source}, best_description


def _listing(keys: list, shown_at_most: int = 10) -> str:
    shown = ", ".join(str(key) for key in keys[:shown_at_most])
    more = f", ... (+{len(keys) - shown_at_most} more)" if len(keys) > shown_at_most else ""
    return f"({len(keys)}): [{shown}{more}]"


def _model_state(model) -> dict:
    if isinstance(model, torch.nn.Module):
        return model.state_dict()
    if isinstance(model, Mapping):
        return dict(model)
    raise TypeError(f"model must be an nn.Module or a state_dict, got {type(model).__name__}")


def _fillable(model_key: str) -> bool:
    """Buffers a checkpoint may lack (older than PyTorch 0.4.1) without changing inference."""
    return model_key.endswith("num_batches_tracked")


def match_state_dict(state_dict, model, rename: Mapping[str, str] | None = None) -> MatchedStateDict:
    """Return ``state_dict`` re-keyed for ``model.load_state_dict(..., strict=True)``.

    ``state_dict`` may be a plain dict or a :class:`~sparse_rt.ingest.Checkpoint`
    (then its ``.state_dict`` is used and the mapping notes are appended to its
    ``.notes``).  ``model`` is an ``nn.Module`` (or its ``state_dict()``).
    ``rename={"old.prefix": "new.prefix"}`` is applied first (``""`` as the old prefix
    adds a prefix to every key).  Raises :class:`CheckpointMismatchError`.
    """
    checkpoint = None
    if hasattr(state_dict, "state_dict") and hasattr(state_dict, "notes") and not isinstance(state_dict, Mapping):
        checkpoint, state_dict = state_dict, state_dict.state_dict
    target = _model_state(model)
    notes: list[str] = []
    renamed = _renamed_keys(state_dict, rename, notes)
    description, mapping = _best_key_map(list(renamed.values()), list(target))
    _check_match(state_dict, target, renamed, mapping, description)
    matched = _assemble(state_dict, target, renamed, mapping, description, notes)
    if checkpoint is not None:
        checkpoint.notes.extend(notes)
    return matched


def _renamed_keys(state_dict: Mapping, rename: Mapping[str, str] | None, notes: list[str]) -> dict[str, str]:
    """``{checkpoint key: key after rename=}``; several keys renamed to one name is an error."""
    renamed = apply_rename(state_dict.keys(), rename)
    if rename:
        changed = sum(1 for key, new in renamed.items() if key != new)
        notes.append(f"rename {dict(rename)} changed {changed} keys")
    if len(set(renamed.values())) != len(renamed):
        raise CheckpointMismatchError(
            f"rename={dict(rename or {})} maps several checkpoint keys to the same name"
        )
    return renamed


def _best_key_map(source_keys: list[str], model_keys: list[str]) -> tuple[str, dict[str, str]]:
    """``(description, {source key: model key})``: the first candidate that lands exactly on the
    model's keys (bar fillable buffers), else the one that hits the most model keys."""
    model_key_set = set(model_keys)
    best_description, best_mapping, best_hits = "", None, -1
    for description, mapping in _candidate_maps(source_keys, model_keys):
        mapped = set(mapping.values())
        if len(mapped) != len(mapping):  # two keys would collapse onto one
            continue
        if mapped <= model_key_set and all(_fillable(key) for key in model_key_set - mapped):
            return description, mapping
        hits = len(mapped & model_key_set)
        if hits > best_hits:
            best_description, best_mapping, best_hits = description, mapping, hits
    return best_description, best_mapping


def _check_match(state_dict: Mapping, target: Mapping, renamed: dict[str, str], mapping: dict[str, str],
                 description: str) -> None:
    """Raise :class:`CheckpointMismatchError` listing missing, unexpected and mis-shaped keys."""
    mapped = set(mapping.values())
    missing = [key for key in target if key not in mapped and not _fillable(key)]
    unexpected = [key for key, model_key in mapping.items() if model_key not in target]
    mismatched = []
    for checkpoint_key, renamed_key in renamed.items():
        model_key = mapping[renamed_key]
        if model_key in target:
            checkpoint_shape = tuple(state_dict[checkpoint_key].shape)
            model_shape = tuple(target[model_key].shape)
            if checkpoint_shape != model_shape:
                mismatched.append((model_key, checkpoint_shape, model_shape))
    if not (missing or unexpected or mismatched):
        return
    lines = ["checkpoint does not match the model:"]
    if description:
        lines.append(f"  (after the best prefix mapping found: {description})")
    if missing:
        lines.append(f"  missing in checkpoint {_listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected in checkpoint {_listing(unexpected)}")
    if mismatched:
        shown = [f"{key}: checkpoint {list(a)} vs model {list(b)}" for key, a, b in mismatched]
        lines.append(f"  shape mismatch {_listing(shown)}")
    lines.append(
        "If the names differ by a prefix, pass rename={\"old.prefix.\": \"new.prefix.\"} "
        "; if shapes differ, the architecture or its "
        "arguments (width, number of classes) do not match the checkpoint."
    )
    raise CheckpointMismatchError("\n".join(lines), missing, unexpected, mismatched)


def _assemble(state_dict: Mapping, target: Mapping, renamed: dict[str, str], mapping: dict[str, str],
              description: str, notes: list[str]) -> MatchedStateDict:
    """The re-keyed tensors in the model's key order, fillable buffers copied from the model."""
    by_model_key = {}
    key_map = {}
    for checkpoint_key, renamed_key in renamed.items():
        model_key = mapping[renamed_key]
        by_model_key[model_key] = state_dict[checkpoint_key]
        key_map[checkpoint_key] = model_key
    if description:
        notes.append(f"{description} to match the model ({len(renamed)} keys)")
    filled = [key for key in target if key not in by_model_key and _fillable(key)]
    for key in filled:
        by_model_key[key] = target[key].clone()
    if filled:
        notes.append(f"filled {len(filled)} num_batches_tracked buffers from the model")
    matched = MatchedStateDict((key, by_model_key[key]) for key in target if key in by_model_key)
    matched.key_map = key_map
    matched.notes = notes
    return matched


def match_masks(masks: Mapping[str, torch.Tensor], model, rename: Mapping[str, str] | None = None,
                key_map: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Re-key ``masks`` for ``model``.

    With ``key_map`` (``match_state_dict(...).key_map``) the exact same mapping is used;
    otherwise ``rename`` is applied and the prefix search runs against the model's
    parameter names.  Raises :class:`MaskKeyError` when a mask names no model tensor.
    """
    target = _model_state(model)
    if key_map is None:
        renamed = apply_rename(masks.keys(), rename)
        name_map, _ = align_subset(renamed.values(), target.keys())
        model_key_of = {name: name_map[renamed[name]] for name in masks}
    else:
        model_key_of = {name: key_map.get(name) for name in masks}
    matched, unknown = {}, []
    for name, mask in masks.items():
        model_key = model_key_of[name]
        if model_key is None or model_key not in target:
            unknown.append(name)
        else:
            matched[model_key] = mask
    if unknown:
        raise MaskKeyError(
            f"masks name tensors the model does not have {_listing(unknown)}; "
            "pass rename={\"old.prefix.\": \"new.prefix.\"} if the names differ by a prefix"
        )
    for model_key, mask in matched.items():
        if tuple(mask.shape) != tuple(target[model_key].shape):
            raise MaskShapeError(f"mask for {model_key} has shape {list(mask.shape)} "
                                 f"but the model's tensor has {list(target[model_key].shape)}")
    return matched
