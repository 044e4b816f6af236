"""Safe file loading and unwrapping of training-code checkpoint dicts.

* ``.safetensors`` files are read with ``safetensors.torch.load_file`` (tensors only,
  no code can run).
* Everything else goes through ``torch.load(path, weights_only=True,
  map_location="cpu")``.  NumPy scalars and dtypes (``best_acc1`` and friends that
  training scripts save beside the weights) are allow-listed, as the torch
  documentation recommends; nothing else is.  If the restricted unpickler still
  refuses the file we raise :class:`UnsafeCheckpointError` naming the offending
  globals and explaining ``unsafe=True`` / ``--unsafe``.  ``unsafe=True`` calls
  ``torch.load(weights_only=False)`` and emits :class:`UnsafeLoadWarning`.

Wrapper dicts.  Training scripts save ``{"epoch": ..., "optimizer": ..., <key>: state_dict}``.
The wrapper keys we look for, in this order, and who writes them:

=====================  ==================================================================
``state_dict``         FreeTickets ``main_DST.py`` / ``main_EDST.py`` / ``ImageNet/main.py``,
                       Sup-tickets ``CIFAR/main_suptickets.py``, rigl-torch
                       ``train_imagenet_rigl.py`` (the pytorch/examples ImageNet layout)
``model_state_dict``   open_lth ``training/checkpointing.py`` (``checkpoint.pth``),
                       shrinkbench ``experiment/train.py`` (``checkpoints/checkpoint-N.pt``)
``model``              rigl-reproducibility ``sparselearning/utils/train_helper.py``
                       (``epoch_N.pth`` / ``best_model.pth``)
``net``                common CIFAR training scripts (``{"net": ..., "acc": ..., "epoch": ...}``)
``network``            same idea, other scripts
=====================  ==================================================================

A whole pickled ``nn.Module`` (only loadable with ``unsafe=True``) is reduced to its
``state_dict()``.
"""

from __future__ import annotations

import collections
import hashlib
import os
import pickle
import stat
import warnings
import zipfile
from typing import Any, Iterable, Mapping

import torch

from .errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnknownLayoutError,
    UnsafeCheckpointError,
    UnsupportedTensorError,
)

__all__ = [
    "UnsafeLoadWarning",
    "load_file",
    "require_regular_file",
    "sha256_of_files",
    "find_state_dict",
    "check_tensor",
    "check_loaded_tensors",
    "require_real_floating",
    "key_families",
    "WRAPPER_KEYS",
]

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")


class UnsafeLoadWarning(UserWarning):
    """Emitted when a checkpoint is unpickled with ``weights_only=False``."""


def _numpy_safe_globals() -> list:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is optional
        return []
    out: list = [np.dtype]
    core = getattr(np, "_core", None)
    mod = getattr(core, "multiarray", None) if core is not None else None
    if mod is None:  # numpy < 2
        mod = getattr(getattr(np, "core", None), "multiarray", None)
    if mod is not None and hasattr(mod, "scalar"):
        out.append(mod.scalar)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType",
                     "BoolDType", "UInt8DType", "Int8DType", "Int16DType"):
            if hasattr(dtypes, name):
                out.append(getattr(dtypes, name))
    return out


def _unsafe_globals(path: str) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        return []


