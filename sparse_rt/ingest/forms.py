"""The mask forms training codebases write, how we detect them, and how we undo them.

Every key name below was read in the codebase's own public source (repository and
path given).  Trees read: facebookresearch/open_lth @fd37959 (pruning/mask.py @1b98dc6),
JJGO/shrinkbench pruning/modules.py @2803018 and experiment/train.py @446845e,
varun19299/rigl-reproducibility @97443be, verbose-void/rigl-torch @34d19e4,
lolemacs/continuous-sparsification @5bd4039, junjieliu2910/DynamicSparseTraining @595c91e,
VITA-Group/FreeTickets @e5540d1, luuyin/Sup-tickets @c4ae419, and torch 2.13's own
``torch/nn/utils/prune.py`` and ``torch/ao/pruning``.  Each handler turns a state dict into
``(weights, masks)``: ``weights`` are the tensors the *inference* model expects,
before masking (any scale the training module applies is folded in), and ``masks``
are the saved masks keyed like ``weights``.  :func:`sparse_rt.ingest.read_checkpoint`
then validates the masks (shape, 0/1) and multiplies them in.

``dense_zeros`` — FreeTickets (VITA-Group/FreeTickets ``main_DST.py``, ``main_EDST.py``:
    ``{"epoch", "state_dict", "optimizer"}`` in ``model.pth`` / ``model_%d.pth``),
    Sup-tickets (luuyin/Sup-tickets ``CIFAR/main_suptickets.py``: same three keys),
    and Dettmers-style ``sparselearning`` code in general (SET, SNFS, FreeTickets' DST
    runs): ``sparselearning/core.py::Masking.step`` calls ``apply_mask`` (``tensor.data *
    masks[name]``) after every optimizer step but the masks are not saved, so pruned
    weights are exact zeros.  ``Checkpoint.masks`` then holds the
    *inferred* nonzero pattern (``w != 0``) of every floating-point ``*.weight`` with
    2 or more dims (Linear, ConvNd; Embedding too) and ``Checkpoint.masks_inferred``
    is True.  The converter's ``min_sparsity`` decides which of those layers are worth
    a sparse format.

``torch_prune`` — pytorch ``torch/nn/utils/prune.py``: ``BasePruningMethod.apply``
    moves parameter ``X`` to ``X + "_orig"`` and registers buffer ``X + "_mask"``
    (float 0/1); the module recomputes ``X = X_orig * X_mask`` in a forward pre-hook.
    Works for any parameter name (``weight``, ``bias``, ...).  ``X`` itself is not in
    the state dict.

``shrinkbench`` — JJGO/shrinkbench ``pruning/modules.py``: ``LinearMasked`` /
    ``Conv2dMasked`` keep ``weight``/``bias`` and register buffers ``weight_mask`` and
    ``bias_mask`` (``bias_mask`` may be None, then it is absent from the state dict);
    forward uses ``weight * weight_mask``.  Saved by ``experiment/train.py`` as
    ``checkpoints/checkpoint-{epoch}.pt`` = ``{"model_state_dict", "optim_state_dict"}``.
    Told apart from ``torch_prune`` by ``X`` being present and ``X_orig`` absent.

``open_lth`` — facebookresearch/open_lth (see :mod:`sparse_rt.ingest.openlth` for the
    folder layout).  Inside ``checkpoint.pth`` (``training/checkpointing.py``:
    ``{"ep", "it", "model_state_dict", "optimizer_state_dict", "logger"}``) the state
    dict is a ``PrunedModel``'s (``pruning/pruned_model.py``): weights under
    ``model.<name>`` and float mask buffers ``mask_<name with "." replaced by "___">``
    (``PrunedModel.to_mask_name``), ``module.``-prefixed under DataParallel.

``rigl_reproducibility`` — varun19299/rigl-reproducibility
    ``sparselearning/utils/train_helper.py::save_weights``: ``{"step", "epoch",
    "model", "optimizer", "val_loss", "mask"}`` where ``"mask"`` is
    ``Masking.state_dict()`` (``sparselearning/core.py``): ``{"baseline_nonzero",
    "masks", "stats", "mask_step", "total_params"}``; ``ckpt["mask"]["masks"]`` maps
    ``named_parameters()`` names (biases and BatchNorm removed) to float 0/1 masks.
    Files ``epoch_{N}.pth`` and ``best_model.pth``.  Weights are already multiplied by
    the masks (``Masking.apply_mask``); we multiply again, which is exact.

``rigl_torch`` — rigl-torch (McCrearyD/rigl-torch; read in the verbose-void/rigl-torch
    copy, whose README and setup.py point to McCrearyD/rigl-torch)
    ``train_imagenet_rigl.py``: ``{"epoch", "arch", "state_dict", "best_acc1",
    "optimizer", "pruner"}``; ``pruner`` is ``RigLScheduler.state_dict()``
    (``rigl_torch/RigL.py``): ``{"dense_allocation", "S", "N", "hyperparams", "step",
    "rigl_steps", "backward_masks", "_linear_layers_mask"}``.  ``backward_masks`` is a
    list of bool masks in the order of ``rigl_torch/util.py::get_W`` with ``None`` for
    layers kept dense.  ``get_W`` walks ``module._modules`` depth first and takes every
    module that is an ``nn.Linear`` or has a ``weight`` attribute and whose exact type
    is not ``nn.BatchNorm2d`` (``EXCLUDED_TYPES``), without descending into it.  The
    list carries no names, so ``model=`` is required; ``N`` (numel per layer) is used
    to check the order.

``torch_ao`` — pytorch ``torch/ao/pruning/sparsifier/base_sparsifier.py`` +
    ``utils.py``: ``prepare`` registers a ``FakeSparsity`` parametrization, so the
    model's state dict holds ``<module>.parametrizations.weight.original``;
    ``FakeSparsity.state_dict`` returns ``{}`` on purpose, so **the mask is not in the
    model's checkpoint**.  It lives in ``sparsifier.state[fqn]["mask"]`` (fqn like
    ``"fc1.weight"``); ``sparsifier.state_dict()`` is ``{"state": {fqn: {"mask"}},
    "groups": [...]}``.  Pass ``masks=`` (that dict, the ``state`` dict, a
    ``{fqn: mask}`` dict or a file of one of them).  Note ``state`` is a
    ``defaultdict``, which ``weights_only`` loading refuses: save
    ``{fqn: s["mask"] for fqn, s in sparsifier.state.items()}`` instead.  After
    ``squash_mask()`` the model is plain ``dense_zeros``.

``continuous_sparsification`` — lolemacs/continuous-sparsification ``models/layers.py``:
    ``SoftMaskedConv2d`` has ``weight``, ``init_weight`` (rewind copy, not a mask) and
    ``mask_weight`` (the soft-mask scores ``s``).  In ticket mode ``compute_mask``
    returns ``(mask_weight > 0).float() / sigmoid(mask_initial_value)``; the forward
    uses ``weight * mask``.  So effective ``W = weight * (s > 0) / sigmoid(s0)`` with
    ``s0 = mask_initial_value`` (``main.py`` ``--mask-initial-value``, default 0, i.e.
    a factor 2).  ``s0`` is not saved: pass ``cs_s0=``.  The repo itself saves no
    checkpoint; we read ``model.state_dict()``.  Masks are on convolutions only (the
    classifier is a plain ``nn.Linear``).

``dst`` — junjieliu2910/DynamicSparseTraining ``cifar/models/binarization.py``:
    ``MaskedConv2d`` / ``MaskedMLP`` hold ``weight``, ``bias`` and a per-output
    ``threshold`` parameter (shape ``[out]``); forward computes
    ``mask = (|W|.view(out, -1) - threshold.view(out, -1)) > 0`` and, if that keeps
    ``<= 1%`` of the layer, resets the threshold to 0 (mask = ``|W| > 0``) — we apply
    the same rule.  Saved by ``cifar/utils.py::save_model`` as plain
    ``model.state_dict()`` (``best_acc_model.pth``, ``final_model.pth``, ...).

``explicit`` — a plain state dict plus ``masks=`` from the user.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .errors import FormNotPresentError, MissingMasksError, ModelRequiredError, UnknownLayoutError
from .loading import key_families

__all__ = ["FORMS", "detect_forms", "HANDLERS", "rigl_torch_weight_names", "suspicious_keys"]

FORMS = (
    "dense_zeros",
    "explicit",
    "torch_prune",
    "shrinkbench",
    "open_lth",
    "rigl_reproducibility",
    "rigl_torch",
    "torch_ao",
    "continuous_sparsification",
    "dst",
)

_AO_RE = re.compile(r"^(?:(?P<prefix>.*)\.)?parametrizations\.(?P<name>[^.]+)\.original$")


def _sibling(key: str, leaf: str) -> str:
    head, _, _ = key.rpartition(".")
    return f"{head}.{leaf}" if head else leaf


# ----------------------------------------------------------------------------- detection

def _has_torch_prune(sd):
    return any(k.endswith("_orig") and (k[:-5] + "_mask") in sd for k in sd)


def _has_shrinkbench(sd):
    return any(k.endswith("_mask") and k[:-5] in sd and (k[:-5] + "_orig") not in sd for k in sd)


def _has_torch_ao(sd):
    return any(_AO_RE.match(k) for k in sd)


def _has_cs(sd):
    return any(k.rsplit(".", 1)[-1] == "mask_weight" and _sibling(k, "weight") in sd for k in sd)


def _dst_pairs(sd):
    out = []
    for k, t in sd.items():
        if k.rsplit(".", 1)[-1] != "threshold":
            continue
        w = sd.get(_sibling(k, "weight"))
        if w is not None and t.dim() == 1 and w.dim() >= 2 and t.numel() == w.shape[0]:
            out.append((k, _sibling(k, "weight")))
    return out


def _openlth_mask_keys(sd):
    return [k for k in sd if k.startswith("mask_") and "." not in k]


def _has_openlth_ckpt(sd):
    mk = _openlth_mask_keys(sd)
    return bool(mk) and any(("model." + k[5:].replace("___", ".")) in sd for k in mk)


def _has_rigl_repro(top):
    m = top.get("mask") if isinstance(top, Mapping) else None
    return isinstance(m, Mapping) and isinstance(m.get("masks"), Mapping)


def _has_rigl_torch(top):
    p = top.get("pruner") if isinstance(top, Mapping) else None
    return isinstance(p, Mapping) and isinstance(p.get("backward_masks"), (list, tuple))


_SD_DETECTORS: list[tuple[str, Callable]] = [
    ("torch_prune", _has_torch_prune),
    ("open_lth", _has_openlth_ckpt),
    ("torch_ao", _has_torch_ao),
    ("continuous_sparsification", _has_cs),
    ("dst", lambda sd: bool(_dst_pairs(sd))),
    ("shrinkbench", _has_shrinkbench),
]


def detect_forms(sd: Mapping[str, torch.Tensor], top: Any) -> list[str]:
    """All forms whose keys appear (top-level markers first)."""
    found = []
    if _has_rigl_torch(top):
        found.append("rigl_torch")
    if _has_rigl_repro(top):
        found.append("rigl_reproducibility")
    for name, fn in _SD_DETECTORS:
        if fn(sd):
            found.append(name)
    return found


_SUSPICIOUS = re.compile(r"(mask|^scores?$)", re.IGNORECASE)


def suspicious_keys(sd: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys that look like masks/scores of a form we do not know."""
    return [k for k in sd if _SUSPICIOUS.search(k.rsplit(".", 1)[-1])]


