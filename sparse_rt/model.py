"""SparseModel and sparsify(): a pruned nn.Module with its sparse layers swapped for ours."""

import os
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .autotune import AutotuneCache, capture_layer_inputs, measure
from .capture import Captures
from .fusion import FusionReport, SplitBatch, fuse
from .nn import SparseConv2d, SparseLinear
from .nn._sparse_weight import SparseWeightModule, check_keys_before_loading
from .nn.conv import explicit_padding
from .nn.surgery import (
    CONVERTIBLE,
    as_standard_layer,
    convertible_layers,
    copy_module,
    layer_kind,
    remove_pruning,
    replace_submodule,
    unconverted_linear_likes,
)
from .plan import FormatSpec, LayerPlan, format_label, plan_layer, regime


@dataclass(frozen=True)
class LayerSummary:
    name: str
    kind: str
    shape: tuple
    density: float
    format: str  # "csr" | "bsr" | "dense"
    dense_bytes: int
    sparse_bytes: int
    reason: str
    blocksize: tuple = None  # (rows, cols) of a BSR layer's blocks

    @property
    def label(self):
        """The format as tables show it: 'csr', 'dense' or 'bsrRxC'."""
        return format_label(self.format, self.blocksize)


class Summary(list):
    """Per-layer rows (LayerSummary); str() renders a table with totals."""

    def totals(self):
        return {
            "layers": len(self),
            "sparse_layers": sum(r.format != "dense" for r in self),
            "dense_bytes": sum(r.dense_bytes for r in self),
            "sparse_bytes": sum(r.sparse_bytes for r in self),
        }

    def __str__(self):
        header = ("layer", "kind", "shape", "density", "format", "dense KiB", "sparse KiB")
        rows = [(r.name, r.kind, "x".join(map(str, r.shape)), f"{r.density:.3f}", r.label,
                 f"{r.dense_bytes / 1024:.1f}", f"{r.sparse_bytes / 1024:.1f}") for r in self]
        t = self.totals()
        ratio = t["dense_bytes"] / t["sparse_bytes"] if t["sparse_bytes"] else float("nan")
        rows.append((f"total ({t['sparse_layers']}/{t['layers']} sparse)", "", "", "", "",
                     f"{t['dense_bytes'] / 1024:.1f}", f"{t['sparse_bytes'] / 1024:.1f} ({ratio:.2f}x smaller)"))
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
        line = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
        rule = "-" * len(line(header))
        notes = [f"warning: {r.name} is pruned entirely (density 0): it outputs its bias alone"
                 for r in self.fully_pruned()]
        return "\n".join([line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1]), *notes])

    def fully_pruned(self):
        """Rows of layers with a weight and no nonzero in it."""
        return [r for r in self if r.density == 0.0 and r.shape and 0 not in r.shape]


