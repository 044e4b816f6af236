// The op schemas, written once. Backends register implementations with TORCH_LIBRARY_IMPL in their
// own files (cpu/, cuda/); fake (meta) kernels live in sparse_rt/ops/_fake.py.
// Every sparse op computes act(op(input) + bias + residual): `residual` (a skip connection, shaped
// like the output) is added before the ReLU, in the kernel's epilogue.
#include <torch/library.h>

TORCH_LIBRARY(sparse_rt, m) {
  // `packed` (CSR ops, CPU): the weight's nonzeros as pack_csr laid them out for the tiled SpMM,
  // which reads them instead of col_indices and values after comparing the two (a packing that no
  // longer matches the weight is an error). An empty packing (pack_csr found it would not pay) or
  // none: the weight as it is.
  m.def("pack_csr(Tensor crow_indices, Tensor col_indices, Tensor values, int in_features) -> Tensor");
  m.def(
      "csr_linear(Tensor input, Tensor crow_indices, Tensor col_indices, Tensor values, "
      "Tensor? bias, int in_features, bool relu=False, Tensor? residual=None, Tensor? packed=None) -> Tensor");
  m.def(
      "bsr_linear(Tensor input, Tensor crow_indices, Tensor col_indices, Tensor values, "
      "Tensor? bias, int in_features, bool relu=False, Tensor? residual=None) -> Tensor");
  // CSR linear layers reading one input (e.g. attention's query, key and value projections), each
  // output its own tensor: the input is read and packed once. `packed`: none, or one per layer.
  m.def(
      "csr_linears(Tensor input, Tensor[] crow_indices, Tensor[] col_indices, Tensor[] values, "
      "Tensor?[] bias, int in_features, Tensor?[]? packed=None) -> Tensor[]");
  // Two CSR linear layers with an activation ('relu', 'gelu' or 'gelu_tanh') between them; the
  // residual is added to the second layer's output.
  m.def(
      "csr_mlp(Tensor input, Tensor crow_indices1, Tensor col_indices1, Tensor values1, Tensor? bias1, "
      "Tensor crow_indices2, Tensor col_indices2, Tensor values2, Tensor? bias2, int in_features, "
      "str activation, Tensor? residual=None, Tensor? packed1=None, Tensor? packed2=None) -> Tensor");
  m.def(
      "csr_conv2d(Tensor input, Tensor crow_indices, Tensor col_indices, Tensor values, "
      "Tensor? bias, int in_channels, int[2] kernel_size, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, bool relu=False, Tensor? residual=None, Tensor? packed=None) -> Tensor");
  // Two pointwise convolutions (1x1, stride 1, unpadded, one group), the second reading the first's
  // output: (first(input) with its residual, second(that)), each with its bias and ReLU. fp32 input;
  // both weights' values of one dtype.
  m.def(
      "csr_pointwise_conv_pair(Tensor input, Tensor crow_indices1, Tensor col_indices1, Tensor values1, "
      "Tensor? bias1, int in_channels, bool relu1, Tensor? residual, Tensor? packed1, Tensor crow_indices2, "
      "Tensor col_indices2, Tensor values2, Tensor? bias2, bool relu2, Tensor? packed2) -> (Tensor, Tensor)");
  // A ResNet bottleneck block's convolutions: 1x1, 3x3 (stride 1, padding 1), 1x1 (each of one group, with
  // its bias and ReLU), the residual added to the last one's output before its ReLU: a tensor, or the
  // output of a shortcut layer (1x1, one group, its bias, no ReLU) on the block's input (a stage's
  // first block with a pointwise downsample). fp32 input; the weights' values of one dtype. The layers'
  // packings (pack_csr over their weights' columns) are read where the layers run apart.
  m.def(
      "csr_bottleneck_block(Tensor input, Tensor crow_indices1, Tensor col_indices1, Tensor values1, Tensor? bias1, "
      "int in_channels, bool relu1, Tensor crow_indices2, Tensor col_indices2, Tensor values2, Tensor? bias2, "
      "bool relu2, Tensor crow_indices3, Tensor col_indices3, Tensor values3, Tensor? bias3, bool relu3, "
      "Tensor? residual, Tensor? shortcut_crow_indices=None, Tensor? shortcut_col_indices=None, "
      "Tensor? shortcut_values=None, Tensor? shortcut_bias=None, Tensor? packed1=None, Tensor? packed2=None, "
      "Tensor? packed3=None, Tensor? shortcut_packed=None) -> Tensor");
  // softmax(scale * query @ key^T) @ value per batch and head, without mask or dropout (the dense
  // part of a sparse transformer layer). The output is laid out [batch, queries, heads, head_dim] and
  // returned as its [batch, heads, queries, head_dim] view, so merging the heads back
  // (.transpose(1, 2).flatten(2)) costs no copy.
  m.def("scaled_dot_product_attention(Tensor query, Tensor key, Tensor value, float scale) -> Tensor");
  // LayerNorm over the last dimension of input + residual (a transformer's residual connection),
  // one pass per row instead of a sum and a LayerNorm.
  m.def("add_layer_norm(Tensor input, Tensor residual, Tensor? weight, Tensor? bias, float eps) -> Tensor");
  // torch.max_pool2d (no dilation, floor mode) returned NCHW-contiguous, without the indices: on the CPU
  // from a channels_last copy of the input (none where it is channels_last already).
  m.def("max_pool2d(Tensor input, int[] kernel_size, int[] stride, int[] padding) -> Tensor");
}
