import math

from torch import nn

from .. import ops
from ..formats import BSR, CSR
from ._sparse_weight import SparseWeightModule
from .packing import PackedWeight


class SparseLinear(PackedWeight, SparseWeightModule):
    """Drop-in replacement of nn.Linear whose weight [out_features, in_features] is CSR or BSR.

    On the CPU a CSR layer packs its weight for inputs of enough rows (PackedWeight)."""

    def __init__(self, in_features, out_features, weight, bias=None):
        super().__init__()
        if not (isinstance(in_features, int) and isinstance(out_features, int)
                and in_features >= 0 and out_features >= 0):
            raise ValueError(f"SparseLinear: in_features and out_features must be ints >= 0, got "
                             f"{in_features!r} and {out_features!r}")
        if tuple(weight.shape) != (out_features, in_features):
            raise ValueError(f"SparseLinear: weight shape {tuple(weight.shape)} is not "
                             f"(out_features, in_features) = {(out_features, in_features)}")
        self.in_features, self.out_features = in_features, out_features
        self.format = "bsr" if isinstance(weight, BSR) else "csr"
        self._set_weight(weight, bias)

    @classmethod
    def from_dense(cls, linear, mask=None, format="csr", blocksize=(4, 4)):
        """Converts an nn.Linear, keeping the entries where `mask` is True (default: nonzeros)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"SparseLinear.from_dense expects nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        if format == "csr":
            weight = CSR.from_dense(w, mask)
        elif format == "bsr":
            weight = BSR.from_dense(w, mask, blocksize)
        else:
            raise ValueError(f"SparseLinear.from_dense: format must be 'csr' or 'bsr', got {format!r}")
        return cls(linear.in_features, linear.out_features, weight, linear.bias)

    @property
    def dense_shape(self):
        return self.out_features, self.in_features

    def dense_weight(self):
        return self.sparse_weight().to_dense()

    def forward(self, input, residual=None):
        """act(input @ W.T + bias + residual); `residual` (shaped like the output) is what
        sparse_rt.fusion passes for a skip connection added after this layer."""
        crow, col, values, bias = self._weight_tensors()
        if self.format == "bsr":
            return self._epilogue(input, residual, lambda relu, res: ops.bsr_linear(
                input, crow, col, values, bias, self.in_features, relu, res))
        packing = self.packing(input)
        return self._epilogue(input, residual, lambda relu, res: ops.csr_linear(
            input, crow, col, values, bias, self.in_features, relu, res, packing))

    def _packing_rows(self, input):
        return math.prod(input.shape[:-1])

    def _packing_columns(self):
        return self.in_features

    def output_shape(self, input):
        return (*input.shape[:-1], self.out_features)

    def _shape_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}"
