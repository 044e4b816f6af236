"""Fake (meta) kernels: output shapes and dtypes of the compiled ops, for torch.compile,
torch.export and FakeTensor tracing."""

import torch

from .geometry import conv2d_output_hw


def _linear_out(input, crow_indices, values, in_features, rows_per_crow, residual):
    torch._check(input.shape[-1] == in_features,
                 lambda: f"input has {input.shape[-1]} features, expected {in_features}")
    out_features = (crow_indices.shape[0] - 1) * rows_per_crow
    return _output(input, (*input.shape[:-1], out_features), residual)


def _output(input, shape, residual):
    if residual is not None:
        torch._check(tuple(residual.shape) == tuple(shape),
                     lambda: f"residual has shape {tuple(residual.shape)} but the output has shape {tuple(shape)}")
    return input.new_empty(shape)


@torch.library.register_fake("sparse_rt::pack_csr")
def _pack_csr_fake(crow_indices, col_indices, values, in_features):
    # Its length depends on the nonzeros' positions (or is 0 where packing would not pay).
    return crow_indices.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int32)


@torch.library.register_fake("sparse_rt::csr_linear")
def _csr_linear_fake(input, crow_indices, col_indices, values, bias, in_features, relu=False, residual=None,
                     packed=None):
    return _linear_out(input, crow_indices, values, in_features, 1, residual)


@torch.library.register_fake("sparse_rt::bsr_linear")
def _bsr_linear_fake(input, crow_indices, col_indices, values, bias, in_features, relu=False, residual=None):
    return _linear_out(input, crow_indices, values, in_features, values.shape[1], residual)


@torch.library.register_fake("sparse_rt::csr_linears")
def _csr_linears_fake(input, crow_indices, col_indices, values, bias, in_features, packed=None):
    return [_linear_out(input, crow, None, in_features, 1, None) for crow in crow_indices]


@torch.library.register_fake("sparse_rt::csr_mlp")
def _csr_mlp_fake(input, crow_indices1, col_indices1, values1, bias1, crow_indices2, col_indices2, values2, bias2,
                  in_features, activation, residual=None, packed1=None, packed2=None):
    torch._check(input.shape[-1] == in_features,
                 lambda: f"input has {input.shape[-1]} features, expected {in_features}")
    return _output(input, (*input.shape[:-1], crow_indices2.shape[0] - 1), residual)


@torch.library.register_fake("sparse_rt::csr_conv2d")
def _csr_conv2d_fake(input, crow_indices, col_indices, values, bias, in_channels, kernel_size,
                     stride, padding, dilation, groups, relu=False, residual=None, packed=None):
    out_hw = conv2d_output_hw(input.shape[2:], kernel_size, stride, padding, dilation)
    return _output(input, (input.shape[0], crow_indices.shape[0] - 1, *out_hw), residual)


@torch.library.register_fake("sparse_rt::csr_pointwise_conv_pair")
def _csr_pointwise_conv_pair_fake(input, crow_indices1, col_indices1, values1, bias1, in_channels, relu1, residual,
                                  packed1, crow_indices2, col_indices2, values2, bias2, relu2, packed2):
    torch._check(input.shape[1] == in_channels, lambda: f"input has {input.shape[1]} channels, expected {in_channels}")
    first = _output(input, (input.shape[0], crow_indices1.shape[0] - 1, *input.shape[2:]), residual)
    return first, input.new_empty((input.shape[0], crow_indices2.shape[0] - 1, *input.shape[2:]))


@torch.library.register_fake("sparse_rt::csr_bottleneck_block")
def _csr_bottleneck_block_fake(input, crow_indices1, col_indices1, values1, bias1, in_channels, relu1, crow_indices2,
                               col_indices2, values2, bias2, relu2, crow_indices3, col_indices3, values3, bias3, relu3,
                               residual, shortcut_crow_indices=None, shortcut_col_indices=None, shortcut_values=None,
                               shortcut_bias=None, packed1=None, packed2=None, packed3=None, shortcut_packed=None):
    torch._check(input.shape[1] == in_channels, lambda: f"input has {input.shape[1]} channels, expected {in_channels}")
    if shortcut_crow_indices is not None:
        torch._check(residual is None, lambda: "a residual and a shortcut layer were both given")
        torch._check(shortcut_crow_indices.shape[0] == crow_indices3.shape[0],
                     lambda: "the shortcut layer's output channels differ from the block's last layer's")
    return _output(input, (input.shape[0], crow_indices3.shape[0] - 1, *input.shape[2:]), residual)


@torch.library.register_fake("sparse_rt::scaled_dot_product_attention")
def _scaled_dot_product_attention_fake(query, key, value, scale):
    batch, heads, queries, head_dim = query.shape
    # The op's layout: [batch, queries, heads, head_dim] in memory, viewed as [batch, heads, queries, head_dim].
    return query.new_empty((batch, queries, heads, head_dim)).transpose(1, 2)


@torch.library.register_fake("sparse_rt::add_layer_norm")
def _add_layer_norm_fake(input, residual, weight, bias, eps):
    torch._check(tuple(residual.shape) == tuple(input.shape),
                 lambda: f"residual has shape {tuple(residual.shape)} but input has shape {tuple(input.shape)}")
    return input.new_empty(input.shape)


@torch.library.register_fake("sparse_rt::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding):
    out_hw = conv2d_output_hw(input.shape[2:], kernel_size, stride, padding, (1, 1))
    return input.new_empty((*input.shape[:2], *out_hw))
