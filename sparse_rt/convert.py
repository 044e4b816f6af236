"""Training checkpoint -> SparseModel: read (sparse_rt.ingest), match keys, load, sparsify."""

import inspect
import os
from typing import Callable, Optional, Union

import torch
from torch import nn

from . import models
from .arch import build_arch, is_import_string
from .formats import BSR, CSR
from .ingest import match_masks, match_state_dict, read_checkpoint
from .ingest.hugging_face import read_hf_config
from .model import LayerSummary, SparseModel, Summary, sparsify
from .nn.surgery import (
    convertible_layers,
    copy_module,
    remove_pruning,
    tied_parameters,
    untie_where_values_differ,
)
from .plan import plan_layer

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(dtype: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    """None, a torch floating dtype, or one of 'fp32', 'fp16', 'bf16'."""
    if dtype is None or dtype in DTYPES.values():
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (or the torch dtype), got {dtype!r}")


def from_checkpoint(path: Union[str, os.PathLike], arch: Union[nn.Module, str], masks=None, mask_form: str = "auto", *,
                    arch_kwargs: Optional[dict] = None, rename: Optional[dict] = None, min_sparsity: float = 0.5,
                    format: str = "auto", dtype: Union[str, torch.dtype, None] = None, unsafe: bool = False,
                    cs_s0: float = 0.0, progress: Optional[Callable] = None,
                    device: Union[str, torch.device, None] = None) -> SparseModel:
    """Returns the SparseModel of the checkpoint at `path` (a file or an OpenLTH folder).

    arch:         an nn.Module (not changed), a zoo name or "pkg.module:factory"; arch_kwargs go
                  to the factory and are recorded for .srt files.
    masks, mask_form, unsafe, cs_s0: as sparse_rt.ingest.read_checkpoint.
    rename:       {"old.prefix.": "new.prefix."} for keys that differ by more than a prefix
                  (prefixes such as 'module.' are found and mapped without it).
    min_sparsity, format, progress, device: as sparse_rt.sparsify (device: where the model will
                  run, for format='auto'; the checkpoint is read to the CPU, so the default plans for it).
    dtype:        converts the result ('fp32', 'fp16', 'bf16' or a torch dtype).
    Raises sparse_rt.ingest errors (IngestError) and ArchitectureError, naming what to change.
    """
    dtype = parse_dtype(dtype)
    hf_config = None
    if isinstance(arch, str) and arch.startswith("transformers") and is_import_string(arch) and not arch_kwargs:
        hf_config = read_hf_config(os.fspath(path))  # a save_pretrained folder's config.json
        arch_kwargs = {"config": hf_config} if hf_config is not None else arch_kwargs
    module, spec = build_arch(arch, arch_kwargs)
    if spec is None:
        module = copy_module(module)  # loading the checkpoint must not change the caller's module
    remove_pruning(module)  # an instance pruned with torch.nn.utils.prune takes plain weights
    ckpt = read_checkpoint(path, mask_form=mask_form, masks=masks, model=module, unsafe=unsafe, cs_s0=cs_s0)
    if hf_config is not None:
        ckpt.notes.append(f"architecture {arch} built from the folder's config.json (model_type "
                          f"{hf_config['model_type']!r}), recorded in the .srt")
    _fill_tied_names(ckpt, module)
    state = match_state_dict(ckpt, module, rename=rename)
    layer_masks = match_masks(ckpt.masks, module, key_map=state.key_map)
    if spec is not None and _returns_logits_where_training_code_may_not(spec):
        ckpt.notes.append(f"the zoo's {spec['name']} returns logits; training code whose copy of it ends in "
                          "log_softmax (FreeTickets' and Sup-tickets' WideResNet, Sup-tickets' ResNet) returns "
                          "log-probabilities: pass arch_kwargs={'log_softmax': True} to match it")
    untied = untie_where_values_differ(module, state)
    if untied:
        ckpt.notes.append("untied, as the checkpoint holds different values for them (a mask on one name of a tied "
                          "weight): " + ", ".join(untied))
    module.load_state_dict(state, strict=True)
    # Other masks (biases, embeddings) are already multiplied into the state dict; sparsify takes
    # the masks of the layers it can convert.
    layers = convertible_layers(module)
    weight_masks = {k: m for k, m in layer_masks.items()
                    if k.endswith(".weight") and k.removesuffix(".weight") in layers}
    model = sparsify(module.eval(), weight_masks, min_sparsity=min_sparsity, format=format, progress=progress,
                     device=device)
    model.arch_spec = spec
    model.source = {"sha256": ckpt.source_sha256, "form": ckpt.form, "file": os.path.basename(os.fspath(path)),
                    "masks_sha256": ckpt.masks_sha256, "notes": list(ckpt.notes)}
    return model.to(dtype) if dtype is not None else model


def _fill_tied_names(ckpt, module):
    """A checkpoint may store a tied parameter under one of its names only (save_pretrained leaves
    out GPT-2's lm_head.weight, which is transformer.wte.weight): the others take its tensor."""
    filled = []
    for names in tied_parameters(module):
        stored = next((n for n in names if n in ckpt.state_dict), None)
        for name in names if stored is not None else ():
            if name not in ckpt.state_dict:
                ckpt.state_dict[name] = ckpt.state_dict[stored]
                if stored in ckpt.masks:
                    ckpt.masks[name] = ckpt.masks[stored]
                filled.append(f"{name} (from {stored})")
    if filled:
        ckpt.notes.append("tied parameters stored under one name: " + ", ".join(filled))


def _returns_logits_where_training_code_may_not(spec):
    """A zoo model with a log_softmax option, not set: its source codebases differ on it."""
    if is_import_string(spec["name"]) or spec["name"] not in models.names():
        return False
    takes = inspect.signature(models.get_factory(spec["name"])).parameters
    return "log_softmax" in takes and not spec["kwargs"].get("log_softmax")


# Module names of embedding tables in the common codebases: BERT's word_embeddings /
# position_embeddings, BART's embed_tokens / embed_positions, GPT-2's wte / wpe, T5's shared.
_EMBEDDING_NAMES = ("wte", "wpe", "shared")


def _is_embedding_table(key):
    modules = key.split(".")[:-1]
    return any("embed" in m for m in modules) or (bool(modules) and modules[-1] in _EMBEDDING_NAMES)


def checkpoint_summary(ckpt, *, min_sparsity=0.5, format="auto", device="cpu"):
    """The Summary sparsify() would give, from a Checkpoint alone (no architecture): one row per
    masked 2-D or 4-D weight, taken as a Linear or a Conv2d by its rank (embedding tables, known by
    their names, left out: a lookup has no multiply-adds); bytes count weights only. `device`: where
    the model would run (the cost model of format='auto')."""
    rows = []
    for key, mask in ckpt.masks.items():
        weight = ckpt.state_dict[key]
        if not key.endswith("weight") or weight.dim() not in (2, 4) or _is_embedding_table(key):
            continue
        kind = "Linear" if weight.dim() == 2 else "Conv2d"
        flat, flat_mask = weight.reshape(weight.shape[0], -1), mask.reshape(weight.shape[0], -1)
        density = flat_mask.float().mean().item() if mask.numel() else 1.0
        plan = plan_layer(kind, tuple(flat.shape), 1.0 - density, min_sparsity=min_sparsity, format=format,
                          device=device)
        dense_bytes = weight.numel() * weight.element_size()
        if plan.format == "csr":
            sparse_bytes = CSR.from_dense(flat, flat_mask).nbytes
        elif plan.format == "bsr":
            sparse_bytes = BSR.from_dense(flat, flat_mask, plan.blocksize).nbytes
        else:
            sparse_bytes = dense_bytes
        rows.append(LayerSummary(key.removesuffix(".weight"), kind, tuple(weight.shape), density, plan.format,
                                 dense_bytes, sparse_bytes, plan.reason, plan.blocksize))
    return Summary(rows)
