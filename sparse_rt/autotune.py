"""Measured format choice: time each layer dense and sparse on its real input and keep the faster,
remembering the verdict on disk per layer shape, input shape, dtype, thread count and machine (CPU
model, and GPU model for CUDA layers, which are timed with CUDA events)."""

import json
import math
import os
import warnings
from pathlib import Path

import torch

from ._version import __version__
from .io.atomic import atomic_write
from .machine import cpu_model
from .timing import compare_latency, median


def default_cache_path():
    root = os.environ.get("SPARSE_RT_CACHE_DIR") or Path.home() / ".cache" / "sparse_rt"
    return Path(root) / "autotune.json"


class AutotuneCache:
    """{key: {"format", "dense_s", "sparse_s"}} in a JSON file, written atomically."""

    def __init__(self, path=None):
        self.path = Path(path) if path else default_cache_path()
        try:
            stored = json.loads(self.path.read_text())
        except FileNotFoundError:
            stored = {}
        except (OSError, ValueError) as e:
            stored = self._ignored(f"cannot be read ({type(e).__name__}: {e})")
        if not isinstance(stored, dict):
            stored = self._ignored(f"holds a JSON {type(stored).__name__}, not an object")
        # Only well-formed entries are kept; save() rewrites the file without the others.
        self.entries = {key: entry for key, entry in stored.items() if _well_formed(entry)}
        if len(self.entries) < len(stored):
            self._ignored(f"has {len(stored) - len(self.entries)} malformed entries (not "
                          '{"format": "csr" or "dense", "dense_s": seconds > 0, "sparse_s": seconds > 0})')

    def _ignored(self, problem):
        """A damaged cache is only a cold cache: warn, start empty (the next save rewrites it)."""
        warnings.warn(f"autotune cache {self.path} {problem}; ignoring it and measuring again", RuntimeWarning,
                      stacklevel=3)
        return {}

    @staticmethod
    def key(layer, x, nnz):
        """Identifies a measurement by what decides it, never by the layer's name."""
        parts = [type(layer).__name__, tuple(layer.weight.shape), nnz, tuple(x.shape), str(x.dtype),
                 getattr(layer, "stride", None), getattr(layer, "padding", None),
                 getattr(layer, "dilation", None), getattr(layer, "groups", None),
                 torch.get_num_threads(), cpu_model(), _gpu_model(x.device), __version__]
        return repr(parts)

    def save(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path, "w") as f:
            json.dump(self.entries, f, indent=0, sort_keys=True)


def _gpu_model(device):
    """The GPU a CUDA tensor is on (a measurement there depends on it), None for the CPU."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def _well_formed(entry):
    def seconds(value):
        return type(value) in (int, float) and 0 < value < math.inf
    return (isinstance(entry, dict) and entry.get("format") in ("csr", "dense")
            and seconds(entry.get("dense_s")) and seconds(entry.get("sparse_s")))


def capture_layer_inputs(model, example_inputs, names):
    """{name: first positional input} of the named submodules during one forward pass."""
    captured, handles = {}, []
    for name in names:
        def hook(module, args, name=name):
            captured.setdefault(name, args[0].detach())
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    return captured


def measure(dense_layer, sparse_layer, x, nnz, cache):
    """Returns (format of the faster, reason); consults and fills `cache`."""
    key = cache.key(dense_layer, x, nnz)
    entry = cache.entries.get(key)
    source = "cached autotune"
    if entry is None:
        with torch.inference_mode():
            samples = compare_latency({"dense": lambda: dense_layer(x), "sparse": lambda: sparse_layer(x)},
                                      warmup=0.01, min_time=0.05, min_rounds=5, cuda=x.device.type == "cuda")
        dense_s, sparse_s = median(samples["dense"]), median(samples["sparse"])
        entry = {"format": "csr" if sparse_s < dense_s else "dense", "dense_s": dense_s, "sparse_s": sparse_s}
        cache.entries[key] = entry
        source = "autotuned"
    ratio = entry["dense_s"] / entry["sparse_s"]
    return entry["format"], (f"{source}: sparse {entry['sparse_s'] * 1e3:.3f} ms vs dense "
                             f"{entry['dense_s'] * 1e3:.3f} ms ({ratio:.2f}x)")
