"""Size and theoretical-speed metrics, defined as ShrinkBench defines them (JJGO/shrinkbench
metrics/size.py and metrics/flops.py):

* parameters: every parameter of the model (weights, biases, norm scales; not buffers such as
  running means), and how many of them are nonzero; compression ratio = parameters / nonzeros;
* multiply-adds per sample of the Linear and Conv2d layers only: dense = weight entries x output
  positions, nonzero = dense x the weight's nonzero fraction; theoretical speedup = dense / nonzero.

Two deliberate refinements: a Conv2d counts weight entries (out x in/groups x kh x kw), so grouped
and depthwise convolutions are not overcounted, and output positions come from a forward pass
(exact for any padding, stride and dilation); a Linear applied to [batch, tokens, features]
counts each token. Sparse layers count their logical dense weight and its stored nonzeros.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from .inputs import zero_input
from .nn.surgery import SPARSE_LAYERS, WEIGHT_LAYERS, layer_kind


@dataclass(frozen=True)
class LayerMetrics:
    name: str
    kind: str
    shape: tuple
    params: int
    nonzeros: int
    dense_macs: int = None  # per sample; None without an example input
    nonzero_macs: int = None


@dataclass(frozen=True)
class ModelMetrics:
    layers: list
    params: int
    nonzeros: int
    input_shape: tuple = None

    @property
    def compression_ratio(self):
        return self.params / self.nonzeros if self.nonzeros else float("inf")

    @property
    def dense_macs(self):
        return _sum_or_none(layer.dense_macs for layer in self.layers)

    @property
    def nonzero_macs(self):
        return _sum_or_none(layer.nonzero_macs for layer in self.layers)

    @property
    def theoretical_speedup(self):
        dense, nonzero = self.dense_macs, self.nonzero_macs
        if dense is None:
            return None
        return dense / nonzero if nonzero else float("inf")

    def as_dict(self):
        return {"params": self.params, "nonzeros": self.nonzeros,
                "compression_ratio": self.compression_ratio, "dense_macs": self.dense_macs,
                "nonzero_macs": self.nonzero_macs, "theoretical_speedup": self.theoretical_speedup,
                "input_shape": self.input_shape}


def _sum_or_none(values):
    values = list(values)
    return None if not values or any(v is None for v in values) else sum(values)


def _weight_counts(layer):
    """(weight shape, entries, nonzero entries) of a dense or sparse layer."""
    if isinstance(layer, SPARSE_LAYERS):
        shape = tuple(layer.weight_shape) if layer_kind(layer) == "Linear" else (
            layer.out_channels, layer.in_channels // layer.groups, *layer.kernel_size)
        return shape, int(torch.Size(shape).numel()), int(torch.count_nonzero(layer.values))
    return tuple(layer.weight.shape), layer.weight.numel(), int(torch.count_nonzero(layer.weight))


def model_metrics(model: torch.nn.Module, input_shape: Optional[tuple] = None, *,
                  tokens: Optional[int] = None) -> ModelMetrics:
    """ModelMetrics of `model` (an nn.Module or SparseModel). With `input_shape` (one sample, no
    batch dimension) a forward pass on zeros counts the multiply-adds (on token ids with `tokens`,
    a vocabulary size); without it they are None."""
    positions = _output_positions(model, input_shape, tokens) if input_shape is not None else {}
    layers = []
    params = nonzeros = 0
    for name, layer in model.named_modules():
        if not isinstance(layer, WEIGHT_LAYERS):
            continue
        shape, numel, nnz = _weight_counts(layer)
        kind = layer_kind(layer)
        n = positions.get(name)
        layers.append(LayerMetrics(name, kind, shape, numel, nnz, None if n is None else numel * n,
                                   None if n is None else nnz * n))
        if isinstance(layer, SPARSE_LAYERS):  # their tensors are buffers
            bias = layer.bias if layer.bias is not None else torch.zeros(0)
            params += numel + bias.numel()
            nonzeros += nnz + int(torch.count_nonzero(bias))
    for p in model.parameters():
        params += p.numel()
        nonzeros += int(torch.count_nonzero(p))
    return ModelMetrics(layers, params, nonzeros, None if input_shape is None else tuple(input_shape))


def _output_positions(model, input_shape, tokens=None):
    """{layer name: output positions per sample}: out_h*out_w for convolutions, the number of
    rows a Linear is applied to (1 for [batch, features], tokens for [batch, tokens, features])."""
    positions, hooks = {}, []

    def record(name):
        def hook(module, args, output):
            channels = output.shape[-1] if layer_kind(module) == "Linear" else output.shape[1]
            positions[name] = output.numel() // (output.shape[0] * channels)
        return hook

    for name, layer in model.named_modules():
        if isinstance(layer, WEIGHT_LAYERS):
            hooks.append(layer.register_forward_hook(record(name)))
    reference = next((t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()), None)
    dtype = reference.dtype if reference is not None else torch.float32
    device = reference.device if reference is not None else "cpu"
    training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(zero_input(input_shape, tokens=tokens, dtype=dtype, device=device))
    finally:
        model.train(training)
        for h in hooks:
            h.remove()
    return positions


_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


def state_dict_metrics(state_dict):
    """ModelMetrics of a bare state dict, when the architecture is not known: parameters are its
    floating-point tensors except norm running statistics, layers its 2-D and 4-D '*.weight'
    tensors (Linear and Conv2d). Only a Linear's multiply-adds (in x out) are known without a
    forward pass, so with any Conv2d the multiply-adds are None."""
    layers = []
    params = nonzeros = 0
    for name, t in state_dict.items():
        if not t.is_floating_point() or name.rsplit(".", 1)[-1] in _RUNNING_STATS:
            continue
        nnz = int(torch.count_nonzero(t))
        params += t.numel()
        nonzeros += nnz
        if name.endswith("weight") and t.dim() in (2, 4):
            macs = (t.numel(), nnz) if t.dim() == 2 else (None, None)
            layers.append(LayerMetrics(name.removesuffix(".weight"), "Linear" if t.dim() == 2 else "Conv2d",
                                       tuple(t.shape), t.numel(), nnz, *macs))
    return ModelMetrics(layers, params, nonzeros)
