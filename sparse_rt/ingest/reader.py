"""``read_checkpoint``: one entry point for every checkpoint form (see :mod:`.forms`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .errors import (
    AmbiguousFormError,
    CheckpointNotFoundError,
    FormNotPresentError,
    MaskKeyError,
    MaskShapeError,
    MaskValueError,
    MissingMasksError,
)
from .forms import FORMS, HANDLERS, detect_forms, suspicious_keys, unknown_layout, _has_openlth_ckpt
from .loading import find_state_dict, key_families, load_file, sha256_of_files
from .matching import align_subset
from .openlth import looks_like_openlth, resolve_openlth

__all__ = ["Checkpoint", "read_checkpoint"]


@dataclass
class Checkpoint:
    """What :func:`read_checkpoint` found.

    * ``state_dict``: effective tensors (masks multiplied in, CS scale folded in),
      wrapper and ``module.`` prefix removed, mask/auxiliary entries (``*_mask``,
      ``*_orig``, ``mask_weight``, ``init_weight``, ``threshold``, ``mask_*``) removed,
      keys named as the inference model expects (``layer.weight``).
    * ``masks``: ``{param name: torch.bool tensor}`` for every masked param, same
      shape as ``state_dict[name]``.  For ``dense_zeros`` these are inferred
      (``w != 0`` of floating ``*.weight`` tensors with >= 2 dims) and
      ``masks_inferred`` is True.
    * ``form``: one of :data:`FORMS`.
    * ``notes``: human-readable lines about what was detected and mapped.
    * ``source_sha256``: sha256 of the checkpoint bytes; for an OpenLTH folder, of the
      concatenated bytes of ``files`` in that order (weights file, then ``mask.pth``).
    * ``files``: the checkpoint files read; ``masks_sha256``: sha256 of a ``masks=``
      file, if one was given; ``meta``: scalar entries found beside the state dict
      (``epoch``, ``arch``, ...).
    """

    state_dict: dict
    masks: dict
    form: str
    notes: list = field(default_factory=list)
    source_sha256: str = ""
    path: str = ""
    files: list = field(default_factory=list)
    masks_inferred: bool = False
    masks_sha256: str | None = None
    meta: dict = field(default_factory=dict)

    def density(self) -> dict:
        """``{name: fraction of mask entries kept}``."""
        return {k: (m.sum().item() / m.numel() if m.numel() else 1.0) for k, m in self.masks.items()}

    def summary(self) -> str:
        kept = sum(int(m.sum()) for m in self.masks.values())
        total = sum(m.numel() for m in self.masks.values())
        dens = f"{kept / total:.4f}" if total else "n/a"
        lines = [
            f"checkpoint {self.path} [{self.form}] sha256={self.source_sha256[:16]}...",
            f"  {len(self.state_dict)} tensors, {len(self.masks)} masks"
            f"{' (inferred from zeros)' if self.masks_inferred else ''}, masked density {dens}",
        ]
        lines += [f"  - {n}" for n in self.notes]
        return "\n".join(lines)


def _tensorish(v: Any):
    if isinstance(v, torch.Tensor):
        return v
    try:
        import numpy as np

        if isinstance(v, np.ndarray):
            return torch.as_tensor(v)
    except ImportError:  # pragma: no cover
        pass
    return v


def _normalize_masks(obj: Any, source: str) -> dict:
    """Accept ``{name: mask}``, ``sparsifier.state_dict()``, ``sparsifier.state``,
    rigl-reproducibility ``Masking.state_dict()`` or a whole rigl-reproducibility checkpoint."""
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
    out = {}
    for k, v in obj.items():
        if isinstance(v, Mapping) and "mask" in v:
            v = v["mask"]
        if v is None:
            continue
        v = _tensorish(v)
        if not isinstance(v, torch.Tensor):
            raise MaskValueError(f"{source}: masks[{k!r}] is a {type(v).__name__}, expected a 0/1 tensor")
        out[str(k)] = v
    return out


def _as_bool_mask(name: str, m: torch.Tensor, shape, source: str) -> torch.Tensor:
    if tuple(m.shape) != tuple(shape):
        if m.numel() == int(torch.Size(shape).numel()):
            hint = " (same number of elements: a reshaped or transposed mask?)"
        else:
            hint = ""
        raise MaskShapeError(
            f"{source}: mask for {name!r} has shape {list(m.shape)} but the tensor has shape {list(shape)}{hint}"
        )
    if m.dtype == torch.bool:
        return m.clone()
    if m.is_complex():
        raise MaskValueError(f"{source}: mask for {name!r} is complex ({m.dtype})")
    bad = (m != 0) & (m != 1)
    if bool(bad.any()):
        vals = torch.unique(m[bad])[:5].tolist()
        raise MaskValueError(
            f"{source}: mask for {name!r} ({m.dtype}) holds values other than 0 and 1, e.g. {vals} "
            f"({int(bad.sum())} of {m.numel()} entries). Masks must be 0/1 (or bool); scores need their "
            "form's mask_form= (e.g. 'continuous_sparsification')."
        )
    return m != 0


def _align_to(masks: dict, weights: Mapping, source: str, notes: list, what: str) -> dict:
    if not masks:
        return {}
    missing = [k for k in masks if k not in weights]
    if not missing:
        return dict(masks)
    amap, desc = align_subset(list(masks), list(weights))
    bad = [k for k in masks if amap[k] not in weights]
    if bad:
        raise MaskKeyError(
            f"{source}: {what} name {len(bad)} tensors the checkpoint does not have: {bad[:10]}"
            f"{' ...' if len(bad) > 10 else ''}. Checkpoint key families: {key_families(weights)}; "
            f"first keys: {list(weights)[:5]}"
        )
    if desc:
        notes.append(f"{what}: {desc} on {len(masks)} names to match the checkpoint keys")
    return {amap[k]: v for k, v in masks.items()}


def _strip_module(sd: dict, notes: list) -> dict:
    total = 0
    while sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
        total += 1
    if total:
        notes.append(f"stripped 'module.' prefix (DataParallel/DDP) from {len(sd)} keys"
                     + (f" ({total} levels)" if total > 1 else ""))
    return sd


def read_checkpoint(
    path,
    *,
    mask_form: str = "auto",
    masks=None,
    model: torch.nn.Module | None = None,
    unsafe: bool = False,
    cs_s0: float = 0.0,
) -> Checkpoint:
    """Read a training checkpoint into effective dense tensors plus boolean masks.

    path:      a checkpoint file (``torch.save`` output or ``.safetensors``) or an OpenLTH
               folder (see :mod:`sparse_rt.ingest.openlth`).
    mask_form: ``"auto"`` (detect) or one of :data:`FORMS` to force a reading.
    masks:     explicit masks: ``{name: 0/1 tensor}``, a ``torch.ao.pruning`` sparsifier
               ``state_dict()`` / ``.state``, or a path to a file holding one.  Required for
               ``torch_ao``; for forms that save their own masks, these override them
               per name (noted).
    model:     the architecture as an ``nn.Module`` (needed for ``rigl_torch`` only).
    unsafe:    allow arbitrary pickles (``torch.load(weights_only=False)``; warns).
    cs_s0:     Continuous Sparsification ``mask_initial_value`` (scale ``1/sigmoid(s0)``).
    """
    if mask_form != "auto" and mask_form not in FORMS:
        raise ValueError(f"mask_form={mask_form!r} is not one of 'auto', {', '.join(map(repr, FORMS))}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    notes: list[str] = []
    files: list[str] = []

    mask_file = None
    if os.path.isdir(path) or (mask_form in ("auto", "open_lth") and looks_like_openlth(path)):
        wfile, mask_file, n = resolve_openlth(path)
        notes += n
    else:
        wfile = path

    top = load_file(wfile, unsafe=unsafe)
    files.append(wfile)
    sd, wrapper, meta = find_state_dict(top, wfile)
    if wrapper:
        beside = [k for k in top if k != wrapper.split(">")[0]] if isinstance(top, Mapping) else []
        notes.append(f"state dict found under {wrapper!r}" + (f" (beside: {', '.join(map(str, beside[:8]))})" if beside else ""))
    non_tensor = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if non_tensor:
        sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
        notes.append(f"dropped {len(non_tensor)} non-tensor entries: {non_tensor[:5]}")
    sd = _strip_module(sd, notes)

    file_masks = None
    if mask_file is not None and os.path.isfile(mask_file) and not _has_openlth_ckpt(sd):
        file_masks = _normalize_masks(load_file(mask_file, unsafe=unsafe, what="OpenLTH mask"), mask_file)
        files.append(mask_file)

    # ---- which form
    if mask_form == "auto":
        found = detect_forms(sd, top)
        if file_masks is not None:
            if found:
                raise AmbiguousFormError(
                    f"{wfile}: has mask.pth beside it (OpenLTH) but also keys of {found}; pass mask_form="
                )
            form = "open_lth"
        elif len(found) > 1:
            raise AmbiguousFormError(
                f"{wfile}: keys of several mask forms found: {found}. Pass mask_form= one of them. "
                f"Key families seen: {key_families(sd)}"
            )
        elif found:
            form = found[0]
        else:
            sus = suspicious_keys(sd)
            if sus and masks is None:
                raise unknown_layout(wfile, sd, sus)
            form = "explicit" if masks is not None else "dense_zeros"
    else:
        form = mask_form
    notes.insert(0, f"form: {form}" + (" (detected)" if mask_form == "auto" else " (forced)"))

    if file_masks is not None and form != "open_lth":
        notes.append(f"ignored {mask_file} (mask_form={form!r} forced)")
        file_masks = None

    ctx = dict(top=top, model=model, cs_s0=cs_s0, source=wfile, user_masks=masks is not None)
    if form == "open_lth" and not _has_openlth_ckpt(sd):
        if file_masks is None:
            raise FormNotPresentError(
                f"mask_form='open_lth' but {wfile} has no 'mask_<name>' buffers and no mask.pth beside it"
            )
        weights, fmasks, fnotes = dict(sd), dict(file_masks), [f"open_lth: {len(file_masks)} masks from mask.pth"]
    else:
        if form == "explicit" and masks is None:
            raise MissingMasksError("mask_form='explicit' needs masks= (a dict or a file of {name: 0/1 tensor})")
        weights, fmasks, fnotes = HANDLERS[form](sd, ctx)
    notes += fnotes
    fmasks = _align_to(fmasks, weights, wfile, notes, f"{form} masks")
    inferred = form == "dense_zeros"

    masks_sha = None
    if masks is not None:
        if isinstance(masks, (str, os.PathLike)):
            mpath = os.fspath(masks)
            umasks = _normalize_masks(load_file(mpath, unsafe=unsafe, what="masks file"), mpath)
            masks_sha = sha256_of_files([mpath])
            msrc = mpath
        else:
            msrc = "masks="
            umasks = _normalize_masks(masks, msrc)
        umasks = _align_to(umasks, weights, msrc, notes, "masks=")
        if inferred:
            fmasks = {}
            inferred = False
            if form == "dense_zeros":
                form = "explicit"
                notes[0] = "form: explicit (masks= given)"
        over = sorted(set(umasks) & set(fmasks))
        if over:
            notes.append(f"masks= overrides the checkpoint's own mask for {len(over)} tensors: {over[:5]}")
        fmasks.update(umasks)
        notes.append(f"{len(umasks)} masks from {msrc}")

    out_masks: dict[str, torch.Tensor] = {}
    state = dict(weights)
    src = wfile
    for k, m in fmasks.items():
        w = weights[k]
        b = _as_bool_mask(k, m, w.shape, src)
        out_masks[k] = b
        if not inferred:
            state[k] = torch.where(b, w, torch.zeros((), dtype=w.dtype))

    return Checkpoint(
        state_dict=state,
        masks=out_masks,
        form=form,
        notes=notes,
        source_sha256=sha256_of_files(files),
        path=path,
        files=files,
        masks_inferred=inferred,
        masks_sha256=masks_sha,
        meta=meta,
    )
