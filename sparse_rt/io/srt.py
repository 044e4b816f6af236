"""The .srt artifact: a safetensors file holding every tensor of a SparseModel, with a JSON
manifest in its metadata.

Manifest (``__metadata__["sparse_rt"]``, a JSON string): ``format`` ("sparse_rt.srt"),
``format_version``, ``sparse_rt_version``, ``arch`` (``{"name": zoo name or "pkg.module:factory",
"kwargs": {...}}``, or null when the model came from an nn.Module instance), ``source`` (sha256,
form and file name of the checkpoint it was converted from), ``layers`` (per Linear/Conv2d layer:
the Summary row, dtype, and for sparse layers their format and geometry), ``tensors_sha256``
(sha256 of the data section: the bytes after the header) and ``header_sha256`` (sha256 of the
tensor table and the rest of the manifest, so an edited manifest is caught too).

Loading checks sizes, header, version and both digests before any tensor is used, then maps the
tensors from the file (no copy) and assigns them to the rebuilt model.
"""

import copy
import dataclasses
import hashlib
import json
import os
import threading

import safetensors
import safetensors.torch
import torch
from torch import nn
from torch.nn.modules.module import register_module_buffer_registration_hook, register_module_parameter_registration_hook

from .. import __version__
from ..arch import ArchitectureError, build_arch, is_import_string
from ..formats import BSR, CSR
from ..model import LayerSummary, SparseModel, Summary, replace_submodule
from ..nn import SparseConv2d, SparseLinear
from .atomic import atomic_write

FORMAT = "sparse_rt.srt"
FORMAT_VERSION = 1
MANIFEST_KEY = "sparse_rt"
MAX_HEADER_BYTES = 64 << 20
MAX_TENSORS = 1_000_000
# An architecture rebuilt from a manifest may hold at most this many dense parameter elements per
# byte of the file (99.9%-sparse fp16 layers need about 170).
MAX_ARCH_ELEMENTS_PER_BYTE = 1024
_DIGESTS = ("tensors_sha256", "header_sha256")


class SrtError(Exception):
    """Base of every error raised while reading a .srt file."""


class SrtCorruptError(SrtError, ValueError):
    """The file is truncated, has trailing bytes, or its tensors cannot be read."""


class SrtHeaderError(SrtError, ValueError):
    """The header is not a sparse_rt safetensors header (too large, not JSON, no manifest, ...)."""


class SrtIntegrityError(SrtError, ValueError):
    """A sha256 recorded in the manifest does not match the file's contents."""


class SrtVersionError(SrtError, ValueError):
    """The file was written in a format version this sparse_rt cannot read."""


class SrtArchError(SrtError, ValueError):
    """The architecture cannot be rebuilt, or does not match the file's tensors."""


def _canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _header_digest(tensor_table, manifest):
    rest = {k: v for k, v in manifest.items() if k not in _DIGESTS}
    return hashlib.sha256(_canonical([tensor_table, rest]).encode()).hexdigest()


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


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
    return record


def save(model, path):
    """Writes `model` (a SparseModel) to `path` atomically (temporary file, fsync, rename)."""
    if not isinstance(model, SparseModel):
        raise TypeError(f"save expects a SparseModel, got {type(model).__name__}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sparse_rt_version": __version__,
        "arch": model.arch_spec,
        "source": model.source,
        "layers": [_layer_record(row, model.module.get_submodule(row.name)) for row in model.layers],
    }
    blob = safetensors.torch.save(tensors, metadata={MANIFEST_KEY: "{}"})
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    data = memoryview(blob)[8 + n:]
    header.pop("__metadata__", None)
    manifest["tensors_sha256"] = hashlib.sha256(data).hexdigest()
    manifest["header_sha256"] = _header_digest(header, manifest)
    header["__metadata__"] = {MANIFEST_KEY: _canonical(manifest)}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # safetensors pads its header to 8 bytes
    with atomic_write(path) as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        f.write(data)


