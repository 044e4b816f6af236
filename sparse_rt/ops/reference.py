"""Pure-torch reference implementations of the ops: the test oracle (run them in float64 for a
double-accumulation reference) and the fallback when the compiled ops are missing."""

import torch
import torch.nn.functional as F


def csr_to_dense(crow_indices, col_indices, values, shape, dtype=None):
    rows, cols = shape
    dense = torch.zeros(rows, cols, dtype=dtype or values.dtype, device=values.device)
    row = torch.repeat_interleave(torch.arange(rows, device=values.device), crow_indices.long().diff())
    dense.index_put_((row, col_indices.long()), values.to(dense.dtype), accumulate=True)
    return dense


def bsr_to_dense(crow_indices, col_indices, values, shape, dtype=None):
    rows, cols = shape
    bh, bw = values.shape[1:]
    blocks = torch.zeros(rows // bh, cols // bw, bh, bw, dtype=dtype or values.dtype, device=values.device)
    block_row = torch.repeat_interleave(torch.arange(rows // bh, device=values.device),
                                        crow_indices.long().diff())
    blocks.index_put_((block_row, col_indices.long()), values.to(blocks.dtype), accumulate=True)
    return blocks.transpose(1, 2).reshape(rows, cols)


def _finish(y, bias, relu, out_dtype, channel_dim=-1):
    if bias is not None:
        shape = [1] * y.dim()
        shape[channel_dim] = -1
        y = y + bias.to(y.dtype).view(shape)
    if relu:
        y = torch.relu(y)
    return y.to(out_dtype)


def csr_linear(input, crow_indices, col_indices, values, bias, in_features, relu=False,
               *, compute_dtype=torch.float32):
    weight = csr_to_dense(crow_indices, col_indices, values, (crow_indices.numel() - 1, in_features),
                          compute_dtype)
    return _finish(input.to(compute_dtype) @ weight.T, bias, relu, input.dtype)


def bsr_linear(input, crow_indices, col_indices, values, bias, in_features, relu=False,
               *, compute_dtype=torch.float32):
    rows = (crow_indices.numel() - 1) * values.shape[1]
    weight = bsr_to_dense(crow_indices, col_indices, values, (rows, in_features), compute_dtype)
    return _finish(input.to(compute_dtype) @ weight.T, bias, relu, input.dtype)


def csr_conv2d(input, crow_indices, col_indices, values, bias, in_channels, kernel_size, stride,
               padding, dilation, groups, relu=False, *, compute_dtype=torch.float32):
    out_channels = crow_indices.numel() - 1
    kh, kw = kernel_size
    cols = in_channels // groups * kh * kw
    weight = csr_to_dense(crow_indices, col_indices, values, (out_channels, cols), compute_dtype)
    weight = weight.view(out_channels, in_channels // groups, kh, kw)
    y = F.conv2d(input.to(compute_dtype), weight, None, tuple(stride), tuple(padding), tuple(dilation), groups)
    return _finish(y, bias, relu, input.dtype, channel_dim=1)
