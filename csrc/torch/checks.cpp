#include "checks.h"

#include <ATen/ops/empty.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../kernels/checked_int.h"
#include "../kernels/cpu/index_checks.h"
#include "cpu/block_cache.h"
#include "cpu/cpu_common.h"

namespace sparse_rt {
namespace {

bool is_supported_value_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

void check_index_tensor(const char* op, const char* name, const at::Tensor& t) {
  SPARSE_RT_CHECK(t.scalar_type() == at::kInt, op, name, " must be int32, got ", t.scalar_type(),
                  " (convert with .int())");
  SPARSE_RT_CHECK(t.dim() == 1, op, name, " must be 1-D, got shape ", t.sizes());
  SPARSE_RT_CHECK(t.is_contiguous(), op, name, " must be contiguous");
}

// Structural checks on (crow, col, values) that cost O(1): ranks, dtypes, devices, contiguity and
// the agreement of their lengths.
SparseWeightInfo check_sparse_weight(const char* op, const at::Tensor& crow, const at::Tensor& col,
                                     const at::Tensor& values, int64_t value_rank) {
  check_index_tensor(op, "crow_indices", crow);
  check_index_tensor(op, "col_indices", col);
  SPARSE_RT_CHECK(crow.numel() >= 1, op,
                  "crow_indices must have rows + 1 >= 1 entries, got an empty tensor");
  SPARSE_RT_CHECK(is_supported_value_type(values.scalar_type()), op,
                  "values must be float32, float16 or bfloat16, got ", values.scalar_type());
  SPARSE_RT_CHECK(values.dim() == value_rank, op, "values must be ", value_rank, "-D, got shape ",
                  values.sizes());
  SPARSE_RT_CHECK(values.is_contiguous(), op, "values must be contiguous");
  SPARSE_RT_CHECK(values.size(0) == col.numel(), op, "values holds ", values.size(0),
                  " entries but col_indices holds ", col.numel());
  SPARSE_RT_CHECK(crow.device() == values.device() && col.device() == values.device(), op,
                  "crow_indices (", crow.device(), "), col_indices (", col.device(),
                  ") and values (", values.device(), ") must be on one device");
  SPARSE_RT_CHECK(col.numel() <= std::numeric_limits<int32_t>::max(), op, col.numel(),
                  " stored entries exceed the int32 index range");
  const int64_t bh = value_rank == 3 ? values.size(1) : 1;
  const int64_t bw = value_rank == 3 ? values.size(2) : 1;
  // Below 2^31, (rows + 1) * bh cannot overflow int64.
  SPARSE_RT_CHECK(bh > 0 && bw > 0 && bh <= std::numeric_limits<int32_t>::max() &&
                      bw <= std::numeric_limits<int32_t>::max(),
                  op, "block shape must be positive (and below 2^31), got ", bh, "x", bw);
  return {(crow.numel() - 1) * bh, col.numel(), bh, bw};
}

// The activation must share the weight's device and floating dtype, except that on the CPU an fp32
// activation may meet 16-bit values (weights stored in fp16 or bf16: the kernels widen each value to
// fp32 as they read it, and compute as for fp32 values); the bias, when given, is 1-D, `rows` long, on
// the weight's device, with the values' dtype or the activation's.
void check_activation_and_bias(const char* op, const at::Tensor& input,
                               const c10::optional<at::Tensor>& bias, const at::Tensor& values,
                               int64_t rows) {
  SPARSE_RT_CHECK(input.device() == values.device(), op, "input is on ", input.device(),
                  " but the weight is on ", values.device());
  const bool stored_16_bit = input.is_cpu() && input.scalar_type() == at::kFloat && values.scalar_type() != at::kFloat;
  SPARSE_RT_CHECK(input.scalar_type() == values.scalar_type() || stored_16_bit, op, "input dtype ",
                  input.scalar_type(), " does not match the weight values dtype ", values.scalar_type(),
                  input.is_cpu() ? "" : " (fp32 inputs with 16-bit values run on the CPU only)");
  if (!bias.has_value()) return;
  const at::Tensor& b = *bias;
  SPARSE_RT_CHECK(b.dim() == 1 && b.size(0) == rows, op, "bias must have shape [", rows, "], got ",
                  b.sizes());
  SPARSE_RT_CHECK(b.scalar_type() == values.scalar_type() || b.scalar_type() == input.scalar_type(), op,
                  "bias dtype ", b.scalar_type(), " matches neither the weight values dtype ", values.scalar_type(),
                  " nor the input dtype ", input.scalar_type());
  SPARSE_RT_CHECK(b.device() == values.device(), op, "bias is on ", b.device(),
                  " but the weight is on ", values.device());
}

}  // namespace

LinearProblem prepare_linear(const char* op, const at::Tensor& input, const at::Tensor& crow,
                             const at::Tensor& col, const at::Tensor& values,
                             const c10::optional<at::Tensor>& bias, int64_t in_features,
                             int64_t value_rank) {
  const SparseWeightInfo weight = check_sparse_weight(op, crow, col, values, value_rank);
  check_activation_and_bias(op, input, bias, values, weight.rows);
  SPARSE_RT_CHECK(in_features >= 0, op, "in_features must be >= 0, got ", in_features);
  SPARSE_RT_CHECK(in_features % weight.block_w == 0, op, "in_features=", in_features,
                  " is not a multiple of the block width ", weight.block_w);
  SPARSE_RT_CHECK(input.dim() >= 1 && input.size(-1) == in_features, op, "input has shape ",
                  input.sizes(), " but the layer expects in_features=", in_features,
                  " in the last dimension");
  std::vector<int64_t> out_shape = input.sizes().vec();
  out_shape.back() = weight.rows;
  int64_t batch = 1;
  for (size_t i = 0; i + 1 < out_shape.size(); ++i) batch *= out_shape[i];
  return {weight, batch, std::move(out_shape), in_features / weight.block_w};
}

SparseWeightInfo prepare_pack(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                              int64_t in_features) {
  const char* op = "pack_csr";
  const SparseWeightInfo weight = check_sparse_weight(op, crow, col, values, 1);
  SPARSE_RT_CHECK(in_features >= 0, op, "in_features must be >= 0, got ", in_features);
  return weight;
}

void check_packing(const char* op, const c10::optional<at::Tensor>& packed, const at::Tensor& values) {
  if (!packed) return;
  check_index_tensor(op, "packed", *packed);
  SPARSE_RT_CHECK(packed->device() == values.device(), op, "packed is on ", packed->device(),
                  " but the weight is on ", values.device());
  SPARSE_RT_CHECK(packed->is_cpu() || packed->numel() == 0, op,
                  "packed nonzeros are a layout of the CPU kernels; pass packed=None on ", packed->device());
}

std::string linears_layer_name(size_t layer) { return "csr_linears (layer " + std::to_string(layer) + ")"; }

std::vector<LinearProblem> prepare_linears(const at::Tensor& input, at::TensorList crows, at::TensorList cols,
                                           at::TensorList values,
                                           const c10::List<c10::optional<at::Tensor>>& biases,
                                           int64_t in_features,
                                           const c10::List<c10::optional<at::Tensor>>& packed) {
  const char* op = "csr_linears";
  SPARSE_RT_CHECK(!crows.empty() && cols.size() == crows.size() && values.size() == crows.size() &&
                      biases.size() == crows.size(),
                  op, "crow_indices, col_indices, values and bias must be lists of one length >= 1, got ",
                  crows.size(), ", ", cols.size(), ", ", values.size(), " and ", biases.size(), " entries");
  SPARSE_RT_CHECK(packed.empty() || packed.size() == crows.size(), op, "packed must be empty or hold one entry per "
                  "layer (", crows.size(), "), got ", packed.size());
  std::vector<LinearProblem> layers;
  for (size_t i = 0; i < crows.size(); ++i) {
    SPARSE_RT_CHECK(values[i].scalar_type() == values[0].scalar_type(), op, "the layers' values differ in dtype (",
                    values[0].scalar_type(), " in layer 0, ", values[i].scalar_type(), " in layer ", i, ")");
    layers.push_back(prepare_linear(linears_layer_name(i).c_str(), input, crows[i], cols[i], values[i],
                                    biases.get(i), in_features, 1));
    if (!packed.empty()) check_packing(linears_layer_name(i).c_str(), packed.get(i), values[i]);
  }
  return layers;
}

MlpProblem prepare_mlp(const at::Tensor& input, const at::Tensor& crow1, const at::Tensor& col1,
                       const at::Tensor& values1, const c10::optional<at::Tensor>& bias1,
                       const at::Tensor& crow2, const at::Tensor& col2, const at::Tensor& values2,
                       const c10::optional<at::Tensor>& bias2, int64_t in_features,
                       c10::string_view activation, const c10::optional<at::Tensor>& residual,
                       const c10::optional<at::Tensor>& packed1, const c10::optional<at::Tensor>& packed2) {
  const char* op = "csr_mlp";
  LinearProblem first = prepare_linear(kMlpFirstLayer, input, crow1, col1, values1, bias1, in_features, 1);
  SPARSE_RT_CHECK(values1.scalar_type() == values2.scalar_type(), op, "the layers' values differ in dtype (",
                  values1.scalar_type(), " and ", values2.scalar_type(), ")");
  // The second layer's input: the first's output, shaped [0, hidden] (no memory) for the checks.
  const at::Tensor hidden = at::empty({0, first.weight.rows}, input.options());
  LinearProblem second = prepare_linear(kMlpSecondLayer, hidden, crow2, col2, values2, bias2, first.weight.rows, 1);
  const bool relu = activation == "relu";
  SPARSE_RT_CHECK(relu || activation == "gelu" || activation == "gelu_tanh", op,
                  "activation must be 'relu', 'gelu' or 'gelu_tanh', got '", activation, "'");
  std::vector<int64_t> out_shape = first.out_shape;
  out_shape.back() = second.weight.rows;
  check_residual(op, residual, out_shape, input);
  check_packing(kMlpFirstLayer, packed1, values1);
  check_packing(kMlpSecondLayer, packed2, values2);
  return {std::move(first), std::move(second), std::move(out_shape), relu,
          activation == "gelu_tanh" ? "tanh" : "none"};
}

AttentionProblem prepare_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value) {
  const char* op = "scaled_dot_product_attention";
  const std::pair<const char*, const at::Tensor*> operands[] = {{"query", &query}, {"key", &key}, {"value", &value}};
  for (const auto& [name, t] : operands) {
    SPARSE_RT_CHECK(t->dim() == 4, op, name, " must be 4-D [batch, heads, tokens, head_dim], got shape ", t->sizes());
    SPARSE_RT_CHECK(is_supported_value_type(t->scalar_type()), op, name,
                    " must be float32, float16 or bfloat16, got ", t->scalar_type());
    SPARSE_RT_CHECK(t->scalar_type() == query.scalar_type() && t->device() == query.device(), op, name, " is ",
                    t->scalar_type(), " on ", t->device(), " but query is ", query.scalar_type(), " on ",
                    query.device());
  }
  SPARSE_RT_CHECK(key.sizes() == value.sizes(), op, "key and value must have one shape, got ", key.sizes(),
                  " and ", value.sizes());
  SPARSE_RT_CHECK(key.size(0) == query.size(0) && key.size(1) == query.size(1) && key.size(3) == query.size(3),
                  op, "key ", key.sizes(), " does not match query ", query.sizes(),
                  " in batch, heads or head_dim (dimensions 0, 1 and 3)");
  SPARSE_RT_CHECK(key.size(2) >= 1, op, "key and value have no tokens (shape ", key.sizes(),
                  "): a softmax over no keys is undefined");
  return {query.size(0), query.size(1), query.size(2), key.size(2), query.size(3)};
}

