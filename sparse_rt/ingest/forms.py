"""The mask forms training codebases write: one :class:`Form` entry per form in :data:`FORM_TABLE`.

A form is how a training codebase stores its masks.  Each entry holds everything about
its form: the name (:data:`FORMS`, the ``mask_form=`` / ``--mask-form`` choices), the
detector that recognises its keys, the reader that undoes it, and its provenance —
where each key name was confirmed in the codebase's own public source.  Adding a form
means adding one entry (plus its detector and reader functions above the table).

Trees read: facebookresearch/open_lth @fd37959 (pruning/mask.py @1b98dc6),
JJGO/shrinkbench pruning/modules.py @2803018 and experiment/train.py @446845e,
varun19299/rigl-reproducibility @97443be, verbose-void/rigl-torch @34d19e4,
lolemacs/continuous-sparsification @5bd4039, junjieliu2910/DynamicSparseTraining @595c91e,
VITA-Group/FreeTickets @e5540d1, luuyin/Sup-tickets @c4ae419, and torch 2.13's own
``torch/nn/utils/prune.py`` and ``torch/ao/pruning``.

Each reader turns a checkpoint's contents into a :class:`FormReading`: ``weights`` are the
tensors the *inference* model expects, before masking (any scale the training module
applies is folded in), and ``masks`` are the saved masks keyed like ``weights``.
:func:`sparse_rt.ingest.read_checkpoint` then validates the masks (shape, 0/1) and
multiplies them in.  A reader first checks that its form's keys are there, since
``mask_form=`` can force any form on any checkpoint.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

import torch
from torch import nn

from .errors import FormNotPresentError, MissingMasksError, ModelRequiredError
from .loading import key_families, require_real_floating
from .matching import align_subset
from .openlth import has_mask_buffers, mask_buffer_keys, masked_name

__all__ = [
    "Form",
    "FORM_TABLE",
    "FORMS",
    "form_named",
    "CheckpointContents",
    "ReadOptions",
    "FormReading",
    "rigl_torch_weight_names",
]

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class CheckpointContents:
    """What was loaded, for detectors and readers to look at."""

    state_dict: dict[str, torch.Tensor]  # unwrapped, 'module.' prefixes stripped, tensors only
    top: Any  # the whole loaded object: some forms keep their masks beside the state dict
    source: str  # the weights file, for messages
    side_masks: dict[str, torch.Tensor] | None = None  # an OpenLTH mask.pth beside the weights file


@dataclass(frozen=True)
class ReadOptions:
    """What the caller of ``read_checkpoint`` told us that some readers need."""

    model: nn.Module | None = None  # rigl_torch: maps its positional masks to names
    cs_s0: float = 0.0  # continuous_sparsification: mask_initial_value
    user_masks_given: bool = False  # torch_ao and explicit take their masks from masks=


class FormReading(NamedTuple):
    weights: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    notes: list[str]


@dataclass(frozen=True)
class Form:
    """One checkpoint form.

    ``detect`` is ``None`` for forms that only a fallback or ``mask_form=`` chooses
    (``dense_zeros``, ``explicit``).  ``detect_rank`` orders the detected forms in
    messages (markers outside the state dict first).  ``masks_inferred``: the reader
    guesses the masks, so masks given with ``masks=`` replace all of them.
    """

    name: str
    read: Callable[[CheckpointContents, ReadOptions], FormReading]
    provenance: str
    detect: Callable[[CheckpointContents], bool] | None = None
    detect_rank: int = 0
    masks_inferred: bool = False


_AO_RE = re.compile(r"^(?:(?P<prefix>.*)\.)?parametrizations\.(?P<name>[^.]+)\.original$")


def _sibling(key: str, leaf: str) -> str:
    head, _, _ = key.rpartition(".")
    return f"{head}.{leaf}" if head else leaf


def _require(present: bool, form: str, state_dict: StateDict, what: str) -> None:
    if not present:
        raise FormNotPresentError(
            f"mask_form={form!r} was requested but the checkpoint has no {what}. "
            f"Key families seen: {key_families(state_dict)}"
        )


# ----------------------------------------------------------------------------- dense_zeros, explicit

def _read_dense_zeros(contents: CheckpointContents, options: ReadOptions) -> FormReading:
    masks = {}
    for key, value in contents.state_dict.items():
        if key.rsplit(".", 1)[-1] == "weight" and value.dim() >= 2 and value.is_floating_point():
            masks[key] = value != 0
    notes = [f"no saved masks: inferred the nonzero pattern of {len(masks)} weight tensors (w != 0)"]
    return FormReading(dict(contents.state_dict), masks, notes)


def _read_explicit(contents: CheckpointContents, options: ReadOptions) -> FormReading:
    if not options.user_masks_given:
        raise MissingMasksError("mask_form='explicit' needs masks= (a dict or a file of {name: 0/1 tensor})")
    return FormReading(dict(contents.state_dict), {}, [])


# ----------------------------------------------------------------------------- torch_prune

def _has_torch_prune(contents: CheckpointContents) -> bool:
    state_dict = contents.state_dict
    return any(key.endswith("_orig") and (key[:-5] + "_mask") in state_dict for key in state_dict)


def _read_torch_prune(contents: CheckpointContents, options: ReadOptions) -> FormReading:
    state_dict = contents.state_dict
    _require(_has_torch_prune(contents), "torch_prune", state_dict, "'<name>_orig' + '<name>_mask' pairs")
    weights, masks = {}, {}
    paired = set()
    for key, value in state_dict.items():
        if key.endswith("_orig") and (key[:-5] + "_mask") in state_dict:
            name = key[:-5]
            weights[name] = value
            masks[name] = state_dict[name + "_mask"]
            paired.update((key, name + "_mask"))
    for key, value in state_dict.items():
        if key not in paired:
            weights[key] = value
    return FormReading(weights, masks,
                       [f"torch.nn.utils.prune: {len(masks)} '_orig'/'_mask' pairs -> W = orig * mask"])


# ----------------------------------------------------------------------------- shrinkbench

def _has_shrinkbench(contents: CheckpointContents) -> bool:
    state_dict = contents.state_dict
    return any(key.endswith("_mask") and key[:-5] in state_dict and (key[:-5] + "_orig") not in state_dict
               for key in state_dict)


def _read_shrinkbench(contents: CheckpointContents, options: ReadOptions) -> FormReading:
    state_dict = contents.state_dict
    _require(_has_shrinkbench(contents), "shrinkbench", state_dict, "'<name>' + '<name>_mask' pairs")
    masks = {key[:-5]: value for key, value in state_dict.items() if key.endswith("_mask") and key[:-5] in state_dict}
    weights = {key: value for key, value in state_dict.items() if not (key.endswith("_mask") and key[:-5] in masks)}
    return FormReading(weights, masks, [f"shrinkbench: {len(masks)} '<name>_mask' buffers -> W = W * mask"])


# ----------------------------------------------------------------------------- open_lth

def _has_open_lth(contents: CheckpointContents) -> bool:
    return has_mask_buffers(contents.state_dict) or contents.side_masks is not None


def _read_open_lth(contents: CheckpointContents, options: ReadOptions) -> FormReading:
    state_dict = contents.state_dict
    if has_mask_buffers(state_dict):
        return _read_open_lth_buffers(state_dict)
    if contents.side_masks is None:
        raise FormNotPresentError(
            f"mask_form='open_lth' but {contents.source} has no 'mask_<name>' buffers and no mask.pth beside it"
        )
    return FormReading(dict(state_dict), dict(contents.side_masks),
                       [f"open_lth: {len(contents.side_masks)} masks from mask.pth"])


def _read_open_lth_buffers(state_dict: StateDict) -> FormReading:
    buffer_keys = set(mask_buffer_keys(state_dict))
    weights, masks = {}, {}
    stripped = 0
    for key, value in state_dict.items():
        if key in buffer_keys:
            masks[masked_name(key)] = value
        elif key.startswith("model."):
            weights[key[len("model."):]] = value
            stripped += 1
        else:
            weights[key] = value
    return FormReading(weights, masks, [
        f"open_lth PrunedModel state: stripped 'model.' from {stripped} keys, "
        f"{len(masks)} 'mask_<name>' buffers (name '___' -> '.')"
    ])


# ----------------------------------------------------------------------------- rigl_reproducibility

def _has_rigl_reproducibility(contents: CheckpointContents) -> bool:
    top = contents.top
    masking = top.get("mask") if isinstance(top, Mapping) else None
    return isinstance(masking, Mapping) and isinstance(masking.get("masks"), Mapping)


def _read_rigl_reproducibility(contents: CheckpointContents, options: ReadOptions) -> FormReading:
    _require(_has_rigl_reproducibility(contents), "rigl_reproducibility", contents.state_dict,
             "ckpt['mask']['masks'] dict")
    masks = dict(contents.top["mask"]["masks"])
    return FormReading(dict(contents.state_dict), masks,
                       [f"rigl-reproducibility: {len(masks)} masks from ckpt['mask']['masks']"])


# ----------------------------------------------------------------------------- rigl_torch

def _has_rigl_torch(contents: CheckpointContents) -> bool:
    top = contents.top
    pruner = top.get("pruner") if isinstance(top, Mapping) else None
    return isinstance(pruner, Mapping) and isinstance(pruner.get("backward_masks"), (list, tuple))


def rigl_torch_weight_names(model: nn.Module) -> list[str]:
    """Parameter names in the order rigl-torch's ``get_W`` enumerates its layers."""
    def takes(module):
        return isinstance(module, nn.Linear) or (hasattr(module, "weight") and type(module) is not nn.BatchNorm2d)

    if takes(model):
        return ["weight"]
    names: list[str] = []

    def visit(module, prefix):
        for name, child in module._modules.items():
            if child is None:
                continue
            if takes(child):
                names.append(f"{prefix}{name}.weight")
            else:
                visit(child, f"{prefix}{name}.")

    visit(model, "")
    return names


