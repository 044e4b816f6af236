"""Models and ensembles <-> .srt artifacts (the container itself is sparse_rt.io.srt).

A model is saved as its module's state_dict plus a manifest recording the architecture spec, the
checkpoint it came from and, per Linear/Conv2d layer, its summary row and geometry. Loading
rebuilds the architecture (rebuild_arch), puts an empty sparse layer of the recorded geometry
where each sparse layer goes, and assigns the file's tensors, which the sparse layers validate.

An ensemble is saved as its members' modules in one nn.ModuleList (tensor keys "0.conv1.values",
"1.conv1.values", ...), the manifest's "kind" being "ensemble" and its "ensemble" record holding
the combine rule and each member's architecture and source.
"""

import dataclasses
import math
import os
import threading
from typing import Optional, Tuple, Union

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)

from .arch import ArchitectureError, build_arch, is_import_string
from .ensemble import SparseEnsemble
from .ensemble.combine import COMBINE_RULES
from .formats import BSR, CSR
from .fusion import TENSOR_FREE_REWRITES, FusionError, fuse
from .io import srt
from .io.srt import SrtArchError, SrtError, SrtHeaderError
from .model import LayerSummary, SparseModel, Summary
from .nn import SparseConv2d, SparseLinear
from .nn.surgery import copy_module, is_transposed_linear, remove_pruning, replace_submodule

KINDS = ("model", "ensemble")
# An architecture rebuilt from a manifest may hold at most this many dense parameter elements per
# byte of the file (99.9%-sparse fp16 layers need about 170).
MAX_ARCH_ELEMENTS_PER_BYTE = 256
_SUMMARY_FIELDS = {f.name for f in dataclasses.fields(LayerSummary)}


def save(obj: Union[SparseModel, SparseEnsemble], path: Union[str, os.PathLike]) -> None:
    """Writes a SparseModel or a SparseEnsemble to `path` atomically (temporary file, fsync, rename)."""
    if isinstance(obj, SparseEnsemble):
        module, rows, manifest = _ensemble_payload(obj)
    elif isinstance(obj, SparseModel):
        module, rows = obj.module, obj.summary()
        manifest = {"kind": "model", "arch": obj.arch_spec, "source": obj.source}
        if obj.fusion is not None:
            manifest["fusion"] = obj.fusion.to_json()
    else:
        raise TypeError(f"save expects a SparseModel or a SparseEnsemble, got {type(obj).__name__}")
    manifest["layers"] = [_layer_record(row, module.get_submodule(row.name)) for row in rows]
    tensors, ties = _stored_once(module.state_dict())
    if ties:
        manifest["ties"] = ties
    srt.write(path, tensors, manifest)


def _stored_once(state):
    """(tensors to store, ties): entries that are one tensor under two names (a tied weight, like
    GPT-2's lm_head.weight and transformer.wte.weight) are stored once, under the first name, and
    recorded as ties {name: stored name}; tensors that only overlap in memory are stored as copies."""
    tensors, ties, stored, storages = {}, {}, {}, set()
    for name, tensor in state.items():
        tensor = tensor.detach()
        storage = tensor.untyped_storage().data_ptr() if tensor.numel() else None
        view = (storage, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.device)
        if storage is not None and view in stored:
            ties[name] = stored[view]
            continue
        if storage is not None:
            if storage in storages:
                tensor = tensor.clone()
            storages.add(storage)
            stored[view] = name
        tensors[name] = tensor.cpu().contiguous()
    return tensors, ties


def _restore_ties(manifest, tensors, module, path):
    """Puts each tied tensor back under its other names (the file's ties, checked), and after the
    load makes tied parameters one Parameter again. Returns the function that does the latter."""
    ties = manifest.get("ties") or {}
    if not (isinstance(ties, dict) and all(isinstance(k, str) and isinstance(v, str) and v in tensors
                                           and k not in tensors for k, v in ties.items())):
        raise SrtHeaderError(f"{path}: the manifest's ties are malformed: {str(ties)[:200]} (each a name the "
                             "file does not store, tied to one it does)")
    for alias, stored in ties.items():
        tensors[alias] = tensors[stored]

    def retie():
        for alias, stored in ties.items():
            owner, _, attr = alias.rpartition(".")
            try:
                parameter = module.get_parameter(stored)
                module.get_parameter(alias)
            except AttributeError:  # a buffer: sharing the tensor is the tie
                continue
            setattr(module.get_submodule(owner), attr, parameter)
    return retie