int64_t prepare_add_layer_norm(const at::Tensor& input, const at::Tensor& residual,
                               const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                               double eps) {
  const char* op = "add_layer_norm";
  SPARSE_RT_CHECK(input.dim() >= 1, op, "input must have at least one dimension, got a scalar");
  SPARSE_RT_CHECK(is_supported_value_type(input.scalar_type()), op, "input must be float32, float16 or bfloat16, got ",
                  input.scalar_type());
  SPARSE_RT_CHECK(residual.sizes() == input.sizes(), op, "residual has shape ", residual.sizes(),
                  " but input has shape ", input.sizes());
  SPARSE_RT_CHECK(residual.scalar_type() == input.scalar_type() && residual.device() == input.device(), op,
                  "residual is ", residual.scalar_type(), " on ", residual.device(), " but input is ",
                  input.scalar_type(), " on ", input.device());
  const int64_t features = input.size(-1);
  const std::pair<const char*, const c10::optional<at::Tensor>*> affine[] = {{"weight", &weight}, {"bias", &bias}};
  for (const auto& [name, t] : affine) {
    if (!t->has_value()) continue;
    const at::Tensor& v = **t;
    SPARSE_RT_CHECK(v.dim() == 1 && v.size(0) == features, op, name, " must have shape [", features,
                    "] (the input's last dimension), got ", v.sizes());
    SPARSE_RT_CHECK(v.scalar_type() == input.scalar_type() && v.device() == input.device(), op, name, " is ",
                    v.scalar_type(), " on ", v.device(), " but input is ", input.scalar_type(), " on ",
                    input.device());
  }
  SPARSE_RT_CHECK(eps >= 0, op, "eps must be >= 0, got ", eps);
  return features == 0 ? 0 : input.numel() / features;
}

