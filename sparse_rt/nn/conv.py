from torch import nn

from .. import ops
from ..formats import CSR
from ..ops.geometry import INT64_MAX, int64_product
from ._sparse_weight import SparseWeightModule
from .packing import PACKING_MIN_PIXELS, PackedWeight


def explicit_padding(conv):
    """nn.Conv2d padding as two ints; raises ValueError for what the sparse kernel cannot do."""
    if conv.padding_mode != "zeros":
        raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported (only 'zeros')")
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in total):
            raise ValueError("padding='same' with an even effective kernel pads asymmetrically, "
                             "which is not supported")
        return tuple(t // 2 for t in total)
    return tuple(conv.padding)


def check_conv_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups):
    """Raises ValueError naming the first argument the convolution kernel cannot take (the limits
    of the op's own check, so that a layer that passes here runs)."""
    for name, pair, least in (("kernel_size", kernel_size, 1), ("stride", stride, 1),
                              ("padding", padding, 0), ("dilation", dilation, 1)):
        if len(pair) != 2 or not all(isinstance(v, int) and least <= v < 2**31 for v in pair):
            raise ValueError(f"SparseConv2d: {name} must be two ints >= {least} (below 2^31), got {pair!r}")
    if not (isinstance(groups, int) and groups >= 1 and 1 <= in_channels <= INT64_MAX and out_channels >= 1
            and in_channels % groups == 0 and out_channels % groups == 0):
        raise ValueError(f"SparseConv2d: groups={groups!r} must be >= 1 and divide in_channels={in_channels} "
                         f"and out_channels={out_channels}")
    if int64_product(in_channels // groups, *kernel_size) is None:
        raise ValueError(f"SparseConv2d: in_channels/groups*kh*kw = {in_channels // groups}*{kernel_size[0]}*"
                         f"{kernel_size[1]} (the weight's columns) overflows int64")


class SparseConv2d(PackedWeight, SparseWeightModule):
    """Drop-in replacement of nn.Conv2d (zero padding) whose weight is CSR over
    [out_channels, in_channels/groups * kh * kw], the row-major flattening of the dense weight.

    On the CPU a 1x1 layer without padding, of one group, packs its weight for inputs of enough
    output pixels, all images together (PackedWeight): its op runs it as a linear layer over them
    (a strided one over the pixels its kernel reads)."""

    packing_min_rows = PACKING_MIN_PIXELS

    def __init__(self, in_channels, out_channels, kernel_size, weight, bias=None, stride=(1, 1),
                 padding=(0, 0), dilation=(1, 1), groups=1):
        super().__init__()
        check_conv_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        kh, kw = kernel_size
        expected = (out_channels, in_channels // groups * kh * kw)
        if tuple(weight.shape) != expected:
            raise ValueError(f"SparseConv2d: weight shape {tuple(weight.shape)} is not "
                             f"(out_channels, in_channels/groups*kh*kw) = {expected}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        self._set_weight(weight, bias)

    @classmethod
    def from_dense(cls, conv, mask=None):
        """Converts an nn.Conv2d, keeping the entries where `mask` (shaped like the weight) is True
        (default: nonzeros)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"SparseConv2d.from_dense expects nn.Conv2d, got {type(conv).__name__}")
        w = conv.weight.detach()
        if mask is not None and tuple(mask.shape) != tuple(w.shape):
            raise ValueError(f"SparseConv2d.from_dense: mask shape {tuple(mask.shape)} differs from "
                             f"weight shape {tuple(w.shape)}")
        flat_mask = None if mask is None else mask.reshape(w.shape[0], -1)
        weight = CSR.from_dense(w.reshape(w.shape[0], -1), flat_mask)
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, weight, conv.bias,
                   conv.stride, explicit_padding(conv), conv.dilation, conv.groups)

    @property
    def dense_shape(self):
        return self.out_channels, self.in_channels // self.groups, *self.kernel_size

    def dense_weight(self):
        return self.sparse_weight().to_dense().view(self.dense_shape)

    def forward(self, input, residual=None):
        """act(conv2d(input, W) + bias + residual); `residual` as in SparseLinear.forward."""
        crow, col, values, bias = self._weight_tensors()
        packing = self.packing(input)
        return self._epilogue(input, residual, lambda relu, res: ops.csr_conv2d(
            input, crow, col, values, bias, self.in_channels, self.kernel_size, self.stride, self.padding,
            self.dilation, self.groups, relu, res, packing))

    def _reads_packing(self):
        # A layer of one group runs as a linear layer over the output pixels, reading a packing: a pointwise
        # one over its input's pixels, others over their input unfolded (a row per weight column), which
        # the op takes only with a packing (PackedConvLayout::panels in csrc/kernels/cpu/csr_conv2d.h).
        return self.groups == 1

    def _packing_rows(self, input):
        if not self._reads_packing() or input.dim() != 4:
            return 0
        out_h, out_w = ops.conv2d_output_hw(input.shape[2:], self.kernel_size, self.stride, self.padding,
                                            self.dilation)
        return input.shape[0] * out_h * out_w

    def _packing_columns(self):
        return self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    def output_shape(self, input):
        out_hw = ops.conv2d_output_hw(input.shape[2:], self.kernel_size, self.stride, self.padding, self.dilation)
        return (input.shape[0], self.out_channels, *out_hw)

    def _shape_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s
