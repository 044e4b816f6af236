"""The sparse ops: thin wrappers over torch.ops.sparse_rt.* (C++/CUDA kernels chosen by the
dispatcher), falling back to the pure-torch references when the compiled ops are missing."""

from typing import List, Optional, Sequence, Tuple

import torch

from . import reference
from ._library import (
    CSR_CUDA_KERNEL_VARIABLE,
    CSR_CUDA_KERNELS,
    HAS_COMPILED_OPS,
    build_info,
    core_round_trip_ns,
    cpu_cache_stats,
    csr_cuda_kernel,
    empty_cpu_cache,
    full_index_checks,
    onnxruntime_kernels_library,
    set_cpu_cache_limit,
    set_full_index_checks,
    set_trusted_packings,
    trusted_packings,
    trusted_packings_enabled,
)
from .geometry import conv2d_output_hw, conv2d_output_size

if HAS_COMPILED_OPS:
    from . import _fake  # noqa: F401  (registers the fake kernels)


def pack_csr(crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor,
             in_features: int) -> torch.Tensor:
    """The CSR weight's nonzeros laid out for the CPU ops' tiled SpMM (int32; 8 bytes per nonzero),
    for their `packed` arguments: the SpMM then reads each 64-row panel's operand rows from L1,
    with the same sums bit for bit. Empty where that would not pay (a narrow or very sparse
    weight), on CUDA (its kernels have no packed layout) and without the compiled ops. The ops
    compare a packing with the weight on every call that reads it (O(nnz)), and refuse one that no
    longer matches."""
    if not HAS_COMPILED_OPS:
        return torch.empty(0, dtype=torch.int32)
    return torch.ops.sparse_rt.pack_csr(crow_indices, col_indices, values, in_features)