ConvProblem prepare_conv(const at::Tensor& input, const at::Tensor& crow, const at::Tensor& col,
                         const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                         int64_t in_channels, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, const char* op) {
  const SparseWeightInfo weight = check_sparse_weight(op, crow, col, values, 1);
  check_activation_and_bias(op, input, bias, values, weight.rows);
  SPARSE_RT_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 &&
                      dilation.size() == 2,
                  op, "kernel_size, stride, padding and dilation must have 2 entries");
  SPARSE_RT_CHECK(input.dim() == 4, op, "input must be 4-D [N, C, H, W], got shape ",
                  input.sizes());
  SPARSE_RT_CHECK(in_channels >= 1, op, "in_channels must be >= 1, got ", in_channels);
  SPARSE_RT_CHECK(input.size(1) == in_channels, op, "input has ", input.size(1), " channels (shape ",
                  input.sizes(), ") but the layer expects ", in_channels);
  SPARSE_RT_CHECK(groups >= 1 && in_channels % groups == 0 && weight.rows % groups == 0, op,
                  "groups=", groups, " must divide in_channels=", in_channels,
                  " and out_channels=", weight.rows);
  // The bound keeps every product and sum below int64 overflow.
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  for (int i = 0; i < 2; ++i) {
    SPARSE_RT_CHECK(kernel_size[i] >= 1 && stride[i] >= 1 && dilation[i] >= 1 && padding[i] >= 0 &&
                        kernel_size[i] <= kMax && stride[i] <= kMax && dilation[i] <= kMax &&
                        padding[i] <= kMax,
                    op, "need kernel_size, stride, dilation >= 1 and padding >= 0 ",
                    "(each below 2^31), got kernel_size=", kernel_size, " stride=", stride,
                    " padding=", padding, " dilation=", dilation);
  }
  const CheckedInt index_cols = CheckedInt(in_channels / groups) * kernel_size[0] * kernel_size[1];
  SPARSE_RT_CHECK(!index_cols.overflowed(), op, "in_channels/groups*kh*kw = ", in_channels / groups, "*",
                  kernel_size[0], "*", kernel_size[1], " overflows int64");
  // The output size formula adds twice the padding to the input size.
  for (int i = 0; i < 2; ++i) {
    SPARSE_RT_CHECK(!(CheckedInt(input.size(2 + i)) + CheckedInt(2) * padding[i]).overflowed(), op,
                    "input size ", input.size(2 + i), " plus twice the padding ", padding[i], " overflows int64");
  }
  const Conv2dShape shape = with_output_size(
      {input.size(0), in_channels, input.size(2), input.size(3), weight.rows, 0, 0, kernel_size[0],
       kernel_size[1], stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
       groups});
  SPARSE_RT_CHECK(shape.out_h >= 1 && shape.out_w >= 1, op, "input ", input.sizes(),
                  " is smaller than the dilated kernel after padding");
  SPARSE_RT_CHECK(!(CheckedInt(shape.batch) * shape.out_channels * shape.out_h * shape.out_w).overflowed(), op,
                  "an output of [", shape.batch, ", ", shape.out_channels, ", ", shape.out_h, ", ", shape.out_w,
                  "] (input ", input.sizes(), ", padding=", padding, ", dilation=", dilation,
                  ", stride=", stride, ") has more elements than int64 counts");
  return {weight, shape, index_cols.value()};
}

