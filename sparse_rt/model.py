"""SparseModel and sparsify(): a pruned nn.Module with its sparse layers swapped for ours."""

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .nn import SparseConv2d, SparseLinear
from .nn.conv import explicit_padding
from .plan import FormatSpec, plan_layer

_CONVERTIBLE = {nn.Linear: "Linear", nn.Conv2d: "Conv2d"}


@dataclass(frozen=True)
class LayerSummary:
    name: str
    kind: str
    shape: tuple
    density: float
    format: str
    dense_bytes: int
    sparse_bytes: int
    reason: str


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
        rows = [(r.name, r.kind, "x".join(map(str, r.shape)), f"{r.density:.3f}", r.format,
                 f"{r.dense_bytes / 1024:.1f}", f"{r.sparse_bytes / 1024:.1f}") for r in self]
        t = self.totals()
        ratio = t["dense_bytes"] / t["sparse_bytes"] if t["sparse_bytes"] else float("nan")
        rows.append((f"total ({t['sparse_layers']}/{t['layers']} sparse)", "", "", "", "",
                     f"{t['dense_bytes'] / 1024:.1f}", f"{t['sparse_bytes'] / 1024:.1f} ({ratio:.2f}x smaller)"))
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
        line = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
        rule = "-" * len(line(header))
        return "\n".join([line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1])])


def _bytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class SparseModel(nn.Module):
    """A converted model: `module` is a copy of the user's model whose sparse Linear/Conv2d layers
    run on sparse_rt's kernels. Call it like the original."""

    def __init__(self, module, layers):
        super().__init__()
        self.module = module
        self.layers = Summary(layers)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def summary(self):
        """Per-layer name, kind, shape, density, format, dense bytes, sparse bytes (a Summary:
        a list of LayerSummary whose str() is a table with totals)."""
        return self.layers


def _normalize_masks(masks, layer_names):
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


def sparsify(module, masks=None, *, min_sparsity=0.5, format="auto"):
    """Converts a pruned model into a SparseModel; `module` itself is not changed.

    Every nn.Linear / nn.Conv2d whose sparsity reaches `min_sparsity` becomes a SparseLinear /
    SparseConv2d; the others stay dense. `masks` maps parameter names ("fc.weight") or layer names
    ("fc") to masks shaped like the weight; without a mask, the weight's zeros are the mask. Masked
    layers that stay dense get the mask applied to their weight, so the result always equals the
    masked model. `format` is 'auto', 'csr', 'dense' or 'bsr:RxC'.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"sparsify expects an nn.Module, got {type(module).__name__}")
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity}")
    FormatSpec.parse(format)
    model = copy.deepcopy(module)
    candidates = {n: m for n, m in model.named_modules() if type(m) in _CONVERTIBLE}
    masks = _normalize_masks(masks, candidates)
    rows = []
    for name, layer in candidates.items():
        weight = layer.weight.detach()
        mask = masks.get(name)
        if mask is not None and tuple(mask.shape) != tuple(weight.shape):
            raise ValueError(f"masks['{name}']: shape {tuple(mask.shape)} differs from the weight "
                             f"shape {tuple(weight.shape)}")
        effective = mask if mask is not None else weight != 0
        sparsity = 1.0 - effective.float().mean().item() if weight.numel() else 0.0
        kind = _CONVERTIBLE[type(layer)]
        plan = plan_layer(kind, (weight.shape[0], weight[0].numel()), sparsity,
                          min_sparsity=min_sparsity, format=format)
        if plan.format != "dense" and kind == "Conv2d":
            try:
                explicit_padding(layer)
            except ValueError as e:
                plan = type(plan)("dense", None, str(e))
        new = _convert(name, layer, mask.to(weight.device) if mask is not None else None, plan)
        if new is layer and mask is not None:
            with torch.no_grad():
                layer.weight.mul_(mask.to(weight.device))
        _replace(model, name, new)
        dense_bytes = _bytes(layer.weight, layer.bias)
        sparse_bytes = dense_bytes if new is layer else _bytes(new.crow_indices, new.col_indices, new.values, new.bias)
        rows.append(LayerSummary(name, kind, tuple(weight.shape), 1.0 - sparsity,
                                 plan.format if plan.format != "bsr" else f"bsr{plan.blocksize[0]}x{plan.blocksize[1]}",
                                 dense_bytes, sparse_bytes, plan.reason))
    return SparseModel(model, rows)


def _replace(root, qualified_name, new):
    if not qualified_name:
        raise ValueError("sparsify: the model itself is a single Linear/Conv2d; wrap it in nn.Sequential")
    parent_name, _, child = qualified_name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)