def require_regular_file(path: str, what: str) -> None:
    """Refuse a path that is not a regular file, by its ``stat`` alone: opening a FIFO
    blocks until a writer comes, and a device or socket is no checkpoint either."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{what} not found: {path}") from None
    if stat.S_ISDIR(mode):
        raise CheckpointNotFoundError(f"{what} is a directory, expected a file: {path}")
    if not stat.S_ISREG(mode):
        raise CheckpointNotFoundError(f"{what} is a {_file_kind(mode)}, not a regular file: {path}")


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"))
    return next((name for is_kind, name in kinds if is_kind(mode)), "special file")


def load_file(path: str, *, unsafe: bool = False, what: str = "checkpoint") -> Any:
    """Load one file safely (see module docstring) and :func:`check_loaded_tensors` on what it holds.
    ``what`` is used in messages."""
    loaded = _load(path, unsafe, what)
    check_loaded_tensors(loaded, path)
    return loaded


# torch.save stores zip members uncompressed; a re-zipped checkpoint may deflate them.  A pruned
# checkpoint that is 99% zeros deflates about 100:1; a zip bomb is runs of one byte at deflate's ~1000:1.
MAX_EXPANSION = 256


def _check_zip_sizes(path: str, what: str) -> None:
    """Refuse a zip whose members declare more than :data:`MAX_EXPANSION` bytes per byte of the
    file, before torch.load inflates them (reads the central directory only)."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, ValueError):  # not a zip (a legacy torch.save file) or damaged: torch says which
        return
    file_size = os.stat(path).st_size
    if declared > MAX_EXPANSION * max(file_size, 1):
        raise CorruptCheckpointError(
            f"refusing {what} {path}: its zip members declare {declared} bytes uncompressed from a "
            f"{file_size}-byte file (more than {MAX_EXPANSION}x): a zip bomb, or damaged")


def _legacy_storage_bytes(path: str) -> int | None:
    """Bytes of storage a legacy (non-zip) torch.save file declares, read without allocating it:
    its pickles go through torch's weights-only unpickler with every storage made on the meta
    device. None where the file is not one, or its pickles fail (torch.load then says why)."""
    from torch import _weights_only_unpickler as weights_only

    declared = {}

    def meta_storage(saved_id):
        typename, storage_type, root_key, _location, numel, _view = saved_id
        if typename != "storage":
            raise pickle.UnpicklingError(f"persistent id {typename!r}")
        nbytes = int(numel) * torch._utils._element_size(storage_type.dtype)
        declared[root_key] = nbytes
        return torch.storage.TypedStorage(wrap_storage=torch.UntypedStorage(nbytes, device="meta"),
                                          dtype=storage_type.dtype, _internal=True)

    try:
        with open(path, "rb") as f, torch.serialization.safe_globals(_numpy_safe_globals()):
            if zipfile.is_zipfile(f):
                return None
            f.seek(0)
            for _ in range(3):  # magic number, protocol version, system info
                weights_only.load(f)
            unpickler = weights_only.Unpickler(f)
            unpickler.persistent_load = meta_storage
            unpickler.load()
    except Exception:  # noqa: BLE001  (damaged or unsafe: torch.load reports it)
        return None
    return sum(declared.values())


def _check_legacy_sizes(path: str, what: str) -> None:
    """Refuse a legacy torch.save file whose storages (stored raw, after its pickles) declare more
    bytes than the file holds, before torch.load allocates them."""
    declared, file_size = _legacy_storage_bytes(path), os.stat(path).st_size
    if declared is not None and declared > file_size:
        raise CorruptCheckpointError(
            f"refusing {what} {path}: its storages declare {declared} bytes but the file holds {file_size}: "
            "truncated, or forged")


