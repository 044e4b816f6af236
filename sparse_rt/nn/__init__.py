"""Drop-in sparse layers."""

from .conv import SparseConv2d
from .linear import SparseLinear

__all__ = ["SparseLinear", "SparseConv2d"]
