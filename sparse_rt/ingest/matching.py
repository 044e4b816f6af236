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

    sd = match_state_dict(ckpt, model)          # also appends its notes to ckpt.notes
    masks = match_masks(ckpt.masks, model, key_map=sd.key_map)
    model.load_state_dict(sd, strict=True)
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
    out = {}
    items = sorted((rename or {}).items(), key=lambda kv: -len(kv[0]))
    for k in keys:
        new = k
        for old, rep in items:
            if k.startswith(old):
                new = rep + k[len(old):]
                break
        out[k] = new
    return out


def _common_prefixes(keys: list[str]) -> list[str]:
    """Dotted prefixes shared by every key: ``["", "module.", "module.model."]``."""
    if not keys:
        return [""]
    split = [k.split(".")[:-1] for k in keys]
    common: list[str] = []
    for parts in zip(*split):
        if all(p == parts[0] for p in parts):
            common.append(parts[0])
        else:
            break
    return [""] + [".".join(common[: i + 1]) + "." for i in range(len(common))]


def _drop_module_components(k: str) -> str:
    return ".".join(p for p in k.split(".") if p != "module")


def _candidate_maps(src: list[str], dst: list[str]):
    """Yield ``(description, {src: mapped})`` candidates, simplest first."""
    yield "", {k: k for k in src}
    for strip in _common_prefixes(src):
        for add in _common_prefixes(dst):
            if not strip and not add:
                continue
            m = {k: add + k[len(strip):] for k in src}
            desc = []
            if strip:
                desc.append(f"stripped {strip!r} prefix")
            if add:
                desc.append(f"added {add!r} prefix")
            yield " and ".join(desc), m
    if any("module" in k.split(".") for k in src):
        yield "removed 'module.' path components", {k: _drop_module_components(k) for k in src}


def _score(mapped: Mapping[str, str], dst: set) -> tuple[int, int]:
    vals = list(mapped.values())
    hit = sum(v in dst for v in vals)
    return hit, -abs(len(set(vals)) - len(vals))


def align_subset(src_keys: Iterable[str], dst_keys: Iterable[str]) -> tuple[dict[str, str], str]:
    """Map ``src_keys`` into ``dst_keys`` (a subset match, used for masks).

    Returns ``({src: dst}, description)``; keys that cannot be mapped map to themselves.
    """
    src, dst = list(src_keys), list(dst_keys)
    dset = set(dst)
    best, best_desc, best_score = None, "", (-1, 0)
    for desc, m in _candidate_maps(src, dst):
        sc = _score(m, dset)
        if sc[0] == len(src) and sc[1] == 0:
            return m, desc
        if sc > best_score:
            best, best_desc, best_score = m, desc, sc
    return best if best is not None else {k: k for k in src}, best_desc


def _fmt_list(keys: list, n: int = 10) -> str:
    shown = ", ".join(str(k) for k in keys[:n])
    more = f", ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return f"({len(keys)}): [{shown}{more}]"


def _model_state(model) -> dict:
    if isinstance(model, torch.nn.Module):
        return model.state_dict()
    if isinstance(model, Mapping):
        return dict(model)
    raise TypeError(f"model must be an nn.Module or a state_dict, got {type(model).__name__}")