def _load(path: str, unsafe: bool, what: str) -> Any:
    require_regular_file(path, what)
    if not path.endswith(".safetensors"):
        _check_zip_sizes(path, what)
        _check_legacy_sizes(path, what)
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file as st_load

        try:
            return dict(st_load(path, device="cpu"))
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise CorruptCheckpointError(f"cannot read {what} {path} as safetensors: {exc}") from None
    if unsafe:
        warnings.warn(
            f"loading {path} with weights_only=False (unsafe=True): unpickling can run "
            "arbitrary code; only do this for files you trust",
            UnsafeLoadWarning,
            stacklevel=3,
        )
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (zip/legacy issues), ...
        bad = _unsafe_globals(path)  # zip files only
        refused_global = _refused_global(exc)
        if not bad and refused_global is None:  # a bad opcode, a broken zip, EOF: the file is damaged
            unpickler_error = str(exc).partition("WeightsUnpickler error:")[2].strip()
            reason = (unpickler_error or str(exc) or "-").splitlines()[0]
            raise CorruptCheckpointError(
                f"cannot read {what} {path}: truncated, damaged, or not a torch.save file "
                f"({type(exc).__name__}: {reason})") from None
        if bad:
            detail = "it pickles Python objects that are not tensors: " + ", ".join(bad[:10])
            if len(bad) > 10:
                detail += f" (+{len(bad) - 10} more)"
        else:
            detail = f"it pickles Python objects that are not tensors ({refused_global})"
        hint = ""
        if "collections.defaultdict" in bad:
            hint = (" (a torch.ao.pruning sparsifier.state_dict() holds a defaultdict: save "
                    "{fqn: s['mask'] for fqn, s in sparsifier.state.items()} instead)")
        raise UnsafeCheckpointError(
            f"refusing to unpickle {what} {path} with torch.load(weights_only=True): {detail}{hint}.\n"
            "If you trust where this file came from, pass unsafe=True "
            "(CLI: --unsafe) to load it with weights_only=False — that runs its pickle code. "
            "Better: re-save it as a plain dict of tensors or as .safetensors."
        ) from exc


def check_tensor(key: str, tensor: torch.Tensor, source: str) -> None:
    """Refuse a tensor no reader can compute with: every tensor a form reads passes here
    (:func:`check_loaded_tensors` on the loaded file, :func:`.masks.as_bool_mask` on masks)."""
    problem = None
    if tensor.layout != torch.strided:
        problem = f"has layout {tensor.layout} (sparse); save it dense (.to_dense())"
    elif tensor.is_meta:
        problem = "is on the meta device: it has no values"
    elif tensor.is_quantized:
        problem = f"is quantized ({tensor.dtype}); save the float tensor (.dequantize())"
    elif tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():
        # an expanded (stride-0) view: a file of a few bytes whose every later op allocates numel
        problem = (f"holds {tensor.numel()} elements but its storage only {tensor.untyped_storage().nbytes()} "
                   "bytes (an expanded view); save it with .contiguous()")
    if problem:
        raise UnsupportedTensorError(f"{source}: tensor {key!r} {problem}")


def check_loaded_tensors(obj: Any, source: str) -> None:
    """:func:`check_tensor` on every tensor in a loaded object (dicts, lists, tuples at any depth),
    named by its key path (``pruner>backward_masks[2]``).  Iterative: a pickle can nest deeply or loop."""
    pending, seen = [("", obj)], set()
    while pending:
        path, value = pending.pop()
        if isinstance(value, torch.Tensor):
            check_tensor(path, value, source)
        elif isinstance(value, Mapping) and id(value) not in seen:
            seen.add(id(value))
            pending += [(f"{path}>{key}" if path else str(key), item) for key, item in value.items()]
        elif isinstance(value, (list, tuple)) and id(value) not in seen:
            seen.add(id(value))
            pending += [(f"{path}[{index}]", item) for index, item in enumerate(value)]


def require_real_floating(key: str, tensor: torch.Tensor, source: str, role: str) -> None:
    """Weights and scores that a form computes with must be real floating point."""
    if not tensor.is_floating_point():
        raise UnsupportedTensorError(
            f"{source}: {role} {key!r} is {tensor.dtype}; {role}s must be real floating point")


def _refused_global(exc: Exception) -> str | None:
    """The restricted unpickler's line refusing a global, if that is why it failed.  Zip files say
    "WeightsUnpickler error: Unsupported global: ...", legacy (non-zip) files "Trying to load
    unsupported GLOBAL posix.system ..."; a bad opcode or EOF mentions no global."""
    if not isinstance(exc, pickle.UnpicklingError):
        return None
    return next((line.strip() for line in str(exc).splitlines() if "global" in line.lower()), None)


