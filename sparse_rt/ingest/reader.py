"""``read_checkpoint``: one entry point for every checkpoint form (see :mod:`.forms`).

Stages: check the request, locate the files (an OpenLTH folder names two), load and
unwrap the state dict, choose the form (:mod:`.detection`), let the form's reader undo
it, add the masks given with ``masks=``, then validate the masks and multiply them in.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .detection import choose_form
from .errors import CheckpointNotFoundError, CorruptCheckpointError, InvalidOptionError
from .forms import FORMS, CheckpointContents, Form, ReadOptions, form_named
from .hugging_face import looks_like_hf_folder, resolve_hf_folder
from .loading import find_state_dict, load_file, require_real_floating, sha256_of_files
from .masks import align_mask_names, as_bool_mask, load_mask_mapping
from .openlth import load_side_masks, looks_like_openlth, resolve_openlth

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


def read_checkpoint(
    path: str | os.PathLike,
    *,
    mask_form: str = "auto",
    masks: Any = None,
    model: torch.nn.Module | None = None,
    unsafe: bool = False,
    cs_s0: float = 0.0,
) -> Checkpoint:
    """Read a training checkpoint into effective dense tensors plus boolean masks.

    path:      a checkpoint file (``torch.save`` output or ``.safetensors``), a Hugging Face
               ``save_pretrained`` folder (one weights file or shards; see
               :mod:`sparse_rt.ingest.hugging_face`) or an OpenLTH folder (see
               :mod:`sparse_rt.ingest.openlth`).
    mask_form: ``"auto"`` (detect) or one of :data:`FORMS` to force a reading.
    masks:     explicit masks: ``{name: 0/1 tensor}``, a ``torch.ao.pruning`` sparsifier
               ``state_dict()`` / ``.state``, or a path to a file holding one.  Required for
               ``torch_ao``; for forms that save their own masks, these override them
               per name (noted).
    model:     the architecture as an ``nn.Module`` (needed for ``rigl_torch`` only).
    unsafe:    allow arbitrary pickles (``torch.load(weights_only=False)``; warns).
    cs_s0:     Continuous Sparsification ``mask_initial_value`` (scale ``1/sigmoid(s0)``).
    """
    path = _checked_request(path, mask_form, cs_s0)
    notes: list[str] = []
    weights_files, mask_file = _locate_files(path, mask_form, notes)
    weights_file = weights_files[0]
    top, state_dict, meta = _load_state_dicts(weights_files, unsafe, notes)
    side_masks = load_side_masks(mask_file, state_dict, unsafe)
    files = weights_files if side_masks is None else [*weights_files, mask_file]
    contents = CheckpointContents(state_dict=state_dict, top=top, source=weights_file, side_masks=side_masks)

    form = _settle_form(mask_form, contents, masks is not None, mask_file, notes)
    weights, saved_masks, notes_of_form = form.read(
        contents, ReadOptions(model=model, cs_s0=cs_s0, user_masks_given=masks is not None))
    notes += notes_of_form
    saved_masks = align_mask_names(saved_masks, weights, weights_file, notes, f"{form.name} masks")

    form_name, inferred, masks_sha256 = form.name, form.masks_inferred, None
    if masks is not None:
        user_masks, masks_source, masks_sha256 = _load_user_masks(masks, unsafe, weights, notes)
        if inferred:  # masks= replaces masks guessed from zeros: the checkpoint is read as explicit
            saved_masks, inferred, form_name = {}, False, "explicit"
            notes[0] = "form: explicit (masks= given)"
        saved_masks = _override_masks(saved_masks, user_masks, masks_source, notes)

    effective, bool_masks = _apply_masks(weights, saved_masks, inferred, weights_file)
    return Checkpoint(
        state_dict=effective,
        masks=bool_masks,
        form=form_name,
        notes=notes,
        source_sha256=sha256_of_files(files),
        path=path,
        files=files,
        masks_inferred=inferred,
        masks_sha256=masks_sha256,
        meta=meta,
    )


# 1/sigmoid(s0) = 1 + e^-s0 scales the weights: below -80 it passes 5e34 on its way to float32's
# overflow (and sigmoid(s0) rounds to 0 in float64 below about -745).
CS_S0_MIN = -80.0


def _checked_request(path: str | os.PathLike, mask_form: str, cs_s0: float) -> str:
    if mask_form != "auto" and mask_form not in FORMS:
        raise InvalidOptionError(f"mask_form={mask_form!r} is not one of 'auto', {', '.join(map(repr, FORMS))}")
    if not (isinstance(cs_s0, (int, float)) and math.isfinite(cs_s0) and cs_s0 >= CS_S0_MIN):
        raise InvalidOptionError(
            f"cs_s0={cs_s0!r}: the Continuous Sparsification mask_initial_value must be a finite number "
            f">= {CS_S0_MIN:g} (the weights are scaled by 1/sigmoid(cs_s0) = 1 + e^-cs_s0)")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    return path


def _locate_files(path: str, mask_form: str, notes: list[str]) -> tuple[list[str], str | None]:
    """``(weights files, OpenLTH mask.pth or None)``: a Hugging Face folder names its weights (one
    file or shards); an OpenLTH folder or model file names both."""
    if looks_like_hf_folder(path):
        weights_files, hf_notes = resolve_hf_folder(path)
        notes += hf_notes
        return weights_files, None
    if os.path.isdir(path) or (mask_form in ("auto", "open_lth") and looks_like_openlth(path)):
        weights_file, mask_file, openlth_notes = resolve_openlth(path)
        notes += openlth_notes
        return [weights_file], mask_file
    return [path], None


def _load_state_dicts(weights_files: list[str], unsafe: bool, notes: list[str]) -> tuple[Any, dict, dict]:
    """_load_state_dict of one file, or of every shard merged (a tensor in two shards is an error)."""
    if len(weights_files) == 1:
        return _load_state_dict(weights_files[0], unsafe, notes)
    merged: dict = {}
    for shard in weights_files:
        if not os.path.isfile(shard):
            raise CheckpointNotFoundError(f"shard not found: {shard}")
        _, state_dict, _ = _load_state_dict(shard, unsafe, notes)
        twice = sorted(set(merged) & set(state_dict))
        if twice:
            raise CorruptCheckpointError(f"{shard}: tensors {twice[:5]} are in an earlier shard too")
        merged.update(state_dict)
    return merged, merged, {}


def _load_state_dict(weights_file: str, unsafe: bool, notes: list[str]) -> tuple[Any, dict, dict]:
    """``(loaded object, state dict, meta)``: the state dict unwrapped, tensors only, no ``module.`` prefix."""
    top = load_file(weights_file, unsafe=unsafe)
    state_dict, wrapper, meta = find_state_dict(top, weights_file)
    if wrapper:
        beside = [k for k in top if k != wrapper.split(">")[0]] if isinstance(top, Mapping) else []
        notes.append(f"state dict found under {wrapper!r}"
                     + (f" (beside: {', '.join(map(str, beside[:8]))})" if beside else ""))
    non_tensor = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if non_tensor:
        state_dict = {key: value for key, value in state_dict.items() if isinstance(value, torch.Tensor)}
        notes.append(f"dropped {len(non_tensor)} non-tensor entries: {non_tensor[:5]}")
    return top, _strip_module(state_dict, notes), meta


def _strip_module(state_dict: dict, notes: list[str]) -> dict:
    levels = 0
    while state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module."):]: value for key, value in state_dict.items()}
        levels += 1
    if levels:
        notes.append(f"stripped 'module.' prefix (DataParallel/DDP) from {len(state_dict)} keys"
                     + (f" ({levels} levels)" if levels > 1 else ""))
    return state_dict


def _settle_form(mask_form: str, contents: CheckpointContents, user_masks_given: bool,
                 mask_file: str | None, notes: list[str]) -> Form:
    """The form to read with (detected or forced); its note goes first."""
    detected = mask_form == "auto"
    name = choose_form(contents, user_masks_given) if detected else mask_form
    notes.insert(0, f"form: {name}" + (" (detected)" if detected else " (forced)"))
    if contents.side_masks is not None and name != "open_lth":  # only open_lth reads mask.pth
        notes.append(f"ignored {mask_file} (mask_form={name!r} forced)")
    return form_named(name)


def _load_user_masks(masks: Any, unsafe: bool, weights: Mapping,
                     notes: list[str]) -> tuple[dict, str, str | None]:
    """``(masks keyed like weights, where they came from, sha256 of their file or None)``."""
    if isinstance(masks, (str, os.PathLike)):
        masks_file = os.fspath(masks)
        user_masks = load_mask_mapping(load_file(masks_file, unsafe=unsafe, what="masks file"), masks_file)
        masks_source, masks_sha256 = masks_file, sha256_of_files([masks_file])
    else:
        masks_source, masks_sha256 = "masks=", None
        user_masks = load_mask_mapping(masks, masks_source)
    return align_mask_names(user_masks, weights, masks_source, notes, "masks="), masks_source, masks_sha256


def _override_masks(saved_masks: dict, user_masks: dict, masks_source: str, notes: list[str]) -> dict:
    """The checkpoint's masks with ``user_masks`` taking precedence name by name."""
    overridden = sorted(set(user_masks) & set(saved_masks))
    if overridden:
        notes.append(f"masks= overrides the checkpoint's own mask for {len(overridden)} tensors: {overridden[:5]}")
    notes.append(f"{len(user_masks)} masks from {masks_source}")
    return {**saved_masks, **user_masks}


def _apply_masks(weights: dict, masks: dict, inferred: bool,
                 source: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(effective state dict, bool masks)``; masks inferred from zeros are already in the weights."""
    effective = dict(weights)
    bool_masks: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        weight = weights[name]
        require_real_floating(name, weight, source, "masked weight")
        bool_masks[name] = as_bool_mask(name, mask, weight.shape, source)
        if not inferred:
            effective[name] = torch.where(bool_masks[name], weight, torch.zeros((), dtype=weight.dtype))
    return effective, bool_masks