PairProblem prepare_pointwise_conv_pair(const at::Tensor& input, const at::Tensor& crow1, const at::Tensor& col1,
                                        const at::Tensor& values1, const c10::optional<at::Tensor>& bias1,
                                        int64_t in_channels, const c10::optional<at::Tensor>& residual,
                                        const at::Tensor& crow2, const at::Tensor& col2, const at::Tensor& values2,
                                        const c10::optional<at::Tensor>& bias2) {
  const int64_t one[] = {1, 1}, none[] = {0, 0};
  const ConvProblem first = prepare_conv(input, crow1, col1, values1, bias1, in_channels, one, one, none, one, 1,
                                         kPairFirstLayer);
  const Conv2dShape& s = first.shape;
  std::vector<int64_t> middle_shape{s.batch, s.out_channels, s.height, s.width};
  check_residual(kPairFirstLayer, residual, middle_shape, input);
  // The second layer's input as prepare_conv reads it: its shape, dtype and device.
  const at::Tensor middle = at::empty({1, 1, 1, 1}, input.options()).expand(middle_shape);
  const ConvProblem second = prepare_conv(middle, crow2, col2, values2, bias2, s.out_channels, one, one, none, one, 1,
                                          kPairSecondLayer);
  return {first, second, std::move(middle_shape)};
}