def csr_linear(input: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor,
               bias: Optional[torch.Tensor], in_features: int, relu: bool = False,
               residual: Optional[torch.Tensor] = None, packed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = act(input @ W.T + bias + residual), W in CSR [len(crow_indices) - 1, in_features];
    `packed`: pack_csr's result for W (CPU)."""
    if HAS_COMPILED_OPS:
        return torch.ops.sparse_rt.csr_linear(input, crow_indices, col_indices, values, bias, in_features, relu,
                                              residual, packed)
    return reference.csr_linear(input, crow_indices, col_indices, values, bias, in_features, relu, residual)


def bsr_linear(input: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor,
               bias: Optional[torch.Tensor], in_features: int, relu: bool = False,
               residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = act(input @ W.T + bias + residual), W in BSR with values [nblocks, bh, bw]."""
    impl = torch.ops.sparse_rt.bsr_linear if HAS_COMPILED_OPS else reference.bsr_linear
    return impl(input, crow_indices, col_indices, values, bias, in_features, relu, residual)


def csr_linears(input: torch.Tensor, crow_indices: List[torch.Tensor], col_indices: List[torch.Tensor],
                values: List[torch.Tensor], bias: List[Optional[torch.Tensor]], in_features: int,
                packed: Sequence[Optional[torch.Tensor]] = ()) -> List[torch.Tensor]:
    """[input @ W_i.T + bias_i for each layer i], the W_i in CSR [len(crow_indices[i]) - 1, in_features]:
    layers reading one input (attention's query, key and value projections) in one call, which
    reads and packs the input once. `packed`: none, or pack_csr's result (or None) per layer."""
    if HAS_COMPILED_OPS:
        return torch.ops.sparse_rt.csr_linears(input, list(crow_indices), list(col_indices), list(values), list(bias),
                                               in_features, list(packed) or None)
    return reference.csr_linears(input, list(crow_indices), list(col_indices), list(values), list(bias), in_features)


def csr_mlp(input: torch.Tensor, crow_indices1: torch.Tensor, col_indices1: torch.Tensor, values1: torch.Tensor,
            bias1: Optional[torch.Tensor], crow_indices2: torch.Tensor, col_indices2: torch.Tensor,
            values2: torch.Tensor, bias2: Optional[torch.Tensor], in_features: int, activation: str,
            residual: Optional[torch.Tensor] = None, packed1: Optional[torch.Tensor] = None,
            packed2: Optional[torch.Tensor] = None) -> torch.Tensor:
    """W2 act(W1 input + bias1) + bias2 + residual with W1, W2 in CSR and act 'relu', 'gelu' or
    'gelu_tanh' (F.gelu's approximate='tanh'): two csr_linear calls and the activation between them,
    computed one 64-row panel of the input at a time on the CPU (the hidden activations stay in cache;
    the GELU runs in the first layer's epilogue, within 3e-7 |h| of F.gelu). `packed1`, `packed2`:
    pack_csr's results for W1 and W2 (CPU)."""
    if HAS_COMPILED_OPS:
        return torch.ops.sparse_rt.csr_mlp(input, crow_indices1, col_indices1, values1, bias1, crow_indices2,
                                           col_indices2, values2, bias2, in_features, activation, residual,
                                           packed1, packed2)
    return reference.csr_mlp(input, crow_indices1, col_indices1, values1, bias1, crow_indices2, col_indices2,
                             values2, bias2, in_features, activation, residual)


def csr_conv2d(input: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor,
               bias: Optional[torch.Tensor], in_channels: int, kernel_size: Sequence[int], stride: Sequence[int],
               padding: Sequence[int], dilation: Sequence[int], groups: int, relu: bool = False,
               residual: Optional[torch.Tensor] = None, packed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """act(conv2d(input, W) + bias + residual) with W in CSR over [out_channels, in_channels/groups*kh*kw];
    `packed`: pack_csr's result for W, read by a 1x1 convolution without padding, of one group, on the
    CPU, which runs as a linear layer over the output pixels of all images (a strided one reads every
    stride-th pixel)."""
    if HAS_COMPILED_OPS:
        return torch.ops.sparse_rt.csr_conv2d(input, crow_indices, col_indices, values, bias, in_channels,
                                              list(kernel_size), list(stride), list(padding), list(dilation),
                                              groups, relu, residual, packed)
    return reference.csr_conv2d(input, crow_indices, col_indices, values, bias, in_channels, list(kernel_size),
                                list(stride), list(padding), list(dilation), groups, relu, residual)



def csr_pointwise_conv_pair(input: torch.Tensor, crow_indices1: torch.Tensor, col_indices1: torch.Tensor,
                            values1: torch.Tensor, bias1: Optional[torch.Tensor], in_channels: int, relu1: bool,
                            residual: Optional[torch.Tensor], packed1: Optional[torch.Tensor],
                            crow_indices2: torch.Tensor, col_indices2: torch.Tensor, values2: torch.Tensor,
                            bias2: Optional[torch.Tensor], relu2: bool,
                            packed2: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(y1, y2): y1 = csr_conv2d of `input` by the first 1x1 weight (stride 1, no padding, one group)
    with bias1, `residual` and relu1, y2 = the same of y1 by the second weight with bias2 and relu2;
    fp32 input, both weights' values of one dtype. On the CPU the two layers run one 64-pixel panel
    at a time, so that the second reads the first's output from cache; the same values as the two
    csr_conv2d calls bit for bit. `packed1`, `packed2`: pack_csr's results for the weights."""
    args = (input, crow_indices1, col_indices1, values1, bias1, in_channels, relu1, residual, packed1,
            crow_indices2, col_indices2, values2, bias2, relu2, packed2)
    if HAS_COMPILED_OPS:
        return torch.ops.sparse_rt.csr_pointwise_conv_pair(*args)
    return reference.csr_pointwise_conv_pair(*args)


def csr_bottleneck_block(input: torch.Tensor, crow_indices1: torch.Tensor, col_indices1: torch.Tensor,
                         values1: torch.Tensor, bias1: Optional[torch.Tensor], in_channels: int, relu1: bool,
                         crow_indices2: torch.Tensor,
                         col_indices2: torch.Tensor, values2: torch.Tensor, bias2: Optional[torch.Tensor], relu2: bool,
                         crow_indices3: torch.Tensor, col_indices3: torch.Tensor, values3: torch.Tensor,
                         bias3: Optional[torch.Tensor], relu3: bool, residual: Optional[torch.Tensor],
                         shortcut_crow_indices: Optional[torch.Tensor] = None,
                         shortcut_col_indices: Optional[torch.Tensor] = None,
                         shortcut_values: Optional[torch.Tensor] = None,
                         shortcut_bias: Optional[torch.Tensor] = None, packed1: Optional[torch.Tensor] = None,
                         packed2: Optional[torch.Tensor] = None, packed3: Optional[torch.Tensor] = None,
                         shortcut_packed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A bottleneck block's three csr_conv2d layers in one call: a 1x1 weight (no padding) on `input` of
    `in_channels` channels, a 3x3 one
    (padding 1), a 1x1 one, all stride 1 and one group, each with its bias and ReLU, `residual` added to
    the last one's output before its ReLU; fp32 input, the weights' values of one dtype. Instead of
    `residual`, a shortcut layer may be given (`shortcut_*`: a 1x1 CSR weight of one group from
    `in_channels` to the last layer's channels, its bias, no ReLU): its output on `input` is the
    residual (a stage's first block whose downsample is pointwise). On the CPU, where the block's
    activations leave the cache, the layers run a band of output rows of one image at a time, their
    inner activations in the core's L2, the shortcut's output stored into the band of the output and
    summed there; within fp32 rounding of the separate calls. Elsewhere the layers run one after the
    other, each reading its packing (`packed1`, `packed2`, `packed3`, `shortcut_packed`: pack_csr of its
    weight over its columns, as csr_conv2d's `packed`) where given."""
    args = (input, crow_indices1, col_indices1, values1, bias1, in_channels, relu1, crow_indices2, col_indices2,
            values2, bias2, relu2, crow_indices3, col_indices3, values3, bias3, relu3, residual,
            shortcut_crow_indices, shortcut_col_indices, shortcut_values, shortcut_bias, packed1, packed2, packed3,
            shortcut_packed)
    if HAS_COMPILED_OPS:
        return torch.ops.sparse_rt.csr_bottleneck_block(*args)
    return reference.csr_bottleneck_block(*args)


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 scale: float) -> torch.Tensor:
    """softmax(scale * query @ key^T) @ value for query [batch, heads, queries, head_dim] and key, value
    [batch, heads, keys, head_dim] (keys >= 1), no mask or dropout. The output is stored [batch, queries,
    heads, head_dim] and returned as its [batch, heads, queries, head_dim] view, so that merging the
    heads (.transpose(1, 2).flatten(2)) is free. On the CPU it is a kernel of ours; outputs agree with
    F.scaled_dot_product_attention to rounding (fp32: within 1e-5 relative), not bit for bit."""
    impl = (torch.ops.sparse_rt.scaled_dot_product_attention if HAS_COMPILED_OPS
            else reference.scaled_dot_product_attention)
    return impl(query, key, value, scale)


def add_layer_norm(input: torch.Tensor, residual: torch.Tensor, weight: Optional[torch.Tensor],
                   bias: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """F.layer_norm(input + residual, [input.shape[-1]], weight, bias, eps) in one pass per row on the CPU
    (a transformer's residual connection); within 1e-5 relative of the two ops (fp32), not bit for bit."""
    impl = torch.ops.sparse_rt.add_layer_norm if HAS_COMPILED_OPS else reference.add_layer_norm
    return impl(input, residual, weight, bias, eps)


def max_pool2d(input: torch.Tensor, kernel_size, stride, padding) -> torch.Tensor:
    """F.max_pool2d(input, kernel_size, stride, padding) (no dilation, floor mode) as an NCHW-contiguous
    tensor, without computing the indices: on the CPU one pass over a channels_last input (a CNN's stem,
    whose dense convolution runs channels_last), the same values bit for bit."""
    impl = torch.ops.sparse_rt.max_pool2d if HAS_COMPILED_OPS else reference.max_pool2d
    return impl(input, list(kernel_size), list(stride), list(padding))


__all__ = ["pack_csr", "csr_linear", "bsr_linear", "csr_linears", "csr_mlp", "csr_conv2d", "csr_pointwise_conv_pair",
           "csr_bottleneck_block",
           "scaled_dot_product_attention", "add_layer_norm", "max_pool2d", "reference", "HAS_COMPILED_OPS",
           "csr_cuda_kernel", "CSR_CUDA_KERNELS", "CSR_CUDA_KERNEL_VARIABLE",
           "build_info", "core_round_trip_ns", "full_index_checks", "onnxruntime_kernels_library",
           "set_full_index_checks",
           "cpu_cache_stats", "set_cpu_cache_limit", "empty_cpu_cache", "set_trusted_packings",
           "trusted_packings", "trusted_packings_enabled",
           "conv2d_output_size", "conv2d_output_hw"]
