"""Pure-torch reference implementations of the ops: the test oracle (run them in float64 for a
double-accumulation reference) and the fallback when the compiled ops are missing."""

import torch
import torch.nn.functional as F

from .geometry import conv2d_output_hw

# csr_mlp's activations: a ReLU, or the exact (erf) or tanh-approximated GELU.
MLP_ACTIVATIONS = ("relu", "gelu", "gelu_tanh")


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


def _finish(y, bias, relu, out_dtype, channel_dim=-1, residual=None):
    if bias is not None:
        shape = [1] * y.dim()
        shape[channel_dim] = -1
        y = y + bias.to(y.dtype).view(shape)
    if residual is not None:
        y = y + residual.to(y.dtype)
    if relu:
        y = torch.relu(y)
    return y.to(out_dtype)


def csr_linear(input, crow_indices, col_indices, values, bias, in_features, relu=False, residual=None,
               *, compute_dtype=torch.float32):
    weight = csr_to_dense(crow_indices, col_indices, values, (crow_indices.numel() - 1, in_features),
                          compute_dtype)
    return _finish(input.to(compute_dtype) @ weight.T, bias, relu, input.dtype, residual=residual)


def csr_linears(input, crow_indices, col_indices, values, bias, in_features, *, compute_dtype=torch.float32):
    return [csr_linear(input, *layer, in_features, compute_dtype=compute_dtype)
            for layer in zip(crow_indices, col_indices, values, bias, strict=True)]


def csr_mlp(input, crow_indices1, col_indices1, values1, bias1, crow_indices2, col_indices2, values2, bias2,
            in_features, activation, residual=None, *, compute_dtype=torch.float32):
    if activation not in MLP_ACTIVATIONS:
        raise ValueError(f"csr_mlp: activation must be one of {MLP_ACTIVATIONS}, got {activation!r}")
    hidden = csr_linear(input.to(compute_dtype), crow_indices1, col_indices1, values1, bias1, in_features,
                        activation == "relu", compute_dtype=compute_dtype)
    if activation != "relu":
        hidden = F.gelu(hidden, approximate="tanh" if activation == "gelu_tanh" else "none")
    y = csr_linear(hidden, crow_indices2, col_indices2, values2, bias2, crow_indices1.numel() - 1,
                   residual=residual, compute_dtype=compute_dtype)
    return y.to(input.dtype)


def csr_pointwise_conv_pair(input, crow_indices1, col_indices1, values1, bias1, in_channels, relu1, residual,
                            packed1, crow_indices2, col_indices2, values2, bias2, relu2, packed2, *,
                            compute_dtype=torch.float32):
    one, none = (1, 1), (0, 0)
    y1 = csr_conv2d(input, crow_indices1, col_indices1, values1, bias1, in_channels, one, one, none, one, 1, relu1,
                    residual, compute_dtype=compute_dtype)
    y2 = csr_conv2d(y1, crow_indices2, col_indices2, values2, bias2, crow_indices1.numel() - 1, one, one, none, one,
                    1, relu2, compute_dtype=compute_dtype)
    return y1, y2


def csr_bottleneck_block(input, crow_indices1, col_indices1, values1, bias1, in_channels, relu1, crow_indices2,
                         col_indices2, values2, bias2, relu2, crow_indices3, col_indices3, values3, bias3, relu3,
                         residual, shortcut_crow_indices=None, shortcut_col_indices=None, shortcut_values=None,
                         shortcut_bias=None, packed1=None, packed2=None, packed3=None, shortcut_packed=None, *,
                         compute_dtype=torch.float32):
    one, none = (1, 1), (0, 0)
    mid1, mid2 = crow_indices1.numel() - 1, crow_indices2.numel() - 1
    if shortcut_crow_indices is not None:
        if residual is not None:
            raise ValueError("csr_bottleneck_block (shortcut layer): a residual and a shortcut layer were both given: "
                             "the shortcut's output is the residual")
        residual = csr_conv2d(input, shortcut_crow_indices, shortcut_col_indices, shortcut_values, shortcut_bias,
                              in_channels, one, one, none, one, 1, False, compute_dtype=compute_dtype)
    y = csr_conv2d(input, crow_indices1, col_indices1, values1, bias1, in_channels, one, one, none, one, 1, relu1,
                   compute_dtype=compute_dtype)
    y = csr_conv2d(y, crow_indices2, col_indices2, values2, bias2, mid1, (3, 3), one, one, one, 1, relu2,
                   compute_dtype=compute_dtype)
    return csr_conv2d(y, crow_indices3, col_indices3, values3, bias3, mid2, one, one, none, one, 1, relu3, residual,
                      compute_dtype=compute_dtype)


def scaled_dot_product_attention(query, key, value, scale, *, compute_dtype=torch.float32):
    if query.dim() != 4 or key.shape != value.shape or key.dim() != 4 or key.shape[2] < 1:
        raise ValueError(f"scaled_dot_product_attention: expected query [batch, heads, queries, head_dim] and key, "
                         f"value of one shape [batch, heads, keys >= 1, head_dim], got {tuple(query.shape)}, "
                         f"{tuple(key.shape)} and {tuple(value.shape)}")
    scores = (query.to(compute_dtype) @ key.to(compute_dtype).transpose(-1, -2)) * scale
    out = torch.softmax(scores, dim=-1) @ value.to(compute_dtype)
    # The compiled op's layout: [batch, queries, heads, head_dim] in memory.
    return out.transpose(1, 2).contiguous().transpose(1, 2).to(query.dtype)


