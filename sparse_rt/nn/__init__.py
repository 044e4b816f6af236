"""Drop-in sparse layers."""

from ._sparse_weight import WEIGHT_STORAGE_DTYPES, WEIGHT_STORAGE_ERROR
from .conv import SparseConv2d
from .linear import SparseLinear

__all__ = ["SparseLinear", "SparseConv2d", "WEIGHT_STORAGE_DTYPES", "WEIGHT_STORAGE_ERROR"]
