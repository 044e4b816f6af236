"""The "portable" flavour: standard ONNX ops only. Each sparse layer becomes a dense Linear/Conv
whose weight the graph rebuilds from compact initializers:

    values  [n]  the nonzeros, row-major order of the dense weight (plus zero-valued fillers)
    deltas  [n]  uint8 gaps between consecutive flat positions (the first counts from 0)
    weight = ScatterElements(zeros[numel], CumSum(Cast<int64>(deltas)), values).reshape(shape)

A gap over 255 is bridged by fillers (value 0) every 255 positions, so one byte per index always
suffices. onnxruntime folds the rebuild into a dense initializer when it loads the model; the
file keeps the compact form because export runs no constant folding (optimize=False).
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import SparseConv2d, SparseLinear
from ..nn.surgery import replace_submodule

_MAX_GAP = 255


def encode(dense):
    """Dense tensor -> (values, uint8 deltas) with decode(values, deltas, dense.shape) == dense."""
    flat = dense.detach().reshape(-1)
    positions = flat.nonzero().reshape(-1)
    gaps = torch.diff(positions, prepend=positions.new_zeros(1))
    fillers = ((gaps - 1).clamp(min=0) // _MAX_GAP)  # entries inserted before each nonzero
    group = fillers + 1
    ends = group.cumsum(0) - 1  # where each nonzero lands in the padded arrays
    total = int(group.sum())
    deltas = torch.full((total,), _MAX_GAP, dtype=torch.int64)
    values = torch.zeros(total, dtype=flat.dtype)
    deltas[ends] = gaps - _MAX_GAP * fillers
    values[ends] = flat[positions]
    return values, deltas.to(torch.uint8)


def decode(values, deltas, shape):
    """The dense weight; only standard ops, so the ONNX graph does the same."""
    positions = torch.cumsum(deltas.to(torch.int64), 0)
    dense = torch.zeros(torch.Size(shape).numel(), dtype=values.dtype, device=values.device)
    return dense.scatter(0, positions, values).reshape(shape)


class _RebuiltWeight(nn.Module):
    def __init__(self, dense_weight, bias, layer_relu):
        super().__init__()
        values, deltas = encode(dense_weight)
        self.register_buffer("values", values)
        self.register_buffer("deltas", deltas)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.weight_shape = tuple(dense_weight.shape)
        self.relu = layer_relu

    def _epilogue(self, y, residual):
        """What the sparse layer's kernel adds after the product (sparse_rt.fusion)."""
        if residual is not None:
            y = y + residual
        return torch.relu(y) if self.relu else y

    @property
    def weight(self):
        """The dense weight, rebuilt (an attribute, as model code reads `layer.weight.dtype`)."""
        return decode(self.values, self.deltas, self.weight_shape)


class PortableLinear(_RebuiltWeight):
    def __init__(self, layer):
        super().__init__(layer.dense_weight(), layer.bias, layer.relu)

    def forward(self, input, residual=None):
        return self._epilogue(F.linear(input, self.weight, self.bias), residual)


class PortableConv2d(_RebuiltWeight):
    def __init__(self, layer):
        # Without a bias the exporter derives a zero one from the rebuilt weight's shape at run
        # time, and that non-constant input keeps onnxruntime from fusing BatchNorm into the Conv.
        bias = layer.bias if layer.bias is not None else layer.values.new_zeros(layer.out_channels)
        super().__init__(layer.dense_weight(), bias, layer.relu)
        self.conv_args = (layer.stride, layer.padding, layer.dilation, layer.groups)

    def forward(self, input, residual=None):
        return self._epilogue(F.conv2d(input, self.weight, self.bias, *self.conv_args), residual)


def to_portable(module):
    """A copy of `module` with every SparseLinear / SparseConv2d replaced by its portable twin."""
    module = copy.deepcopy(module)
    twins = {SparseLinear: PortableLinear, SparseConv2d: PortableConv2d}
    for name, layer in list(module.named_modules()):
        if type(layer) in twins:
            replace_submodule(module, name, twins[type(layer)](layer))
    return module