def add_layer_norm(input, residual, weight, bias, eps, *, compute_dtype=torch.float32):
    if residual.shape != input.shape:
        raise ValueError(f"add_layer_norm: residual has shape {tuple(residual.shape)} but input has shape "
                         f"{tuple(input.shape)}")
    cast = lambda t: None if t is None else t.to(compute_dtype)
    out = F.layer_norm(cast(input) + cast(residual), input.shape[-1:], cast(weight), cast(bias), eps)
    return out.to(input.dtype)


def max_pool2d(input, kernel_size, stride, padding):
    return F.max_pool2d(input, kernel_size, stride, padding).contiguous()


def bsr_linear(input, crow_indices, col_indices, values, bias, in_features, relu=False, residual=None,
               *, compute_dtype=torch.float32):
    rows = (crow_indices.numel() - 1) * values.shape[1]
    weight = bsr_to_dense(crow_indices, col_indices, values, (rows, in_features), compute_dtype)
    return _finish(input.to(compute_dtype) @ weight.T, bias, relu, input.dtype, residual=residual)


def csr_conv2d(input, crow_indices, col_indices, values, bias, in_channels, kernel_size, stride,
               padding, dilation, groups, relu=False, residual=None, *, compute_dtype=torch.float32):
    out_hw = conv2d_output_hw(input.shape[2:], kernel_size, stride, padding, dilation)
    if min(out_hw) >= 1 and _padding_is_far_beyond_the_image(input.shape[2:], out_hw, padding):
        y = _gathered_conv2d(input.to(compute_dtype), crow_indices, col_indices, values.to(compute_dtype),
                             in_channels, kernel_size, stride, padding, dilation, groups, out_hw)
        return _finish(y, bias, relu, input.dtype, channel_dim=1, residual=residual)
    out_channels = crow_indices.numel() - 1
    if out_channels == 0:  # an empty weight is a valid op call; F.conv2d refuses a weight of 0 rows
        return input.new_zeros((input.shape[0], 0, *out_hw))
    kh, kw = kernel_size
    cols = in_channels // groups * kh * kw
    weight = csr_to_dense(crow_indices, col_indices, values, (out_channels, cols), compute_dtype)
    weight = weight.view(out_channels, in_channels // groups, kh, kw)
    y = F.conv2d(input.to(compute_dtype), weight, None, tuple(stride), tuple(padding), tuple(dilation), groups)
    return _finish(y, bias, relu, input.dtype, channel_dim=1, residual=residual)


def _padding_is_far_beyond_the_image(in_hw, out_hw, padding):
    """Whether the padded image dwarfs the input and output planes. F.conv2d may then cost time and
    memory in the padded size (and the dense weight of a kernel as wide as the padding), so the
    reference gathers instead. Large dilations and kernels need such padding to have an output."""
    padded = (in_hw[0] + 2 * padding[0]) * (in_hw[1] + 2 * padding[1])
    return padded > 8 * (in_hw[0] * in_hw[1] + out_hw[0] * out_hw[1]) + 2**16


def _gathered_conv2d(x, crow_indices, col_indices, values, in_channels, kernel_size, stride, padding, dilation,
                     groups, out_hw):
    """conv2d as a sum over the nonzeros of value * (the input pixels its tap reads), in chunks of
    nonzeros: O(nnz * output) time and O(output) memory, whatever the padding, stride or dilation."""
    batch, _, height, width = x.shape
    out_channels = crow_indices.numel() - 1
    kh, kw = kernel_size
    rows = torch.repeat_interleave(torch.arange(out_channels, device=x.device), crow_indices.long().diff())
    col = col_indices.long()
    channel = rows // (out_channels // groups) * (in_channels // groups) + col // (kh * kw)
    ky, kx = col // kw % kh, col % kw
    y = torch.zeros(batch, out_channels, *out_hw, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    oy = torch.arange(out_hw[0], device=x.device) * stride[0] - padding[0]
    ox = torch.arange(out_hw[1], device=x.device) * stride[1] - padding[1]
    chunk = max(1, 2**22 // y[:, 0].numel())
    for start in range(0, col.numel(), chunk):
        part = slice(start, start + chunk)
        iy = oy + (ky[part] * dilation[0])[:, None]  # [nonzeros, out_h]
        ix = ox + (kx[part] * dilation[1])[:, None]  # [nonzeros, out_w]
        inside = ((iy >= 0) & (iy < height))[:, :, None] & ((ix >= 0) & (ix < width))[:, None, :]
        pixels = x[:, channel[part, None, None], iy.clamp(0, height - 1)[:, :, None],
                   ix.clamp(0, width - 1)[:, None, :]]
        y.index_add_(1, rows[part], pixels * (inside * values[part, None, None]))
    return y