def _ensemble_payload(ensemble):
    members = list(ensemble.members)
    rows = [dataclasses.replace(row, name=f"{i}.{row.name}") for i, m in enumerate(members) for row in m.summary()]
    record = {"combine": ensemble.combine, "members": [{"arch": m.arch_spec, "source": m.source} for m in members]}
    manifest = {"kind": "ensemble", "arch": None, "source": {}, "ensemble": record}
    return nn.ModuleList([m.module for m in members]), rows, manifest


def artifact_kind(manifest: dict, path: str) -> str:
    """"model" or "ensemble". Files written before the manifest recorded its kind held the
    ensemble record in their source."""
    kind = manifest.get("kind")
    if kind is None:
        return "ensemble" if _legacy_ensemble_record(manifest) else "model"
    if kind not in KINDS:
        raise SrtHeaderError(f"{path}: the manifest's kind {kind!r} is none of {', '.join(KINDS)}")
    return kind


def ensemble_record(manifest: dict, path: str) -> dict:
    """{"combine", "members": [{"arch", "source"}]} of an ensemble file."""
    record = manifest.get("ensemble") if "kind" in manifest else _legacy_ensemble_record(manifest)
    if not (isinstance(record, dict) and isinstance(record.get("members"), list) and record["members"]
            and all(isinstance(m, dict) and isinstance(m.get("source"), (dict, type(None)))
                    for m in record["members"])):
        raise SrtHeaderError(f"{path}: the manifest's ensemble record is malformed")
    if record.get("combine") not in COMBINE_RULES:
        raise SrtHeaderError(f"{path}: the ensemble's combine rule {str(record.get('combine'))[:100]!r} is none of "
                             f"{', '.join(COMBINE_RULES)}")
    return record


def _legacy_ensemble_record(manifest):
    return (manifest.get("source") or {}).get("ensemble")


def _layer_record(row, layer):
    record = dataclasses.asdict(row)
    if isinstance(layer, SparseLinear):
        record.update(dtype=_dtype_name(layer.values.dtype), in_features=layer.in_features,
                      out_features=layer.out_features, bias=layer.bias is not None,
                      sparse_format=layer.format)
        if layer.format == "bsr":
            record["blocksize"] = list(layer.values.shape[1:])
    elif isinstance(layer, SparseConv2d):
        record.update(dtype=_dtype_name(layer.values.dtype), in_channels=layer.in_channels,
                      out_channels=layer.out_channels, kernel_size=list(layer.kernel_size),
                      stride=list(layer.stride), padding=list(layer.padding),
                      dilation=list(layer.dilation), groups=layer.groups,
                      bias=layer.bias is not None, sparse_format="csr")
    else:
        record["dtype"] = _dtype_name(layer.weight.dtype)
    if getattr(layer, "relu", False):
        record["relu"] = True
    return record


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def load(path: Union[str, os.PathLike], arch: Union[nn.Module, str, None] = None, *,
         arch_kwargs: Optional[dict] = None, trust_arch: bool = False) -> Union[SparseModel, SparseEnsemble]:
    """Loads a .srt file into a SparseModel (a SparseEnsemble when the file holds an ensemble).

    The architecture is rebuilt from the manifest (a zoo name; an import string only with
    `trust_arch=True`, since importing runs code), or from `arch` (an nn.Module, a zoo name or
    "pkg.module:factory", with `arch_kwargs`), which files converted from a module instance need.
    The file is read once into memory: the model's tensors are copies, unaffected by later changes
    to the file. Raises an SrtError subclass for a bad file.
    """
    path = os.fspath(path)
    contents = srt.read(path)
    if artifact_kind(contents.manifest, path) == "ensemble":
        return _load_ensemble(path, contents, arch, arch_kwargs, trust_arch)
    module, spec = rebuild_arch(contents.manifest.get("arch"), path, arch, arch_kwargs, trust_arch, contents)
    model = _load_model(path, contents, module, spec)
    _restore_unstored_buffers(model.module, spec)
    return model


def load_ensemble(path: Union[str, os.PathLike], arch: Union[nn.Module, str, None] = None, *,
                  arch_kwargs: Optional[dict] = None, trust_arch: bool = False, combine: Optional[str] = None,
                  fuse: bool = True) -> SparseEnsemble:
    """Reads an ensemble .srt; arguments as load, `combine` overrides the recorded rule."""
    path = os.fspath(path)
    contents = srt.read(path)
    if artifact_kind(contents.manifest, path) != "ensemble":
        raise SrtHeaderError(f"{path} holds a single model, not an ensemble: read it with sparse_rt.load")
    return _load_ensemble(path, contents, arch, arch_kwargs, trust_arch, combine, fuse)