BlockProblem prepare_bottleneck_block(const at::Tensor& input, const at::Tensor& crow1, const at::Tensor& col1,
                                      const at::Tensor& values1, const c10::optional<at::Tensor>& bias1,
                                      int64_t in_channels, const at::Tensor& crow2, const at::Tensor& col2,
                                      const at::Tensor& values2, const c10::optional<at::Tensor>& bias2,
                                      const at::Tensor& crow3, const at::Tensor& col3, const at::Tensor& values3,
                                      const c10::optional<at::Tensor>& bias3,
                                      const c10::optional<at::Tensor>& residual, const BlockShortcut& shortcut) {
  const int64_t one[] = {1, 1}, three[] = {3, 3}, none[] = {0, 0};
  // Each layer's input as prepare_conv reads it: its shape, dtype and device.
  const auto output_of = [&](const ConvProblem& layer) {
    const Conv2dShape& s = layer.shape;
    return at::empty({1, 1, 1, 1}, input.options()).expand({s.batch, s.out_channels, s.out_h, s.out_w});
  };
  const ConvProblem first = prepare_conv(input, crow1, col1, values1, bias1, in_channels, one, one, none, one, 1,
                                         kBlockLayers[0]);
  const ConvProblem second = prepare_conv(output_of(first), crow2, col2, values2, bias2, first.shape.out_channels,
                                          three, one, one, one, 1, kBlockLayers[1]);
  const ConvProblem last = prepare_conv(output_of(second), crow3, col3, values3, bias3, second.shape.out_channels, one,
                                        one, none, one, 1, kBlockLayers[2]);
  const Conv2dShape& s = last.shape;
  check_residual(kBlockLayers[2], residual, {s.batch, s.out_channels, s.out_h, s.out_w}, input);
  SPARSE_RT_CHECK(shortcut.crow.has_value() == shortcut.col.has_value() &&
                      shortcut.crow.has_value() == shortcut.values.has_value(),
                  kBlockShortcut, "shortcut_crow_indices, shortcut_col_indices and shortcut_values must be given "
                  "together");
  SPARSE_RT_CHECK(shortcut.given() || !shortcut.bias.has_value(), kBlockShortcut,
                  "shortcut_bias is given without a shortcut weight");
  if (!shortcut.given()) return {first, second, last, c10::nullopt};
  SPARSE_RT_CHECK(!residual.has_value(), kBlockShortcut,
                  "a residual and a shortcut layer were both given: the shortcut's output is the residual");
  const ConvProblem added = prepare_conv(input, *shortcut.crow, *shortcut.col, *shortcut.values, shortcut.bias,
                                         in_channels, one, one, none, one, 1, kBlockShortcut);
  SPARSE_RT_CHECK(added.shape.out_channels == s.out_channels, kBlockShortcut, "has ", added.shape.out_channels,
                  " output channels but the block's last layer has ", s.out_channels);
  return {first, second, last, added};
}