def sha256_of_files(paths: Iterable[str]) -> str:
    """sha256 of the concatenated bytes of ``paths`` in the order given.

    For one file this equals ``sha256sum FILE``; for several it equals
    ``cat A B | sha256sum``.
    """
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _tensor_fraction(mapping: Mapping) -> float:
    if not mapping:
        return 0.0
    return sum(isinstance(value, torch.Tensor) for value in mapping.values()) / len(mapping)


def _describe_top(obj: Mapping) -> str:
    parts = []
    for key, value in list(obj.items())[:20]:
        if isinstance(value, torch.Tensor):
            kind = f"Tensor{tuple(value.shape)}"
        elif isinstance(value, Mapping):
            kind = f"dict[{len(value)}]"
        elif isinstance(value, (list, tuple)):
            kind = f"{type(value).__name__}[{len(value)}]"
        else:
            kind = type(value).__name__
        parts.append(f"{key!r}: {kind}")
    more = f", ... (+{len(obj) - 20})" if len(obj) > 20 else ""
    return "{" + ", ".join(parts) + more + "}"


def key_families(keys: Iterable[str], limit: int = 12) -> str:
    """Summarise keys by their last dotted component: ``*.weight (12), *.bias (8), ...``."""
    families = collections.Counter(str(key).rsplit(".", 1)[-1] for key in keys)
    items = [f"*.{family} ({count})" for family, count in families.most_common(limit)]
    if len(families) > limit:
        items.append(f"... (+{len(families) - limit} families)")
    return ", ".join(items) if items else "(no keys)"


def _module_state_dict(obj: Any) -> Any:
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    return obj


def _wrapped_state_dict(level: Mapping) -> tuple[str, Mapping] | None:
    """``(wrapper key, non-empty dict under it)`` for the first of :data:`WRAPPER_KEYS` present."""
    for wrapper_key in WRAPPER_KEYS:
        if wrapper_key in level:
            candidate = _module_state_dict(level[wrapper_key])
            if isinstance(candidate, Mapping) and len(candidate) > 0:
                return wrapper_key, candidate
    return None


def find_state_dict(obj: Any, source: str) -> tuple[dict, str | None, dict]:
    """Return ``(state_dict, wrapper_key_path, meta)``.

    ``wrapper_key_path`` is e.g. ``"state_dict"`` or ``"model>state_dict"`` (``None`` for
    a bare state dict); ``meta`` holds the scalar (int/float/str/bool) entries found
    beside the state dict (``epoch``, ``arch``, ``best_acc1``, ...).
    """
    obj = _module_state_dict(obj)
    if not isinstance(obj, Mapping):
        raise UnknownLayoutError(
            f"{source}: expected a dict (state_dict or a wrapper around one), got {type(obj).__name__}"
        )
    path: list[str] = []
    meta: dict = {}
    level: Mapping = obj
    for _ in range(3):
        for key, value in level.items():
            if isinstance(key, str) and isinstance(value, (int, float, str, bool)):
                meta.setdefault(key, value)
            elif (isinstance(key, str) and isinstance(value, torch.Tensor) and value.numel() == 1
                  and _tensor_fraction(level) < 0.5):
                meta.setdefault(key, value.item())
        wrapped = _wrapped_state_dict(level)
        if wrapped is not None and _tensor_fraction(level) < 0.5:
            path.append(wrapped[0])
            level = wrapped[1]
            continue
        break
    if _tensor_fraction(level) >= 0.5 and all(isinstance(key, str) for key in level):
        return dict(level), (">".join(path) if path else None), meta
    raise UnknownLayoutError(
        f"{source}: could not find a state_dict. Top-level entries: {_describe_top(obj)}. "
        f"Looked for a dict of tensors at the top level or under one of {list(WRAPPER_KEYS)}. "
        "Pass the state dict itself, or re-save it with torch.save(model.state_dict(), path)."
    )