def _load_ensemble(path, contents, arch, arch_kwargs, trust_arch, combine=None, fuse=True):
    record = ensemble_record(contents.manifest, path)
    modules, specs = [], []
    for member in record["members"]:
        module, spec = rebuild_arch(member.get("arch"), path, arch, arch_kwargs, trust_arch, contents)
        modules.append(module)
        specs.append(spec)
    whole = _load_model(path, contents, nn.ModuleList(modules), None)
    members = []
    for i, (module, spec, member) in enumerate(zip(whole.module, specs, record["members"])):
        _restore_unstored_buffers(module, spec)
        prefix = f"{i}."
        rows = [dataclasses.replace(r, name=r.name[len(prefix):]) for r in whole.summary() if r.name.startswith(prefix)]
        members.append(SparseModel(module, Summary(rows), arch_spec=spec, source=member.get("source")).eval())
    return SparseEnsemble(members, combine=combine or record["combine"], fuse=fuse)


def rebuild_arch(spec: Optional[dict], path: str, arch: Union[nn.Module, str, None] = None,
                 arch_kwargs: Optional[dict] = None, trust_arch: bool = False,
                 contents: Optional[srt.SrtContents] = None) -> Tuple[nn.Module, Optional[dict]]:
    """(module, spec) of the architecture a file records (`spec`), or of `arch` when given (an
    nn.Module is copied: the caller's module stays as it was). A recorded import string is
    imported only with `trust_arch`. A recorded architecture is built on the meta device, checked
    to be no larger than the file (`contents`, read by srt.read) can hold, and returned there: the
    file's tensors replace its parameters and persistent buffers at load, so the dense weights of
    its sparse layers are never allocated."""
    if arch is not None:
        module, given = build_arch(arch, arch_kwargs)
        if given is None:
            module = copy_module(module)
        remove_pruning(module)  # an instance pruned with torch.nn.utils.prune takes plain weights
        return module, given or spec
    if spec is None:
        raise SrtArchError(f"{path} was converted from an nn.Module instance, which a file cannot record: "
                           "pass arch= (the module, a zoo name or 'pkg.module:factory') to load it")
    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str)
            and isinstance(spec.get("kwargs") or {}, dict) and _is_plain_json(spec.get("kwargs"))):
        raise SrtHeaderError(f"{path}: the manifest's architecture record is malformed: {str(spec)[:200]} (a name, "
                             "and keyword arguments of JSON values with finite numbers of at most 64 bits)")
    if is_import_string(spec["name"]) and not trust_arch:
        raise SrtArchError(f"{path} builds its architecture by importing {spec['name']!r}, which runs code: "
                           "pass trust_arch=True (CLI: --trust-arch) if you trust the file, or arch=")
    # The keyword arguments come from the file: whatever the factory makes of them is the file's fault.
    try:
        return _build_on_meta(spec["name"], spec.get("kwargs"), path, contents), spec
    except (ArchitectureError, ArithmeticError, RuntimeError) as e:
        raise SrtArchError(f"{path}: cannot rebuild the architecture: {type(e).__name__}: {e}") from None