void check_block_packings(const c10::optional<at::Tensor>& packed1, const c10::optional<at::Tensor>& packed2,
                          const c10::optional<at::Tensor>& packed3, const c10::optional<at::Tensor>& shortcut_packed,
                          const at::Tensor& values1, const at::Tensor& values2, const at::Tensor& values3,
                          const BlockShortcut& shortcut) {
  check_packing(kBlockLayers[0], packed1, values1);
  check_packing(kBlockLayers[1], packed2, values2);
  check_packing(kBlockLayers[2], packed3, values3);
  SPARSE_RT_CHECK(shortcut.given() || !shortcut_packed.has_value(), kBlockShortcut,
                  "shortcut_packed is given without a shortcut weight");
  if (shortcut.given()) check_packing(kBlockShortcut, shortcut_packed, *shortcut.values);
}

PoolProblem prepare_max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding) {
  const char* op = "max_pool2d";
  SPARSE_RT_CHECK(input.dim() == 4, op, "input must be 4-D [N, C, H, W], got shape ", input.sizes());
  SPARSE_RT_CHECK(is_supported_value_type(input.scalar_type()), op, "input must be float32, float16 or bfloat16, got ",
                  input.scalar_type());
  SPARSE_RT_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2, op,
                  "kernel_size, stride and padding must have 2 entries");
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  for (int i = 0; i < 2; ++i) {
    SPARSE_RT_CHECK(kernel_size[i] >= 1 && stride[i] >= 1 && padding[i] >= 0 && kernel_size[i] <= kMax &&
                        stride[i] <= kMax && padding[i] <= kernel_size[i] / 2,
                    op, "need kernel_size, stride >= 1 (below 2^31) and 0 <= padding <= kernel_size / 2, got ",
                    "kernel_size=", kernel_size, " stride=", stride, " padding=", padding);
  }
  // Padding is at most half the kernel, so the sizes below stay far from overflow.
  const int64_t out_h = (input.size(2) + 2 * padding[0] - kernel_size[0]) / stride[0] + 1;
  const int64_t out_w = (input.size(3) + 2 * padding[1] - kernel_size[1]) / stride[1] + 1;
  SPARSE_RT_CHECK(input.size(2) + 2 * padding[0] >= kernel_size[0] && input.size(3) + 2 * padding[1] >= kernel_size[1],
                  op, "input ", input.sizes(), " is smaller than the kernel ", kernel_size, " after padding ",
                  padding);
  return {input.size(0), input.size(1), input.size(2), input.size(3), kernel_size[0], kernel_size[1],
          stride[0], stride[1], padding[0], padding[1], out_h, out_w};
}