# ----------------------------------------------------------------------------- handlers
# each: (sd, ctx) -> (weights, masks, notes)


def _need(present: bool, form: str, sd, what: str):
    if not present:
        raise FormNotPresentError(
            f"mask_form={form!r} was requested but the checkpoint has no {what}. "
            f"Key families seen: {key_families(sd)}"
        )


def _dense_zeros(sd, ctx):
    weights = dict(sd)
    masks = {}
    for k, v in sd.items():
        if k.rsplit(".", 1)[-1] == "weight" and v.dim() >= 2 and v.is_floating_point():
            masks[k] = v != 0
    notes = [f"no saved masks: inferred the nonzero pattern of {len(masks)} weight tensors (w != 0)"]
    return weights, masks, notes


def _explicit(sd, ctx):
    return dict(sd), {}, []


def _torch_prune(sd, ctx):
    _need(_has_torch_prune(sd), "torch_prune", sd, "'<name>_orig' + '<name>_mask' pairs")
    weights, masks = {}, {}
    used = set()
    for k, v in sd.items():
        if k.endswith("_orig") and (k[:-5] + "_mask") in sd:
            base = k[:-5]
            weights[base] = v
            masks[base] = sd[base + "_mask"]
            used.update((k, base + "_mask"))
    for k, v in sd.items():
        if k not in used:
            weights[k] = v
    return weights, masks, [f"torch.nn.utils.prune: {len(masks)} '_orig'/'_mask' pairs -> W = orig * mask"]