def _is_plain_json(value, depth=0):
    """True for JSON values whose numbers are finite floats or ints within 64 bits (json accepts
    Infinity, NaN and ints of thousands of digits, which architecture factories do not expect)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):
        return -(1 << 63) <= value < (1 << 63)
    if isinstance(value, (list, dict)):
        items = value.values() if isinstance(value, dict) else value
        return depth < 8 and all(_is_plain_json(v, depth + 1) for v in items)
    return value is None or isinstance(value, str)


class _TooLarge(Exception):
    pass


def _build_on_meta(name, kwargs, path, contents):
    """Builds the manifest's architecture on the meta device (no memory), stopping it as soon as it
    registers more tensors or elements than the file can account for: its keyword arguments come
    from the file, and one like depth=2**31 would otherwise build without bound. The element bound
    also bounds the real build that restores buffers the file does not store (_restore_unstored_buffers)."""
    max_tensors = 2 * len(contents.tensors) + 64  # sparse layers store more tensors than dense ones
    max_elements = MAX_ARCH_ELEMENTS_PER_BYTE * contents.file_size + (1 << 20)
    owner, seen = threading.get_ident(), [0, 0]

    def count(module, name, tensor):  # the hooks are global: count this thread's build only
        if tensor is not None and threading.get_ident() == owner:
            seen[0] += 1
            seen[1] += tensor.numel()
            if seen[0] > max_tensors or seen[1] > max_elements:
                raise _TooLarge

    hooks = [register_module_parameter_registration_hook(count), register_module_buffer_registration_hook(count)]
    try:
        with torch.device("meta"):
            return build_arch(name, kwargs)[0]
    except _TooLarge:
        raise SrtArchError(f"{path}: the architecture {name!r} with {kwargs} is larger than the file can hold "
                           f"(over {max_tensors} tensors or {max_elements} elements): refusing to build it") from None
    finally:
        for hook in hooks:
            hook.remove()


def _load_model(path, contents, module, spec):
    """The whole file as one SparseModel of `module` (an ensemble file: its members in one nn.ModuleList)."""
    manifest, tensors = contents.manifest, dict(contents.tensors)
    retie = _restore_ties(manifest, tensors, module, path)
    records = _layer_records(manifest, path)
    for record in records:
        if record["format"] == "dense":
            continue
        try:
            layer = _placeholder(record, _submodule(module, record["name"], path), tensors, path)
        except SrtError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as e:
            raise SrtHeaderError(f"{path}: malformed manifest record for layer {record.get('name')!r}: "
                                 f"{type(e).__name__}: {e}") from None
        replace_submodule(module, record["name"], layer)
    fusion = _refuse(manifest, module, records, path) if "fusion" in manifest else None
    if fusion is not None:
        module = fusion[0]
    try:
        # The sparse layers validate the file's index arrays here, before any kernel can run.
        module.load_state_dict(tensors, strict=True, assign=True)
    except (RuntimeError, ValueError) as e:
        raise SrtArchError(f"{path}: the architecture does not match the file's tensors: {e}") from None
    retie()
    rows = [_summary_row(record) for record in records]
    model = SparseModel(module, Summary(rows), arch_spec=spec, source=manifest.get("source")).eval()
    model.fusion = fusion[1] if fusion is not None else None
    return model


def _refuse(manifest, module, records, path):
    """(graph module, report): the rebuilt architecture fused as the saved model was (the rewrite
    depends on the architecture alone, and on which summand took each skip connection: as the file
    records it, for files written before fuse's rule that prefers a pointwise one), ready for the
    file's tensors, which hold the folded weights."""
    recorded = manifest["fusion"]
    residuals = recorded.get("fused_residuals") if isinstance(recorded, dict) else None
    try:
        fused, report = fuse(module.eval(), fold_values=False,
                             residual_layers={str(n) for n in residuals} if isinstance(residuals, list) else None)
    except FusionError as e:
        raise SrtArchError(f"{path}: the file holds a fused model, but the architecture cannot be fused: {e}") from None
    relus = sorted(r["name"] for r in records if r.get("relu"))
    replayed = {k: sorted(map(str, v)) for k, v in report.to_json().items()}
    # Tensor-free rewrites (which ops run layers together) are this version's: nothing in a file
    # depends on them, and a file written before one existed, or before another took its layers, may
    # record other ones.
    if (not isinstance(recorded, dict) or relus != replayed["fused_relus"]
            or any(sorted(map(str, recorded.get(k, []))) != v for k, v in replayed.items()
                   if k not in TENSOR_FREE_REWRITES)):
        raise SrtArchError(f"{path}: the architecture does not fuse the way the file's model was fused "
                           f"(file: {str(recorded)[:500]}; architecture: {report.to_json()})")
    return fused, report


def _restore_unstored_buffers(module, spec):
    """Buffers a file does not store (non-persistent ones, like BERT's position_ids) are still on
    the meta device after loading: the constructor computes them, so take them from a real build
    (of a size _build_on_meta bounded)."""
    unstored = [name for name, buffer in module.named_buffers() if buffer.is_meta]
    if not unstored or spec is None:
        return
    built, _ = build_arch(spec["name"], spec.get("kwargs"))
    for name in unstored:
        owner, _, attr = name.rpartition(".")
        module.get_submodule(owner).register_buffer(attr, built.get_buffer(name), persistent=False)


def _layer_records(manifest, path):
    """The manifest's per-layer records, each checked to be a dict with every summary field of its type."""
    records = manifest["layers"]
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise SrtHeaderError(f"{path}: malformed manifest record {i} (not a JSON object)")
        mistyped = [field for field, check in _SUMMARY_FIELD_CHECKS.items() if not check(record.get(field))]
        if str(record.get("format")).startswith("bsr") and not _is_pair_of_ints(record.get("blocksize")):
            mistyped.append("blocksize")
        if mistyped:
            raise SrtHeaderError(f"{path}: malformed manifest record {i} (missing or mistyped: {mistyped})")
    return records


def _is_int(value):
    return type(value) is int


def _is_pair_of_ints(value):
    return isinstance(value, list) and len(value) == 2 and all(map(_is_int, value))


_SUMMARY_FIELD_CHECKS = {
    "name": lambda v: isinstance(v, str), "kind": lambda v: isinstance(v, str),
    "shape": lambda v: isinstance(v, list) and all(map(_is_int, v)),
    "density": lambda v: type(v) in (int, float) and math.isfinite(v), "format": lambda v: isinstance(v, str),
    "dense_bytes": _is_int, "sparse_bytes": _is_int, "reason": lambda v: isinstance(v, str)}


def _summary_row(record):
    fields = {k: v for k, v in record.items() if k in _SUMMARY_FIELDS}
    fields["shape"] = tuple(fields["shape"])
    if str(fields["format"]).startswith("bsr"):
        # files written before the summary kept format and blocksize apart say "bsr4x4"
        fields["format"], fields["blocksize"] = "bsr", tuple(record["blocksize"])
    return LayerSummary(**fields)


def _submodule(module, name, path):
    try:
        return module.get_submodule(name)
    except AttributeError:
        raise SrtArchError(f"{path}: layer {name!r} of the file does not exist in the architecture") from None


def _placeholder(record, module, tensors, path):
    """An empty sparse layer with the recorded geometry; load_state_dict(assign=True) fills it."""
    name, kind = record["name"], record["kind"]
    expected = nn.Linear if kind == "Linear" else nn.Conv2d
    if not (isinstance(module, expected) or (kind == "Linear" and is_transposed_linear(module))):
        raise SrtArchError(f"{path}: layer {name!r} is a sparse {kind} in the file but a "
                           f"{type(module).__name__} in the architecture")
    rows, cols = record["shape"][0], int(torch.Size(record["shape"][1:]).numel())
    dtype = getattr(torch, record["dtype"], None)
    if not isinstance(dtype, torch.dtype):
        raise SrtHeaderError(f"{path}: layer {name!r} has an unknown dtype {record['dtype']!r}")
    bh, bw = record["blocksize"] if record["sparse_format"] == "bsr" else (1, 1)
    if not (isinstance(rows, int) and isinstance(bh, int) and rows >= 0 and bh >= 1 and rows % bh == 0):
        raise SrtHeaderError(f"{path}: layer {name!r} has a malformed shape {record['shape']!r} or "
                             f"blocksize {record.get('blocksize')!r}")
    # The placeholders are as large as the manifest says: bound that by the file's own tensors
    # before allocating (a hostile manifest could otherwise ask for any amount of memory).
    crow = tensors.get(f"{name}.crow_indices")
    if crow is None or tuple(crow.shape) != (rows // bh + 1,):
        found = "no crow_indices tensor" if crow is None else f"crow_indices of shape {tuple(crow.shape)}"
        raise SrtArchError(f"{path}: layer {name!r} has {rows // bh} (block) rows in the manifest but "
                           f"{found} in the file")
    bias = torch.zeros(rows, dtype=dtype) if record["bias"] else None
    if record["sparse_format"] == "bsr":
        weight = BSR(torch.zeros(rows // bh + 1, dtype=torch.int32), torch.zeros(0, dtype=torch.int32),
                     torch.zeros(0, bh, bw, dtype=dtype), (rows, cols), (bh, bw))
    else:
        weight = CSR(torch.zeros(rows + 1, dtype=torch.int32), torch.zeros(0, dtype=torch.int32),
                     torch.zeros(0, dtype=dtype), (rows, cols))
    if kind == "Linear":
        return SparseLinear(record["in_features"], record["out_features"], weight, bias)
    return SparseConv2d(record["in_channels"], record["out_channels"], record["kernel_size"], weight, bias,
                        record["stride"], record["padding"], record["dilation"], record["groups"])
