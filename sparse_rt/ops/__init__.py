"""The sparse ops: thin wrappers over torch.ops.sparse_rt.* (C++/CUDA kernels chosen by the
dispatcher), falling back to the pure-torch references when the compiled ops are missing."""

from typing import Optional, Sequence

import torch

from . import reference
from ._library import HAS_COMPILED_OPS, build_info, full_index_checks, set_full_index_checks
from .geometry import conv2d_output_hw, conv2d_output_size

if HAS_COMPILED_OPS:
    from . import _fake  # noqa: F401  (registers the fake kernels)


def csr_linear(input: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor,
               bias: Optional[torch.Tensor], in_features: int, relu: bool = False,
               residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = act(input @ W.T + bias + residual), W in CSR [len(crow_indices) - 1, in_features]."""
    impl = torch.ops.sparse_rt.csr_linear if HAS_COMPILED_OPS else reference.csr_linear
    return impl(input, crow_indices, col_indices, values, bias, in_features, relu, residual)


def bsr_linear(input: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor,
               bias: Optional[torch.Tensor], in_features: int, relu: bool = False,
               residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = act(input @ W.T + bias + residual), W in BSR with values [nblocks, bh, bw]."""
    impl = torch.ops.sparse_rt.bsr_linear if HAS_COMPILED_OPS else reference.bsr_linear
    return impl(input, crow_indices, col_indices, values, bias, in_features, relu, residual)


def csr_conv2d(input: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor,
               bias: Optional[torch.Tensor], in_channels: int, kernel_size: Sequence[int], stride: Sequence[int],
               padding: Sequence[int], dilation: Sequence[int], groups: int, relu: bool = False,
               residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """act(conv2d(input, W) + bias + residual) with W in CSR over [out_channels, in_channels/groups*kh*kw]."""
    impl = torch.ops.sparse_rt.csr_conv2d if HAS_COMPILED_OPS else reference.csr_conv2d
    return impl(input, crow_indices, col_indices, values, bias, in_channels, list(kernel_size),
                list(stride), list(padding), list(dilation), groups, relu, residual)


__all__ = ["csr_linear", "bsr_linear", "csr_conv2d", "reference", "HAS_COMPILED_OPS", "build_info",
           "full_index_checks", "set_full_index_checks", "conv2d_output_size", "conv2d_output_hw"]