def _shrinkbench(sd, ctx):
    _need(_has_shrinkbench(sd), "shrinkbench", sd, "'<name>' + '<name>_mask' pairs")
    weights, masks = {}, {}
    for k, v in sd.items():
        if k.endswith("_mask") and k[:-5] in sd:
            masks[k[:-5]] = v
    for k, v in sd.items():
        if not (k.endswith("_mask") and k[:-5] in masks):
            weights[k] = v
    return weights, masks, [f"shrinkbench: {len(masks)} '<name>_mask' buffers -> W = W * mask"]


def _open_lth_ckpt(sd, ctx):
    _need(_has_openlth_ckpt(sd), "open_lth", sd, "'model.'-prefixed weights with 'mask_<name>' buffers")
    mk = set(_openlth_mask_keys(sd))
    weights, masks = {}, {}
    stripped = 0
    for k, v in sd.items():
        if k in mk:
            masks[k[5:].replace("___", ".")] = v
        elif k.startswith("model."):
            weights[k[6:]] = v
            stripped += 1
        else:
            weights[k] = v
    return weights, masks, [
        f"open_lth PrunedModel state: stripped 'model.' from {stripped} keys, "
        f"{len(masks)} 'mask_<name>' buffers (name '___' -> '.')"
    ]


def _rigl_repro(sd, ctx):
    top = ctx["top"]
    _need(_has_rigl_repro(top), "rigl_reproducibility", sd, "ckpt['mask']['masks'] dict")
    masks = {k: v for k, v in top["mask"]["masks"].items()}
    return dict(sd), masks, [f"rigl-reproducibility: {len(masks)} masks from ckpt['mask']['masks']"]