def match_state_dict(state_dict, model, rename: Mapping[str, str] | None = None) -> MatchedStateDict:
    """Return ``state_dict`` re-keyed for ``model.load_state_dict(..., strict=True)``.

    ``state_dict`` may be a plain dict or a :class:`~sparse_rt.ingest.Checkpoint`
    (then its ``.state_dict`` is used and the mapping notes are appended to its
    ``.notes``).  ``model`` is an ``nn.Module`` (or its ``state_dict()``).
    ``rename={"old.prefix": "new.prefix"}`` is applied first (``""`` as the old prefix
    adds a prefix to every key).  Raises :class:`CheckpointMismatchError`.
    """
    ckpt = None
    if hasattr(state_dict, "state_dict") and hasattr(state_dict, "notes") and not isinstance(state_dict, Mapping):
        ckpt, state_dict = state_dict, state_dict.state_dict
    target = _model_state(model)
    tkeys = list(target.keys())
    tset = set(tkeys)
    notes: list[str] = []

    renamed = apply_rename(state_dict.keys(), rename)
    if rename:
        n = sum(1 for k, v in renamed.items() if k != v)
        notes.append(f"rename {dict(rename)} changed {n} keys")
    src = list(renamed.values())
    if len(set(src)) != len(src):
        raise CheckpointMismatchError(
            f"rename={dict(rename or {})} maps several checkpoint keys to the same name"
        )

    best = None
    for desc, m in _candidate_maps(src, tkeys):
        vals = list(m.values())
        if len(set(vals)) != len(vals):
            continue
        vset = set(vals)
        missing = tset - vset
        if vset <= tset and all(k.endswith("num_batches_tracked") for k in missing):
            best = (desc, m)
            break
        sc = len(vset & tset)
        if best is None or sc > best[2]:
            best = (desc, m, sc)
    desc, m = best[0], best[1]
    vset = set(m.values())
    missing = [k for k in tkeys if k not in vset]
    unexpected = [k for k in src if m[k] not in tset]
    fillable = [k for k in missing if k.endswith("num_batches_tracked")]
    hard_missing = [k for k in missing if k not in fillable]

    inv = {v: k for k, v in renamed.items()}
    mismatched = []
    for s, t in m.items():
        if t in tset:
            a = state_dict[inv[s]]
            b = target[t]
            if tuple(a.shape) != tuple(b.shape):
                mismatched.append((t, tuple(a.shape), tuple(b.shape)))

    if hard_missing or unexpected or mismatched:
        lines = ["checkpoint does not match the model:"]
        if desc:
            lines.append(f"  (after the best prefix mapping found: {desc})")
        if hard_missing:
            lines.append(f"  missing in checkpoint {_fmt_list(hard_missing)}")
        if unexpected:
            lines.append(f"  unexpected in checkpoint {_fmt_list(unexpected)}")
        if mismatched:
            shown = [f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched]
            lines.append(f"  shape mismatch {_fmt_list(shown)}")
        lines.append(
            "If the names differ by a prefix, pass rename={\"old.prefix.\": \"new.prefix.\"} "
            "; if shapes differ, the architecture or its "
            "arguments (width, number of classes) do not match the checkpoint."
        )
        raise CheckpointMismatchError("\n".join(lines), hard_missing, unexpected, mismatched)

    out = MatchedStateDict()
    key_map = {}
    for orig, r in renamed.items():
        t = m[r]
        out[t] = state_dict[orig]
        key_map[orig] = t
    if desc:
        notes.append(f"{desc} to match the model ({len(src)} keys)")
    for k in fillable:
        out[k] = target[k].clone()
    if fillable:
        notes.append(f"filled {len(fillable)} num_batches_tracked buffers from the model")
    # keep the model's key order
    ordered = MatchedStateDict((k, out[k]) for k in tkeys if k in out)
    ordered.key_map = key_map
    ordered.notes = notes
    if ckpt is not None:
        ckpt.notes.extend(notes)
    return ordered


def match_masks(masks: Mapping[str, torch.Tensor], model, rename: Mapping[str, str] | None = None,
                key_map: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Re-key ``masks`` for ``model``.

    With ``key_map`` (``match_state_dict(...).key_map``) the exact same mapping is used;
    otherwise ``rename`` is applied and the prefix search runs against the model's
    parameter names.  Raises :class:`MaskKeyError` when a mask names no model tensor.
    """
    target = _model_state(model)
    if key_map is not None:
        out, bad = {}, []
        for k, v in masks.items():
            t = key_map.get(k)
            if t is None or t not in target:
                bad.append(k)
            else:
                out[t] = v
    else:
        renamed = apply_rename(masks.keys(), rename)
        m, _ = align_subset(renamed.values(), target.keys())
        out, bad = {}, []
        for k, v in masks.items():
            t = m[renamed[k]]
            if t in target:
                out[t] = v
            else:
                bad.append(k)
    if bad:
        raise MaskKeyError(
            f"masks name tensors the model does not have {_fmt_list(bad)}; "
            "pass rename={\"old.prefix.\": \"new.prefix.\"} if the names differ by a prefix"
        )
    for k, v in out.items():
        if tuple(v.shape) != tuple(target[k].shape):
            raise MaskShapeError(
                f"mask for {k} has shape {list(v.shape)} but the model's tensor has {list(target[k].shape)}"
            )
    return out