void check_residual(const char* op, const c10::optional<at::Tensor>& residual, at::IntArrayRef out_shape,
                    const at::Tensor& input) {
  if (!residual.has_value()) return;
  const at::Tensor& r = *residual;
  SPARSE_RT_CHECK(r.sizes() == out_shape, op, "residual has shape ", r.sizes(), " but the output has shape ",
                  out_shape);
  SPARSE_RT_CHECK(r.scalar_type() == input.scalar_type(), op, "residual dtype ", r.scalar_type(),
                  " does not match the input dtype ", input.scalar_type());
  SPARSE_RT_CHECK(r.device() == input.device(), op, "residual is on ", r.device(), " but the input is on ",
                  input.device());
}

at::Tensor allocate(const char* op, const char* what, at::IntArrayRef sizes, const at::TensorOptions& options) {
  try {
    return options.device().is_cpu() ? empty_cached(sizes, options) : at::empty(sizes, options);
  } catch (const c10::Error& e) {
    CheckedInt bytes(static_cast<int64_t>(options.dtype().itemsize()));
    for (const int64_t size : sizes) bytes = bytes * size;
    SPARSE_RT_CHECK(false, op, "cannot allocate the ", what, " ", sizes, " (",
                    bytes.overflowed() ? std::string("over 2^63") : std::to_string(bytes.value()),
                    " bytes): ", e.what_without_backtrace());
  }
}

namespace {

bool env_flag(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && std::strcmp(value, "1") == 0;
}

// A process-wide opt-in (its environment variable, or the setter) that each thread may override
// with a state of its own: -1 follows the process, 0 is off, 1 on.
struct OptIn {
  std::atomic<bool> process;
  bool enabled(int thread_state) const {
    return thread_state >= 0 ? thread_state == 1 : process.load(std::memory_order_relaxed);
  }
};

int exchange_thread_state(int& thread_state, int state, const char* what) {
  TORCH_CHECK(state >= -1 && state <= 1, "sparse_rt: thread ", what, " state must be -1, 0 or 1");
  const int previous = thread_state;
  thread_state = state;
  return previous;
}

OptIn full_index_checks{env_flag("SPARSE_RT_CHECK_INDICES")};
thread_local int thread_full_index_checks = -1;
OptIn trusted_packings{env_flag("SPARSE_RT_TRUST_PACKINGS")};
thread_local int thread_trusted_packings = -1;

}  // namespace

bool full_index_checks_enabled() { return full_index_checks.enabled(thread_full_index_checks); }

void set_full_index_checks(bool enabled) { full_index_checks.process.store(enabled); }

int set_thread_full_index_checks(int state) {
  return exchange_thread_state(thread_full_index_checks, state, "full-index-check");
}

bool trusted_packings_enabled() { return trusted_packings.enabled(thread_trusted_packings); }

void set_trusted_packings(bool enabled) { trusted_packings.process.store(enabled); }

int set_thread_trusted_packings(int state) {
  return exchange_thread_state(thread_trusted_packings, state, "trusted-packing");
}

void check_sparse_indices(const char* op, const at::Tensor& crow, const at::Tensor& col,
                          int64_t cols, bool check_columns) {
  SPARSE_RT_CHECK(crow.is_cpu() && col.is_cpu(), op, "check_sparse_indices expects CPU tensors");
  const std::string error =
      cpu::find_index_error(crow.const_data_ptr<int32_t>(), crow.numel() - 1, col.const_data_ptr<int32_t>(),
                            col.numel(), cols, check_columns, torch_parallel_for());
  SPARSE_RT_CHECK(error.empty(), op, error);
}

}  // namespace sparse_rt