def rigl_torch_weight_names(model: nn.Module) -> list[str]:
    """Parameter names in the order rigl-torch's ``get_W`` enumerates its layers."""
    def takes(m):
        return isinstance(m, nn.Linear) or (hasattr(m, "weight") and type(m) is not nn.BatchNorm2d)

    if takes(model):
        return ["weight"]
    out: list[str] = []

    def visit(mod, prefix):
        for name, child in mod._modules.items():
            if child is None:
                continue
            if takes(child):
                out.append(f"{prefix}{name}.weight")
            else:
                visit(child, f"{prefix}{name}.")

    visit(model, "")
    return out


def _rigl_torch(sd, ctx):
    top = ctx["top"]
    _need(_has_rigl_torch(top), "rigl_torch", sd, "ckpt['pruner']['backward_masks'] list")
    pruner = top["pruner"]
    bm = list(pruner["backward_masks"])
    model = ctx.get("model")
    if model is None:
        raise ModelRequiredError(
            f"{ctx['source']}: rigl-torch checkpoint — ckpt['pruner']['backward_masks'] is a list of "
            f"{len(bm)} masks ({sum(m is not None for m in bm)} sparse) ordered by layer position, with no "
            "parameter names. Pass model= (an nn.Module of the trained architecture) so the "
            "positions can be matched to parameters the way rigl_torch.util.get_W enumerates them."
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model= must be an nn.Module, got {type(model).__name__}")
    names = rigl_torch_weight_names(model)
    if len(names) != len(bm):
        raise ModelRequiredError(
            f"{ctx['source']}: the model has {len(names)} layers in rigl-torch order but the pruner saved "
            f"{len(bm)} masks — model= is not the architecture that was trained. Model layers: "
            f"{names[:10]}{' ...' if len(names) > 10 else ''}"
        )
    N = pruner.get("N")
    if isinstance(N, (list, tuple)) and len(N) == len(names):
        msd = model.state_dict()
        for i, (n, cnt) in enumerate(zip(names, N)):
            if n in msd and msd[n].numel() != int(cnt):
                raise ModelRequiredError(
                    f"{ctx['source']}: rigl-torch layer {i} ({n}) has {msd[n].numel()} weights in model= "
                    f"but the pruner recorded N[{i}] = {int(cnt)}; model= does not match the checkpoint"
                )
    from .matching import align_subset

    amap, desc = align_subset(names, sd.keys())
    masks = {}
    for n, m in zip(names, bm):
        if m is None:
            continue
        masks[amap[n]] = m
    notes = [f"rigl-torch: {len(masks)} of {len(bm)} backward_masks mapped by get_W order of model="]
    if desc:
        notes.append(f"rigl-torch layer names {desc} to match the checkpoint")
    return dict(sd), masks, notes


def _torch_ao(sd, ctx):
    _need(_has_torch_ao(sd), "torch_ao", sd, "'<module>.parametrizations.<name>.original' keys")
    weights = {}
    renamed = []
    for k, v in sd.items():
        m = _AO_RE.match(k)
        if m:
            new = (m.group("prefix") + "." if m.group("prefix") else "") + m.group("name")
            weights[new] = v
            renamed.append(new)
        else:
            weights[k] = v
    if not ctx.get("user_masks"):
        raise MissingMasksError(
            f"{ctx['source']}: torch.ao.pruning checkpoint ({len(renamed)} tensors under "
            "'parametrizations.<name>.original', e.g. " + ", ".join(renamed[:3]) + "). "
            "The mask was not saved in the checkpoint: FakeSparsity.state_dict() returns {} by design "
            "and the masks live in the sparsifier. Pass them with masks=, e.g. "
            "masks={fqn: s['mask'] for fqn, s in sparsifier.state.items()} (or sparsifier.state_dict(), "
            "or a file saved from that dict). Or call sparsifier.squash_mask() "
            "before saving: the zeros then carry the mask."
        )
    return weights, {}, [f"torch.ao.pruning: '<module>.parametrizations.<name>.original' -> "
                         f"'<module>.<name>' for {len(renamed)} tensors; masks from masks="]


def _cs(sd, ctx):
    _need(_has_cs(sd), "continuous_sparsification", sd, "'<layer>.mask_weight' scores")
    s0 = float(ctx.get("cs_s0", 0.0))
    scale = 1.0 / (1.0 / (1.0 + math.exp(-s0)))
    weights, masks = {}, {}
    drop = set()
    for k, v in sd.items():
        if k.rsplit(".", 1)[-1] == "mask_weight" and _sibling(k, "weight") in sd:
            w = _sibling(k, "weight")
            masks[w] = v > 0
            drop.update((k, _sibling(k, "init_weight")))
    for k, v in sd.items():
        if k in drop:
            continue
        weights[k] = v * scale if k in masks else v
    return weights, masks, [
        f"continuous sparsification: {len(masks)} layers, mask = mask_weight > 0, "
        f"W = weight * mask / sigmoid(s0) with s0 = {s0:g} (x{scale:.6g}); init_weight dropped"
    ]


def _dst(sd, ctx):
    pairs = _dst_pairs(sd)
    _need(bool(pairs), "dst", sd, "per-output-row '<layer>.threshold' parameters")
    masks, notes = {}, []
    drop = set()
    reset = []
    for tk, wk in pairs:
        w, t = sd[wk], sd[tk]
        flat = w.abs().reshape(w.shape[0], -1)
        m = (flat - t.reshape(-1, 1).to(flat.dtype)) > 0
        if m.sum().item() / max(m.numel(), 1) <= 0.01:
            m = flat > 0
            reset.append(wk)
        masks[wk] = m.reshape(w.shape)
        drop.add(tk)
    weights = {k: v for k, v in sd.items() if k not in drop}
    notes.append(f"DST: {len(masks)} layers, mask = |W|.view(out,-1) > threshold[:, None]; threshold dropped")
    if reset:
        notes.append(f"DST: {len(reset)} layers keep <= 1% so their threshold resets to 0 as in the "
                     f"module's forward (mask = W != 0): {reset[:5]}")
    return weights, masks, notes


HANDLERS: dict[str, Callable] = {
    "dense_zeros": _dense_zeros,
    "explicit": _explicit,
    "torch_prune": _torch_prune,
    "shrinkbench": _shrinkbench,
    "open_lth": _open_lth_ckpt,
    "rigl_reproducibility": _rigl_repro,
    "rigl_torch": _rigl_torch,
    "torch_ao": _torch_ao,
    "continuous_sparsification": _cs,
    "dst": _dst,
}


def unknown_layout(source: str, sd, sus: list[str]) -> UnknownLayoutError:
    return UnknownLayoutError(
        f"{source}: unknown mask layout — keys that look like masks or scores but match no known form: "
        f"{sus[:10]}{' ...' if len(sus) > 10 else ''}. Key families seen: {key_families(sd)}. "
        f"Known forms: {', '.join(FORMS)}. Pass mask_form= to force one, masks= to give the masks "
        "explicitly, or mask_form='dense_zeros' to ignore these keys' meaning."
    )