def _rigl_torch_layer_names(source: str, pruner: Mapping, backward_masks: list, model: Any) -> list[str]:
    """The parameter name of each of ``backward_masks``' positions, checked against ``model``."""
    if model is None:
        raise ModelRequiredError(
            f"{source}: rigl-torch checkpoint — ckpt['pruner']['backward_masks'] is a list of "
            f"{len(backward_masks)} masks ({sum(m is not None for m in backward_masks)} sparse) ordered by "
            "layer position, with no parameter names. Pass model= (an nn.Module of the trained architecture) "
            "so the positions can be matched to parameters the way rigl_torch.util.get_W enumerates them."
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model= must be an nn.Module, got {type(model).__name__}")
    names = rigl_torch_weight_names(model)
    if len(names) != len(backward_masks):
        raise ModelRequiredError(
            f"{source}: the model has {len(names)} layers in rigl-torch order but the pruner saved "
            f"{len(backward_masks)} masks — model= is not the architecture that was trained. Model layers: "
            f"{names[:10]}{' ...' if len(names) > 10 else ''}"
        )
    layer_sizes = pruner.get("N")  # RigLScheduler.N: numel of each layer, in get_W order
    if isinstance(layer_sizes, (list, tuple)) and len(layer_sizes) == len(names):
        model_state = model.state_dict()
        for i, (name, size) in enumerate(zip(names, layer_sizes)):
            if name in model_state and model_state[name].numel() != int(size):
                raise ModelRequiredError(
                    f"{source}: rigl-torch layer {i} ({name}) has {model_state[name].numel()} weights in model= "
                    f"but the pruner recorded N[{i}] = {int(size)}; model= does not match the checkpoint"
                )
    return names


def _read_rigl_torch(contents: CheckpointContents, options: ReadOptions) -> FormReading:
    state_dict = contents.state_dict
    _require(_has_rigl_torch(contents), "rigl_torch", state_dict, "ckpt['pruner']['backward_masks'] list")
    pruner = contents.top["pruner"]
    backward_masks = list(pruner["backward_masks"])
    names = _rigl_torch_layer_names(contents.source, pruner, backward_masks, options.model)
    name_map, description = align_subset(names, state_dict.keys())
    masks = {name_map[name]: mask for name, mask in zip(names, backward_masks) if mask is not None}
    notes = [f"rigl-torch: {len(masks)} of {len(backward_masks)} backward_masks mapped by get_W order of model="]
    if description:
        notes.append(f"rigl-torch layer names {description} to match the checkpoint")
    return FormReading(dict(state_dict), masks, notes)


# ----------------------------------------------------------------------------- torch_ao

def _has_torch_ao(contents: CheckpointContents) -> bool:
    return any(_AO_RE.match(key) for key in contents.state_dict)


def _read_torch_ao(contents: CheckpointContents, options: ReadOptions) -> FormReading:
    state_dict = contents.state_dict
    _require(_has_torch_ao(contents), "torch_ao", state_dict, "'<module>.parametrizations.<name>.original' keys")
    weights = {}
    renamed = []
    for key, value in state_dict.items():
        match = _AO_RE.match(key)
        if match:
            name = (match.group("prefix") + "." if match.group("prefix") else "") + match.group("name")
            weights[name] = value
            renamed.append(name)
        else:
            weights[key] = value
    if not options.user_masks_given:
        raise MissingMasksError(
            f"{contents.source}: torch.ao.pruning checkpoint ({len(renamed)} tensors under "
            "'parametrizations.<name>.original', e.g. " + ", ".join(renamed[:3]) + "). "
            "The mask was not saved in the checkpoint: FakeSparsity.state_dict() returns {} by design "
            "and the masks live in the sparsifier. Pass them with masks=, e.g. "
            "masks={fqn: s['mask'] for fqn, s in sparsifier.state.items()} (or sparsifier.state_dict(), "
            "or a file saved from that dict). Or call sparsifier.squash_mask() "
            "before saving: the zeros then carry the mask."
        )
    return FormReading(weights, {}, [f"torch.ao.pruning: '<module>.parametrizations.<name>.original' -> "
                                     f"'<module>.<name>' for {len(renamed)} tensors; masks from masks="])


# ----------------------------------------------------------------------------- continuous_sparsification

def _is_cs_score(key: str, state_dict: StateDict) -> bool:
    return key.rsplit(".", 1)[-1] == "mask_weight" and _sibling(key, "weight") in state_dict


def _has_continuous_sparsification(contents: CheckpointContents) -> bool:
    return any(_is_cs_score(key, contents.state_dict) for key in contents.state_dict)


def _read_continuous_sparsification(contents: CheckpointContents, options: ReadOptions) -> FormReading:
    state_dict = contents.state_dict
    _require(_has_continuous_sparsification(contents), "continuous_sparsification", state_dict,
             "'<layer>.mask_weight' scores")
    s0 = float(options.cs_s0)
    scale = 1.0 / (1.0 / (1.0 + math.exp(-s0)))
    masks = {}
    dropped = set()
    for key, value in state_dict.items():
        if _is_cs_score(key, state_dict):
            require_real_floating(key, value, contents.source, "score")
            require_real_floating(_sibling(key, "weight"), state_dict[_sibling(key, "weight")], contents.source,
                                  "weight")
            masks[_sibling(key, "weight")] = value > 0
            dropped.update((key, _sibling(key, "init_weight")))
    weights = {key: value * scale if key in masks else value
               for key, value in state_dict.items() if key not in dropped}
    return FormReading(weights, masks, [
        f"continuous sparsification: {len(masks)} layers, mask = mask_weight > 0, "
        f"W = weight * mask / sigmoid(s0) with s0 = {s0:g} (x{scale:.6g}); init_weight dropped"
    ])


# ----------------------------------------------------------------------------- dst

def _dst_threshold_pairs(state_dict: StateDict) -> list[tuple[str, str]]:
    """``(threshold key, weight key)`` for every per-output-row threshold."""
    pairs = []
    for key, threshold in state_dict.items():
        if key.rsplit(".", 1)[-1] != "threshold":
            continue
        weight = state_dict.get(_sibling(key, "weight"))
        if weight is not None and threshold.dim() == 1 and weight.dim() >= 2 and threshold.numel() == weight.shape[0]:
            pairs.append((key, _sibling(key, "weight")))
    return pairs


def _has_dst(contents: CheckpointContents) -> bool:
    return bool(_dst_threshold_pairs(contents.state_dict))


def _read_dst(contents: CheckpointContents, options: ReadOptions) -> FormReading:
    state_dict = contents.state_dict
    pairs = _dst_threshold_pairs(state_dict)
    _require(bool(pairs), "dst", state_dict, "per-output-row '<layer>.threshold' parameters")
    masks = {}
    reset = []
    for threshold_key, weight_key in pairs:
        weight, threshold = state_dict[weight_key], state_dict[threshold_key]
        require_real_floating(weight_key, weight, contents.source, "weight")
        require_real_floating(threshold_key, threshold, contents.source, "threshold")
        rows = weight.abs().reshape(weight.shape[0], -1)
        mask = (rows - threshold.reshape(-1, 1).to(rows.dtype)) > 0
        if mask.sum().item() / max(mask.numel(), 1) <= 0.01:
            mask = rows > 0
            reset.append(weight_key)
        masks[weight_key] = mask.reshape(weight.shape)
    thresholds = {threshold_key for threshold_key, _ in pairs}
    weights = {key: value for key, value in state_dict.items() if key not in thresholds}
    notes = [f"DST: {len(masks)} layers, mask = |W|.view(out,-1) > threshold[:, None]; threshold dropped"]
    if reset:
        notes.append(f"DST: {len(reset)} layers keep <= 1% so their threshold resets to 0 as in the "
                     f"module's forward (mask = W != 0): {reset[:5]}")
    return FormReading(weights, masks, notes)


# ----------------------------------------------------------------------------- the table

FORM_TABLE: tuple[Form, ...] = (
    Form(
        name="dense_zeros",
        read=_read_dense_zeros,
        masks_inferred=True,
        provenance="""FreeTickets (VITA-Group/FreeTickets ``main_DST.py``, ``main_EDST.py``:
    ``{"epoch", "state_dict", "optimizer"}`` in ``model.pth`` / ``model_%d.pth``),
    Sup-tickets (luuyin/Sup-tickets ``CIFAR/main_suptickets.py``: same three keys),
    and Dettmers-style ``sparselearning`` code in general (SET, SNFS, FreeTickets' DST
    runs): ``sparselearning/core.py::Masking.step`` calls ``apply_mask`` (``tensor.data *
    masks[name]``) after every optimizer step but the masks are not saved, so pruned
    weights are exact zeros.  ``Checkpoint.masks`` then holds the
    *inferred* nonzero pattern (``w != 0``) of every floating-point ``*.weight`` with
    2 or more dims (Linear, ConvNd; Embedding too) and ``Checkpoint.masks_inferred``
    is True.  The converter's ``min_sparsity`` decides which of those layers are worth
    a sparse format.""",
    ),
    Form(
        name="explicit",
        read=_read_explicit,
        provenance="a plain state dict plus ``masks=`` from the user.",
    ),
    Form(
        name="torch_prune",
        read=_read_torch_prune,
        detect=_has_torch_prune,
        detect_rank=2,
        provenance="""pytorch ``torch/nn/utils/prune.py``: ``BasePruningMethod.apply``
    moves parameter ``X`` to ``X + "_orig"`` and registers buffer ``X + "_mask"``
    (float 0/1); the module recomputes ``X = X_orig * X_mask`` in a forward pre-hook.
    Works for any parameter name (``weight``, ``bias``, ...).  ``X`` itself is not in
    the state dict.""",
    ),
    Form(
        name="shrinkbench",
        read=_read_shrinkbench,
        detect=_has_shrinkbench,
        detect_rank=7,
        provenance="""JJGO/shrinkbench ``pruning/modules.py``: ``LinearMasked`` /
    ``Conv2dMasked`` keep ``weight``/``bias`` and register buffers ``weight_mask`` and
    ``bias_mask`` (``bias_mask`` may be None, then it is absent from the state dict);
    forward uses ``weight * weight_mask``.  Saved by ``experiment/train.py`` as
    ``checkpoints/checkpoint-{epoch}.pt`` = ``{"model_state_dict", "optim_state_dict"}``.
    Told apart from ``torch_prune`` by ``X`` being present and ``X_orig`` absent.""",
    ),
    Form(
        name="open_lth",
        read=_read_open_lth,
        detect=_has_open_lth,
        detect_rank=3,
        provenance="""facebookresearch/open_lth (see :mod:`sparse_rt.ingest.openlth` for the
    folder layout and ``mask.pth``).  Inside ``checkpoint.pth`` (``training/checkpointing.py``:
    ``{"ep", "it", "model_state_dict", "optimizer_state_dict", "logger"}``) the state
    dict is a ``PrunedModel``'s (``pruning/pruned_model.py``): weights under
    ``model.<name>`` and float mask buffers ``mask_<name with "." replaced by "___">``
    (``PrunedModel.to_mask_name``), ``module.``-prefixed under DataParallel.""",
    ),
    Form(
        name="rigl_reproducibility",
        read=_read_rigl_reproducibility,
        detect=_has_rigl_reproducibility,
        detect_rank=1,
        provenance="""varun19299/rigl-reproducibility
    ``sparselearning/utils/train_helper.py::save_weights``: ``{"step", "epoch",
    "model", "optimizer", "val_loss", "mask"}`` where ``"mask"`` is
    ``Masking.state_dict()`` (``sparselearning/core.py``): ``{"baseline_nonzero",
    "masks", "stats", "mask_step", "total_params"}``; ``ckpt["mask"]["masks"]`` maps
    ``named_parameters()`` names (biases and BatchNorm removed) to float 0/1 masks.
    Files ``epoch_{N}.pth`` and ``best_model.pth``.  Weights are already multiplied by
    the masks (``Masking.apply_mask``); we multiply again, which is exact.""",
    ),
    Form(
        name="rigl_torch",
        read=_read_rigl_torch,
        detect=_has_rigl_torch,
        detect_rank=0,
        provenance="""rigl-torch (McCrearyD/rigl-torch; read in the verbose-void/rigl-torch
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
    to check the order.""",
    ),
    Form(
        name="torch_ao",
        read=_read_torch_ao,
        detect=_has_torch_ao,
        detect_rank=4,
        provenance="""pytorch ``torch/ao/pruning/sparsifier/base_sparsifier.py`` +
    ``utils.py``: ``prepare`` registers a ``FakeSparsity`` parametrization, so the
    model's state dict holds ``<module>.parametrizations.weight.original``;
    ``FakeSparsity.state_dict`` returns ``{}`` on purpose, so **the mask is not in the
    model's checkpoint**.  It lives in ``sparsifier.state[fqn]["mask"]`` (fqn like
    ``"fc1.weight"``); ``sparsifier.state_dict()`` is ``{"state": {fqn: {"mask"}},
    "groups": [...]}``.  Pass ``masks=`` (that dict, the ``state`` dict, a
    ``{fqn: mask}`` dict or a file of one of them).  Note ``state`` is a
    ``defaultdict``, which ``weights_only`` loading refuses: save
    ``{fqn: s["mask"] for fqn, s in sparsifier.state.items()}`` instead.  After
    ``squash_mask()`` the model is plain ``dense_zeros``.""",
    ),
    Form(
        name="continuous_sparsification",
        read=_read_continuous_sparsification,
        detect=_has_continuous_sparsification,
        detect_rank=5,
        provenance="""lolemacs/continuous-sparsification ``models/layers.py``:
    ``SoftMaskedConv2d`` has ``weight``, ``init_weight`` (rewind copy, not a mask) and
    ``mask_weight`` (the soft-mask scores ``s``).  In ticket mode ``compute_mask``
    returns ``(mask_weight > 0).float() / sigmoid(mask_initial_value)``; the forward
    uses ``weight * mask``.  So effective ``W = weight * (s > 0) / sigmoid(s0)`` with
    ``s0 = mask_initial_value`` (``main.py`` ``--mask-initial-value``, default 0, i.e.
    a factor 2).  ``s0`` is not saved: pass ``cs_s0=``.  The repo itself saves no
    checkpoint; we read ``model.state_dict()``.  Masks are on convolutions only (the
    classifier is a plain ``nn.Linear``).""",
    ),
    Form(
        name="dst",
        read=_read_dst,
        detect=_has_dst,
        detect_rank=6,
        provenance="""junjieliu2910/DynamicSparseTraining ``cifar/models/binarization.py``:
    ``MaskedConv2d`` / ``MaskedMLP`` hold ``weight``, ``bias`` and a per-output
    ``threshold`` parameter (shape ``[out]``); forward computes
    ``mask = (|W|.view(out, -1) - threshold.view(out, -1)) > 0`` and, if that keeps
    ``<= 1%`` of the layer, resets the threshold to 0 (mask = ``|W| > 0``) — we apply
    the same rule.  Saved by ``cifar/utils.py::save_model`` as plain
    ``model.state_dict()`` (``best_acc_model.pth``, ``final_model.pth``, ...).""",
    ),
)

FORMS: tuple[str, ...] = tuple(form.name for form in FORM_TABLE)

_FORM_BY_NAME = {form.name: form for form in FORM_TABLE}


def form_named(name: str) -> Form:
    """The :data:`FORM_TABLE` entry called ``name``."""
    return _FORM_BY_NAME[name]