def _bytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class SparseModel(nn.Module):
    """A converted model: `module` is a copy of the user's model whose sparse Linear/Conv2d layers
    run on sparse_rt's kernels. Call it like the original."""

    def __init__(self, module: nn.Module, layers: Sequence[LayerSummary], *, arch_spec: Optional[dict] = None,
                 source: Optional[dict] = None) -> None:
        super().__init__()
        self.module = module
        self.training = module.training  # the wrapper's own flag only: submodules keep their modes
        self._summary = Summary(layers)
        # What save() records so that load() can rebuild the model: the architecture spec
        # ({"name": zoo name or "pkg.module:factory", "kwargs": {...}}; None for a module instance)
        # and the checkpoint it came from (sha256, form, file name, ingest notes).
        self.arch_spec = arch_spec
        self.source = dict(source or {})
        self.fusion: Optional[FusionReport] = None  # set by fuse()

    def forward(self, *args, **kwargs):
        captures = self.__dict__.get("_captures")
        if captures is not None and not kwargs:
            if captures.module is not self.module:
                captures.clear(self.module)
            return captures(self._eager_forward, args)
        return self._eager_forward(*args, **kwargs)

    def _eager_forward(self, *args, **kwargs):
        # Under torch.compile the graph module is traced whole (SplitBatch is Python around it).
        if self.fusion is not None and len(args) == 1 and not kwargs and not torch.compiler.is_compiling():
            return self._split_batch()(args[0])
        return self.module(*args, **kwargs)

    def capture(self, enabled: bool = True) -> "SparseModel":
        """Replays the forward's ops from C++, without Python between them (sparse_rt.capture): per
        input signature (the positional tensors' shapes, strides, dtypes and devices, the thread count,
        trusted packings), the first call runs eagerly, the second records the ops it calls, later
        calls replay them, with the same outputs. Only without gradients (inference_mode or no_grad)
        and for plain tensor inputs; forwards whose Python reads tensor values run eagerly. In-place
        changes to the weights are seen (the next call records again), as are fuse(), store_weights(),
        load_state_dict(), .to() and a new `module`; forward hooks inside the model and layers or
        tensors swapped in by hand are not: call capture() again after such changes. Returns the model;
        capture(False) turns replays off. `capture_report()` says what each signature does."""
        self.__dict__["_captures"] = Captures(self.module) if enabled else None
        return self

    def capture_report(self) -> dict:
        """{input signature: "replays N ops", or why it runs eagerly}; empty without capture()."""
        captures = self.__dict__.get("_captures")
        return {} if captures is None else captures.report()

    def _drop_captures(self):
        captures = self.__dict__.get("_captures")
        if captures is not None:
            captures.clear(self.module)

    def _apply(self, fn, recurse=True):
        self._drop_captures()  # .to(), .float(), ...: new tensors
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        self._drop_captures()
        return super().train(mode)

    def _split_batch(self):
        """The fused module's SplitBatch, made again when `module` was replaced."""
        split = self.__dict__.get("_split")
        if split is None or split.graph_module is not self.module:
            split = SplitBatch(self.module)
            self.__dict__["_split"] = split  # not a submodule: it holds the module's own layers
        return split

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_split", None)  # made again on the first call
        return state

    def load_state_dict(self, state_dict, strict=True, assign=False):
        check_keys_before_loading(self, state_dict, strict)  # a failed strict load changes nothing
        self._drop_captures()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def fuse(self) -> FusionReport:
        """Fuses the dense work around the sparse layers into them, in place: BatchNorms folded into
        the convolutions before them, ReLUs into the sparse kernels' epilogues (sparse_rt.fusion).
        The model must be in eval mode and traceable by torch.fx; `self.module` becomes a
        torch.fx.GraphModule with the same layers under the same names, less the folded BatchNorms.
        Returns what was fused (also kept in `self.fusion` and recorded by save())."""
        module, report = fuse(self.module)
        self.module = module  # a new module: the captures record again
        self.fusion = report if self.fusion is None else self.fusion + report  # a second call finds what the first left
        return report

    def store_weights(self, dtype: torch.dtype) -> "SparseModel":
        """Keeps every sparse layer's nonzero values in `dtype` (torch.bfloat16 or torch.float16;
        torch.float32 widens them back), in place, and returns the model: half the bytes of each value,
        while fp32 inputs still compute in fp32 on the CPU. Each sparse layer's output moves by at most
        the rounding of its weights (sparse_rt.nn.WEIGHT_STORAGE_ERROR); the dense layers, biases and
        activations are untouched. Call it after fuse(), so that BatchNorm folds into fp32 values. An
        explicit opt-in: outputs differ from the fp32 weights' (about 1e-3 relative with bf16)."""
        for name, layer in self.named_modules():
            if isinstance(layer, SparseWeightModule):
                try:
                    layer.store_weights(dtype)
                except ValueError as e:
                    raise ValueError(f"layer '{name}': {e}") from None
        self._drop_captures()
        return self

    def summary(self) -> Summary:
        """Per-layer name, kind, shape, density, format, dense bytes, sparse bytes (a Summary:
        a list of LayerSummary whose str() is a table with totals)."""
        return self._summary

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], arch: Union[nn.Module, str], masks=None,
                        mask_form: str = "auto", **options) -> "SparseModel":
        """Reads a training checkpoint (any form of sparse_rt.ingest) into `arch` and sparsifies it.

        `arch` is an nn.Module, a zoo name or "pkg.module:factory"; see
        sparse_rt.convert.from_checkpoint for the options (arch_kwargs, rename, min_sparsity,
        format, dtype, unsafe, cs_s0, progress)."""
        from .convert import from_checkpoint  # facade: the conversion layer builds on this one

        return from_checkpoint(path, arch, masks=masks, mask_form=mask_form, **options)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes a .srt file (safetensors + JSON manifest) atomically; read it with sparse_rt.load."""
        from .serialize import save  # facade: the artifact layer builds on this one

        save(self, path)

    def export_onnx(self, path: Union[str, os.PathLike], example_inputs, flavor: str = "portable",
                    opset: Optional[int] = None, *, check: bool = False, external_data: Optional[bool] = None):
        """Writes an ONNX file: flavor "portable" (standard ops, stock onnxruntime) or "sparse"
        (sparse_rt's ops; run with sparse_rt.onnx.session). See sparse_rt.onnx.export."""
        from .onnx import export  # facade: the ONNX layer builds on this one

        return export(self, path, example_inputs, flavor=flavor, opset=opset, check=check,
                      external_data=external_data)


def _masks_by_layer(masks, layer_names):
    """{parameter or layer name: mask} -> {layer name: bool mask}; unknown names are an error."""
    normalized = {}
    for key, mask in (masks or {}).items():
        name = key[: -len(".weight")] if key.endswith(".weight") else key
        if name not in layer_names:
            known = ", ".join(sorted(layer_names)[:8])
            raise ValueError(f"masks: '{key}' names no Linear/Conv2d layer of the model "
                             f"(layers: {known}{', ...' if len(layer_names) > 8 else ''})")
        normalized[name] = torch.as_tensor(mask).bool()
    return normalized


def _convert(name, layer, mask, plan):
    if plan.format == "dense":
        return layer
    if isinstance(layer, nn.Linear):
        return SparseLinear.from_dense(layer, mask, plan.format, plan.blocksize)
    return SparseConv2d.from_dense(layer, mask)


def sparsify(module: nn.Module, masks: Optional[Mapping[str, torch.Tensor]] = None, *, min_sparsity: float = 0.5,
             format: str = "auto", example_inputs: Optional[Sequence] = None, autotune: bool = False,
             autotune_cache: Optional[Union[str, os.PathLike]] = None,
             progress: Optional[Callable] = None, exclude: Sequence[str] = (),
             device: Union[str, torch.device, None] = None) -> SparseModel:
    """Converts a pruned model into a SparseModel; `module` itself is not changed. The result is
    in the mode `module` is in: call .eval() on either before timing or deploying it (dropout).

    Every nn.Linear / nn.Conv2d whose sparsity reaches `min_sparsity` is considered; with
    format='auto' the planner's cost model (sparse_rt.plan) keeps a layer dense where the sparse
    kernel is predicted to be slower, and 'csr' / 'bsr:RxC' force the format. `masks` maps parameter
    names ("fc.weight") or layer names ("fc") to masks shaped like the weight; without a mask, the
    weight's zeros are the mask. Masked layers that stay dense get the mask applied to their weight,
    so the result always equals the masked model.

    `example_inputs` (a tuple of arguments for one forward pass) tells the planner each layer's
    input shape; with `autotune=True` each candidate layer is also timed dense and sparse on that
    input and the faster is kept, the measurements cached in `autotune_cache` (a path; default
    ~/.cache/sparse_rt/autotune.json or $SPARSE_RT_CACHE_DIR). `progress`, if given, wraps the list
    of (name, layer) pairs as it is converted (e.g. `tqdm.tqdm`). `exclude` names layers to keep
    dense whatever their sparsity (their masks still apply). Every choice and its reason shows in
    summary(); a layer pruned entirely (density 0, its output the bias alone) is also warned about.

    `device` is where the model will run, for format='auto': CUDA layers are planned with the GPU
    calibration (an H200 against cuBLAS and cuDNN, see sparse_rt.plan), all others with the CPU
    calibration. Default: each layer's own device, so convert on the CPU with device="cuda" for a
    model that will run on a GPU. Autotune times each layer where it is, so it refuses a `device`
    of another type than the layers'.

    A model pruned with torch.nn.utils.prune may keep its masks in place (weight_orig,
    weight_mask and a hook): they are baked into the copy, which holds plain weights.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"sparsify expects an nn.Module, got {type(module).__name__}")
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity}")
    if autotune and example_inputs is None:
        raise ValueError("sparsify(autotune=True) needs example_inputs to time the layers on")
    FormatSpec.parse(format)
    if device is not None:
        device = torch.device(device)
    model = copy_module(module)
    # Masks left in place by torch.nn.utils.prune are baked in, in every layer (converted or kept
    # dense), so the result holds plain weights; a mask given here takes precedence.
    pruned = remove_pruning(model)
    candidates = convertible_layers(model)
    masks = {**pruned, **_masks_by_layer(masks, candidates)}
    unknown = sorted(set(exclude) - set(candidates))
    if isinstance(exclude, str) or unknown:
        raise ValueError(f"exclude must be a list of Linear/Conv2d layer names of the model; "
                         f"{exclude if isinstance(exclude, str) else unknown} are not")
    if autotune and device is not None:
        elsewhere = sorted(n for n, layer in candidates.items() if layer.weight.device.type != device.type)
        if elsewhere:
            raise ValueError(f"sparsify(autotune=True, device={str(device)!r}): autotune times each layer where it "
                             f"is, and {elsewhere[0]} is on {candidates[elsewhere[0]].weight.device}; move the "
                             "model there first")
    inputs = {} if example_inputs is None else capture_layer_inputs(model, tuple(example_inputs), candidates)
    cache = AutotuneCache(autotune_cache) if autotune else None
    rows = []
    items = list(candidates.items())
    for name, original in progress(items) if progress else items:
        own_mask = masks.get(name)  # in the layer's own weight layout
        if own_mask is not None and tuple(own_mask.shape) != tuple(original.weight.shape):
            raise ValueError(f"masks['{name}']: shape {tuple(own_mask.shape)} differs from the weight "
                             f"shape {tuple(original.weight.shape)}")
        own_mask = own_mask.to(original.weight.device) if own_mask is not None else None
        layer = as_standard_layer(original)  # nn.Linear / nn.Conv2d: GPT-2's Conv1D transposed
        mask = own_mask if own_mask is None or layer is original else own_mask.t()
        weight = layer.weight.detach()
        effective = mask if mask is not None else weight != 0
        sparsity = 1.0 - effective.float().mean().item() if weight.numel() else 0.0
        kind = CONVERTIBLE[type(layer)]
        x = inputs.get(name)
        batch = x.numel() // x.shape[-1] if kind == "Linear" and x is not None and x.dim() else 1
        out_pixels = None
        if kind == "Conv2d" and x is not None and x.dim() == 4 and x.shape[0]:
            with torch.no_grad():
                out_pixels = layer(x[:1]).shape[-2:].numel()
        layer_regime = regime(kind, batch, getattr(layer, "kernel_size", None), getattr(layer, "stride", None),
                              getattr(layer, "padding", None), out_pixels)
        plan = plan_layer(kind, (weight.shape[0], weight[0].numel()), sparsity,
                          min_sparsity=min_sparsity, format=format, layer_regime=layer_regime,
                          device=device if device is not None else weight.device)
        if name in exclude:
            plan = LayerPlan("dense", None, "excluded (sparsify(exclude=...))")
        if kind == "Conv2d" and plan.format != "dense":
            try:
                explicit_padding(layer)
            except ValueError as e:
                plan = LayerPlan("dense", None, str(e))
        tunable = (cache is not None and x is not None and FormatSpec.parse(format).kind == "auto"
                   and name not in exclude)
        if tunable and sparsity >= min_sparsity and (kind == "Linear" or plan.format != "dense" or
                                                     "cost model" in plan.reason):
            candidate = _convert(name, layer, mask, LayerPlan("csr", None, ""))
            chosen, reason = measure(layer, candidate, x, int(effective.sum()), cache)
            plan = LayerPlan(chosen, None, reason)
        new = _convert(name, layer, mask, plan)
        if new is layer:  # kept dense: the original layer, its mask applied
            new = original
            if own_mask is not None:
                with torch.no_grad():
                    original.weight.mul_(own_mask)
        replace_submodule(model, name, new)
        dense_bytes = _bytes(original.weight, original.bias)
        sparse_bytes = (dense_bytes if new is original else
                        _bytes(new.crow_indices, new.col_indices, new.values, new.bias))
        rows.append(LayerSummary(name, kind, tuple(weight.shape), 1.0 - sparsity, plan.format,
                                 dense_bytes, sparse_bytes, plan.reason, plan.blocksize))
    for name, (layer, why) in unconverted_linear_likes(model).items():
        weight, size = layer.weight.detach(), _bytes(layer.weight, layer.bias)
        density = (weight != 0).float().mean().item() if weight.numel() else 1.0
        rows.append(LayerSummary(name, layer_kind(layer), tuple(weight.shape), density, "dense", size, size, why))
    if cache is not None:
        cache.save()
    _check_blocks_apply(format, rows)
    _warn_fully_pruned(rows)
    return SparseModel(model, rows)


def _warn_fully_pruned(rows):
    """Global magnitude pruning can zero a whole layer (common in randomly initialised models):
    the model then still runs, its output the bias alone, so say so."""
    empty = [r.name for r in Summary(rows).fully_pruned()]
    if empty:
        more = f" (and {len(empty) - 8} more)" if len(empty) > 8 else ""
        warnings.warn(f"sparsify: {len(empty)} layer(s) are pruned entirely (density 0; each outputs its bias "
                      f"alone): {', '.join(empty[:8])}{more}", stacklevel=3)


def _check_blocks_apply(format, rows):
    """A forced BSR format that no layer can take is refused rather than silently run as CSR
    (where some layers take it, the others fall back to CSR with the reason in summary())."""
    fallbacks = [r for r in rows if r.format == "csr"]
    if FormatSpec.parse(format).kind == "bsr" and fallbacks and not any(r.format == "bsr" for r in rows):
        reasons = "; ".join(f"{r.name}: {r.reason}" for r in fallbacks[:3])
        more = f" (and {len(fallbacks) - 3} more)" if len(fallbacks) > 3 else ""
        raise ValueError(f"format {format!r} applies to no layer of this model: {reasons}{more}")
