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

``path`` may be a level folder (holding ``mask.pth``), a ``level_<L>`` folder (holding
``main/``), a replicate folder (holding ``level_*/main``; the highest level with a
model file is taken and a note says so), or a ``model_ep*_it*.pth`` file with
``mask.pth`` beside it.
"""

from __future__ import annotations

import os
import re

from .errors import CheckpointNotFoundError

__all__ = ["MODEL_RE", "resolve_openlth", "looks_like_openlth"]

MODEL_RE = re.compile(r"^model_ep(\d+)_it(\d+)\.pth$")
_LEVEL_RE = re.compile(r"^level_(\d+)$")


def looks_like_openlth(path: str) -> bool:
    if os.path.isdir(path):
        return True
    base = os.path.basename(path)
    return bool(MODEL_RE.match(base)) and os.path.isfile(os.path.join(os.path.dirname(path), "mask.pth"))


def _models_in(d: str) -> list[tuple[int, int, str]]:
    out = []
    for f in os.listdir(d):
        m = MODEL_RE.match(f)
        if m and os.path.isfile(os.path.join(d, f)):
            out.append((int(m.group(1)), int(m.group(2)), f))
    return sorted(out)


def _levels_in(d: str, experiment: str = "main") -> list[tuple[int, str]]:
    out = []
    for f in os.listdir(d):
        m = _LEVEL_RE.match(f)
        run = os.path.join(d, f, experiment)
        if m and os.path.isfile(os.path.join(run, "mask.pth")):
            out.append((int(m.group(1)), run))
    return sorted(out)


def resolve_openlth(path: str) -> tuple[str, str | None, list[str]]:
    """Return ``(weights_file, mask_file_or_None, notes)`` for an OpenLTH path."""
    notes: list[str] = []
    if os.path.isfile(path):
        d = os.path.dirname(path) or "."
        return path, os.path.join(d, "mask.pth"), [f"open_lth: mask.pth beside {os.path.basename(path)}"]
    if not os.path.isdir(path):
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")

    run = None
    if os.path.isfile(os.path.join(path, "mask.pth")):
        run = path
    elif os.path.isfile(os.path.join(path, "main", "mask.pth")):
        run = os.path.join(path, "main")
    else:
        levels = [lv for lv in _levels_in(path) if _models_in(lv[1]) or
                  os.path.isfile(os.path.join(lv[1], "checkpoint.pth"))]
        if levels:
            lvl, run = levels[-1]
            if len(levels) > 1:
                notes.append(
                    f"open_lth: took the highest level, level_{lvl} (levels found: "
                    f"{[lv for lv, _ in levels]}); pass {os.path.join(path, 'level_N', 'main')} to choose"
                )
    if run is None:
        listing = sorted(os.listdir(path))[:20]
        raise CheckpointNotFoundError(
            f"{path} is a folder but not an OpenLTH run: no mask.pth, main/mask.pth or level_*/main/mask.pth "
            f"in it (contents: {listing}). Pass a checkpoint file, or an OpenLTH level folder."
        )
    models = _models_in(run)
    if models:
        ep, it, f = models[-1]
        if len(models) > 1:
            notes.append(f"open_lth: took {f}, the latest of {[m[2] for m in models]}")
        return os.path.join(run, f), os.path.join(run, "mask.pth"), notes
    ck = os.path.join(run, "checkpoint.pth")
    if os.path.isfile(ck):
        notes.append("open_lth: no model_ep*_it*.pth in the level folder; using checkpoint.pth (training unfinished)")
        return ck, os.path.join(run, "mask.pth"), notes
    raise CheckpointNotFoundError(
        f"{run} holds mask.pth but no model_ep*_it*.pth or checkpoint.pth (contents: {sorted(os.listdir(run))[:20]})"
    )