def read_manifest(path):
    """Checks `path` (sizes, header, format version, both sha256) and returns its manifest."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such .srt file: {path}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size < 8:
            raise SrtCorruptError(f"{path}: {size} bytes, too short for a .srt file (truncated?)")
        n = int.from_bytes(f.read(8), "little")
        if n > MAX_HEADER_BYTES:
            raise SrtHeaderError(f"{path}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit; "
                                 "not a .srt file, or a corrupt one")
        if 8 + n > size:
            raise SrtCorruptError(f"{path}: truncated: the header needs {n} bytes, the file has "
                                  f"{size - 8} after the length field")
        header, manifest = _parse_header(f.read(n), path)
        data_len = size - 8 - n
        end = max((t["data_offsets"][1] for t in header.values()), default=0)
        if end != data_len:
            problem = "truncated" if data_len < end else "has trailing bytes"
            raise SrtCorruptError(f"{path}: {problem}: the tensors need {end} bytes of data, "
                                  f"the file holds {data_len}")
        _check_version(manifest, path)
        digest = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if manifest.get("header_sha256") != _header_digest(header, manifest):
        raise SrtIntegrityError(f"{path}: the manifest or tensor table was altered after saving "
                                "(header sha256 mismatch)")
    if manifest.get("tensors_sha256") != digest.hexdigest():
        raise SrtIntegrityError(f"{path}: tensor data sha256 {digest.hexdigest()[:16]}... differs from the "
                                f"recorded {str(manifest.get('tensors_sha256'))[:16]}...: the file is corrupt")
    # The digests prove the file is as written, not that its writer was sparse_rt: check the types
    # of the fields every reader relies on.
    for key, types in (("source", (dict, type(None))), ("arch", (dict, type(None))), ("layers", list)):
        if not isinstance(manifest.get(key), types):
            raise SrtHeaderError(f"{path}: the manifest's {key!r} field is missing or has the wrong type")
    return manifest


def _parse_header(raw, path):
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SrtHeaderError(f"{path}: header is not valid JSON ({e}); not a .srt file, or a corrupt one") from None
    if not isinstance(header, dict):
        raise SrtHeaderError(f"{path}: header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or MANIFEST_KEY not in meta:
        raise SrtHeaderError(f"{path}: no sparse_rt manifest in the safetensors metadata: a plain "
                             "safetensors file? Convert a checkpoint with `sparse-rt convert`")
    if len(header) > MAX_TENSORS:
        raise SrtHeaderError(f"{path}: {len(header)} tensors exceed the limit of {MAX_TENSORS}")
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise SrtHeaderError(f"{path}: tensor {name!r} has a malformed header entry: {entry!r}")
    try:
        manifest = json.loads(meta[MANIFEST_KEY])
    except (TypeError, json.JSONDecodeError) as e:
        raise SrtHeaderError(f"{path}: the sparse_rt manifest is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SrtHeaderError(f"{path}: the manifest does not describe a {FORMAT} file")
    return header, manifest


def _check_version(manifest, path):
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise SrtVersionError(
            f"{path}: format version {version!r} (written by sparse_rt "
            f"{manifest.get('sparse_rt_version', '?')}); this sparse_rt {__version__} reads version "
            f"{FORMAT_VERSION} only" + ("; upgrade sparse_rt" if isinstance(version, int) and version > FORMAT_VERSION else ""))


def _build(manifest, arch, arch_kwargs, trust_arch, path):
    spec = manifest.get("arch")
    if arch is not None:
        module, given = build_arch(arch, arch_kwargs)
        return module, given or spec
    if spec is None:
        raise SrtArchError(f"{path} was converted from an nn.Module instance, which a file cannot record: "
                           "pass arch= (the module, a zoo name or 'pkg.module:factory') to load it")
    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str)
            and isinstance(spec.get("kwargs") or {}, dict)):
        raise SrtHeaderError(f"{path}: the manifest's architecture record is malformed: {spec!r}")
    if is_import_string(spec["name"]) and not trust_arch:
        raise SrtArchError(f"{path} builds its architecture by importing {spec['name']!r}, which runs code: "
                           "pass trust_arch=True (CLI: --trust-arch) if you trust the file, or arch=")
    try:
        _check_arch_size(spec["name"], spec.get("kwargs"), path)
        return build_arch(spec["name"], spec.get("kwargs"))
    except ArchitectureError as e:
        raise SrtArchError(f"{path}: cannot rebuild the architecture: {e}") from None


class _TooLarge(Exception):
    pass


def _check_arch_size(name, kwargs, path):
    """Builds the manifest's architecture on the meta device (no memory), stopping it as soon as it
    registers more tensors or elements than the file can account for: its keyword arguments come
    from the file, and one like depth=2**31 would otherwise allocate without bound."""
    with safetensors.safe_open(path, "pt") as f:
        max_tensors = 2 * len(f.keys()) + 64  # sparse layers store more tensors than dense ones
    max_elements = MAX_ARCH_ELEMENTS_PER_BYTE * os.path.getsize(path) + (1 << 20)
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
            build_arch(name, kwargs)
    except _TooLarge:
        raise SrtArchError(f"{path}: the architecture {name!r} with {kwargs} is larger than the file can hold "
                           f"(over {max_tensors} tensors or {max_elements} elements): refusing to build it") from None
    finally:
        for hook in hooks:
            hook.remove()


def _placeholder(record, module, tensors, path):
    """An empty sparse layer with the recorded geometry; load_state_dict(assign=True) fills it."""
    name, kind = record["name"], record["kind"]
    expected = nn.Linear if kind == "Linear" else nn.Conv2d
    if not isinstance(module, expected):
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


def load(path, arch=None, *, arch_kwargs=None, trust_arch=False):
    """Loads a .srt file into a SparseModel (a SparseEnsemble when the file holds an ensemble).

    The architecture is rebuilt from the manifest (a zoo name; an import string only with
    `trust_arch=True`, since importing runs code), or from `arch` (an nn.Module, a zoo name or
    "pkg.module:factory", with `arch_kwargs`), which files converted from a module instance need.
    Tensors stay mapped from the file. Raises an SrtError subclass for a bad file.
    """
    path = os.fspath(path)
    manifest = read_manifest(path)
    if (manifest.get("source") or {}).get("ensemble"):
        from ..ensemble.srt import load_ensemble  # the ensemble package builds on this module

        return load_ensemble(path, arch, arch_kwargs=arch_kwargs, trust_arch=trust_arch)
    return load_model(path, manifest, arch, arch_kwargs, trust_arch)


def load_model(path, manifest, arch, arch_kwargs, trust_arch):
    """The whole file as one SparseModel (an ensemble file: its members in one nn.ModuleList)."""
    try:
        tensors = safetensors.torch.load_file(path)
    except (safetensors.SafetensorError, ValueError, RuntimeError) as e:
        raise SrtCorruptError(f"{path}: cannot read the tensors: {e}") from None
    module, spec = _build(manifest, arch, arch_kwargs, trust_arch, path)
    records = _layer_records(manifest, path)
    if isinstance(arch, nn.Module):
        module = copy.deepcopy(module)  # the caller's module stays as it was
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
    try:
        # The sparse layers validate the file's index arrays here, before any kernel can run.
        module.load_state_dict(tensors, strict=True, assign=True)
    except (RuntimeError, ValueError) as e:
        raise SrtArchError(f"{path}: the architecture does not match the file's tensors: {e}") from None
    rows = [LayerSummary(**{k: tuple(v) if k == "shape" else v for k, v in r.items() if k in _SUMMARY_FIELDS})
            for r in records]
    model = SparseModel(module, Summary(rows), arch_spec=spec, source=manifest.get("source"))
    return model.eval()


_SUMMARY_FIELDS = {f.name for f in dataclasses.fields(LayerSummary)}


def _layer_records(manifest, path):
    """The manifest's per-layer records, each checked to be a dict with every summary field."""
    records = manifest["layers"]
    for i, record in enumerate(records):
        missing = _SUMMARY_FIELDS - set(record) if isinstance(record, dict) else _SUMMARY_FIELDS
        if missing or not isinstance(record["name"], str) or not isinstance(record["shape"], list):
            raise SrtHeaderError(f"{path}: malformed manifest record {i} (missing or mistyped: "
                                 f"{sorted(missing) or ['name', 'shape']})")
    return records


def _submodule(module, name, path):
    try:
        return module.get_submodule(name)
    except AttributeError:
        raise SrtArchError(f"{path}: layer {name!r} of the file does not exist in the architecture") from None
