"""OpenLTH run folders (facebookresearch/open_lth).

Layout, as written by open_lth itself:

* ``lottery/desc.py::LotteryDesc.run_path``:
  ``<root>/<hashname>/replicate_<R>/level_<L>/<experiment>`` with experiment ``main``
  (branches use other experiment names).
* ``foundations/paths.py``: inside a run folder ``mask.pth``, ``checkpoint.pth``,
  ``model_ep{ep}_it{it}.pth``, ``sparsity_report.json``, ``hparams.log``, ``logger``.
* ``pruning/mask.py::Mask.save``: ``mask.pth`` is ``{name: int 0/1 tensor}`` for
  ``Model.prunable_layer_names`` (``models/base.py``: ``<module>.weight`` of every
  ``Conv2d`` and ``Linear``), names of the bare model (no ``model.`` prefix).
* ``models/base.py::Model.save``: ``model_ep*_it*.pth`` is the bare model's
  ``state_dict()`` (``PrunedModel.save`` and ``DataParallel.save`` delegate to the inner
  model, so no prefix).  A level holds ``model_ep0_it0.pth`` (the rewound start) and the
  end-of-training model; we take the largest ``(ep, it)``.  The saved weights are *not*
  guaranteed zero where the mask is 0 (``PrunedModel`` re-applies the mask in
  ``forward``, and the last optimizer step comes after it), so the mask is applied here.
* ``training/checkpointing.py``: ``checkpoint.pth`` is the resumable state (see
  :mod:`sparse_rt.ingest.forms`, form ``open_lth``); used only when a level has no
  ``model_ep*_it*.pth`` yet.

``pruning/pruned_model.py``: a ``PrunedModel``'s own state dict (what ``checkpoint.pth``
holds) keeps each mask as a buffer ``mask_<name with "." replaced by "___">``
(``PrunedModel.to_mask_name``) beside the weights under ``model.<name>``; such a
checkpoint carries its masks, so ``mask.pth`` beside it is not read.

Files are found by name (``os.path.lexists``) whatever their kind; :func:`.loading.load_file`
then refuses any that is not a regular file (a FIFO would block), so a ``mask.pth`` that is
a FIFO or a folder is an error, never silently skipped.

``path`` may be a level folder (holding ``mask.pth``), a ``level_<L>`` folder (holding
``main/``), a replicate folder (holding ``level_*/main``; the highest level with a
model file is taken and a note says so), or a ``model_ep*_it*.pth`` file with
``mask.pth`` beside it.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

import torch

from .errors import CheckpointNotFoundError
from .loading import load_file
from .masks import load_mask_mapping

__all__ = [
    "MODEL_RE",
    "resolve_openlth",
    "looks_like_openlth",
    "mask_buffer_keys",
    "masked_name",
    "has_mask_buffers",
    "load_side_masks",
]

MODEL_RE = re.compile(r"^model_ep(\d+)_it(\d+)\.pth$")
_LEVEL_RE = re.compile(r"^level_(\d+)$")


def mask_buffer_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The ``mask_<name>`` buffer keys of a ``PrunedModel`` state dict (top level: no dots)."""
    return [key for key in state_dict if key.startswith("mask_") and "." not in key]


def masked_name(buffer_key: str) -> str:
    """The parameter a mask buffer masks: ``PrunedModel.to_mask_name`` undone (``mask_a___b`` -> ``a.b``)."""
    return buffer_key[len("mask_"):].replace("___", ".")


def has_mask_buffers(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state_dict`` is a ``PrunedModel``'s: mask buffers beside ``model.``-prefixed weights."""
    return any(("model." + masked_name(key)) in state_dict for key in mask_buffer_keys(state_dict))


def load_side_masks(mask_file: str | None, state_dict: Mapping[str, torch.Tensor],
                    unsafe: bool) -> dict[str, torch.Tensor] | None:
    """The masks of ``mask.pth`` beside the weights file, or ``None`` when there is none
    or the state dict carries its own mask buffers."""
    if mask_file is None or not os.path.lexists(mask_file) or has_mask_buffers(state_dict):
        return None
    return load_mask_mapping(load_file(mask_file, unsafe=unsafe, what="OpenLTH mask"), mask_file)


def looks_like_openlth(path: str) -> bool:
    if os.path.isdir(path):
        return True
    base = os.path.basename(path)
    return bool(MODEL_RE.match(base)) and os.path.lexists(os.path.join(os.path.dirname(path), "mask.pth"))


def _models_in(folder: str) -> list[tuple[int, int, str]]:
    """``(ep, it, file name)`` of every ``model_ep*_it*.pth`` in ``folder``, oldest first."""
    models = []
    for name in os.listdir(folder):
        match = MODEL_RE.match(name)
        if match and not os.path.isdir(os.path.join(folder, name)):
            models.append((int(match.group(1)), int(match.group(2)), name))
    return sorted(models)


def _levels_in(folder: str, experiment: str = "main") -> list[tuple[int, str]]:
    """``(level, run folder)`` of every ``level_<L>/<experiment>`` holding a mask.pth, lowest first."""
    levels = []
    for name in os.listdir(folder):
        match = _LEVEL_RE.match(name)
        run = os.path.join(folder, name, experiment)
        if match and os.path.lexists(os.path.join(run, "mask.pth")):
            levels.append((int(match.group(1)), run))
    return sorted(levels)


def resolve_openlth(path: str) -> tuple[str, str | None, list[str]]:
    """Return ``(weights_file, mask_file_or_None, notes)`` for an OpenLTH path."""
    notes: list[str] = []
    if os.path.lexists(path) and not os.path.isdir(path):
        folder = os.path.dirname(path) or "."
        return path, os.path.join(folder, "mask.pth"), [f"open_lth: mask.pth beside {os.path.basename(path)}"]
    if not os.path.isdir(path):
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")

    run = None
    if os.path.lexists(os.path.join(path, "mask.pth")):
        run = path
    elif os.path.lexists(os.path.join(path, "main", "mask.pth")):
        run = os.path.join(path, "main")
    else:
        levels = [(level, folder) for level, folder in _levels_in(path)
                  if _models_in(folder) or os.path.lexists(os.path.join(folder, "checkpoint.pth"))]
        if levels:
            highest, run = levels[-1]
            if len(levels) > 1:
                notes.append(
                    f"open_lth: took the highest level, level_{highest} (levels found: "
                    f"{[level for level, _ in levels]}); pass {os.path.join(path, 'level_N', 'main')} to choose"
                )
    if run is None:
        listing = sorted(os.listdir(path))[:20]
        raise CheckpointNotFoundError(
            f"{path} is a folder but not an OpenLTH run: no mask.pth, main/mask.pth or level_*/main/mask.pth "
            f"in it (contents: {listing}). Pass a checkpoint file, or an OpenLTH level folder."
        )
    models = _models_in(run)
    if models:
        latest = models[-1][2]
        if len(models) > 1:
            notes.append(f"open_lth: took {latest}, the latest of {[name for _, _, name in models]}")
        return os.path.join(run, latest), os.path.join(run, "mask.pth"), notes
    resumable = os.path.join(run, "checkpoint.pth")
    if os.path.lexists(resumable):
        notes.append("open_lth: no model_ep*_it*.pth in the level folder; using checkpoint.pth (training unfinished)")
        return resumable, os.path.join(run, "mask.pth"), notes
    raise CheckpointNotFoundError(
        f"{run} holds mask.pth but no model_ep*_it*.pth or checkpoint.pth (contents: {sorted(os.listdir(run))[:20]})"
    )
