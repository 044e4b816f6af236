#include <torch/library.h>

#include <new>

#include "../../kernels/cpu/csr_conv2d.h"
#include "../checks.h"
#include "block_cache.h"
#include "cpu_common.h"

namespace sparse_rt {
namespace {

// Scratch of n elements, or none (no allocation) when the kernel needs none.
at::Tensor scratch(int64_t n, const at::TensorOptions& options) {
  return n > 0 ? empty_cached({n}, options) : at::Tensor();
}

template <typename T>
T* data_or_null(at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

// csr_conv2d, its errors naming `op` (a block's layer names its place in the block).
at::Tensor conv2d_layer(const char* op, const at::Tensor& input, const at::Tensor& crow, const at::Tensor& col,
                        const at::Tensor& values, const c10::optional<at::Tensor>& bias, int64_t in_channels,
                        at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation, int64_t groups, bool relu, const c10::optional<at::Tensor>& residual,
                        const c10::optional<at::Tensor>& packed) {
  const ConvProblem p = prepare_conv(input, crow, col, values, bias, in_channels, kernel_size,
                                     stride, padding, dilation, groups);
  const Conv2dShape& s = p.shape;
  const std::vector<int64_t> out_shape{s.batch, s.out_channels, s.out_h, s.out_w};
  check_residual(op, residual, out_shape, input);
  check_packing(op, packed, values);
  check_sparse_indices(op, crow, col, p.index_cols, full_index_checks_enabled());
  at::Tensor y = allocate(op, "output", out_shape, input.options().dtype(at::kFloat));
  if (y.numel() > 0) {
    const at::Tensor x = as_fp32(input);
    const c10::optional<at::Tensor> bias32 = as_fp32(bias), residual32 = as_fp32(residual);
    cpu::PackedConvLayout layout =
        cpu::packed_conv_layout(s, p.weight.stored, packed.has_value() && packed->numel() > 0);
    const cpu::ParallelFor pf = torch_parallel_for();
    at::Tensor image, offsets, panels;
    try {
      const cpu::ConvScratchSizes sizes = cpu::conv_scratch_sizes(s, layout, p.weight.stored, pf.num_threads);
      image = scratch(sizes.packed, x.options());
      offsets = scratch(sizes.offsets, crow.options());
      panels = scratch(sizes.panels, x.options());
    } catch (const c10::Error&) {
      // The packed path's scratch does not fit in memory: the gather path needs none.
      layout.gather = true;
      image = offsets = panels = at::Tensor();
    }
    const cpu::ConvScratch buffers{data_or_null<float>(image), data_or_null<int32_t>(offsets),
                                   data_or_null<float>(panels)};
    try {
      cpu::conv_tap_offsets(s, layout, crow.const_data_ptr<int32_t>(), col.const_data_ptr<int32_t>(),
                            data_or_null<int32_t>(offsets), pf);
      dispatch_value_type(values.scalar_type(), [&](auto tag) {
        using V = decltype(tag);
        cpu::CsrView<V> w{crow.const_data_ptr<int32_t>(), col.const_data_ptr<int32_t>(),
                          values_ptr<V>(values), s.out_channels, p.index_cols};
        // Only the panels layout reads a packing, whose columns are the panels' rows.
        cpu::PackedNonzeros view;
        if (layout.panels) w.packed = checked_packing(op, packed, w, s.batch * s.out_h * s.out_w, view);
        cpu::csr_conv2d(s, layout, w, x.const_data_ptr<float>(), y.mutable_data_ptr<float>(),
                        make_epilogue(bias32, relu, residual32), buffers, pf);
      });
    } catch (const std::bad_alloc&) {  // the packed path's table of one offset per weight column
      SPARSE_RT_CHECK(false, op, "out of memory for the offsets of the weight's ", p.index_cols, " columns");
    }
  }
  return y.to(input.scalar_type());
}

at::Tensor csr_conv2d_cpu(const at::Tensor& input, const at::Tensor& crow, const at::Tensor& col,
                          const at::Tensor& values, const c10::optional<at::Tensor>& bias, int64_t in_channels,
                          at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, int64_t groups, bool relu,
                          const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& packed) {
  return conv2d_layer("csr_conv2d", input, crow, col, values, bias, in_channels, kernel_size, stride, padding, dilation,
                      groups, relu, residual, packed);
}

std::tuple<at::Tensor, at::Tensor> csr_pointwise_conv_pair_cpu(
    const at::Tensor& input, const at::Tensor& crow1, const at::Tensor& col1, const at::Tensor& values1,
    const c10::optional<at::Tensor>& bias1, int64_t in_channels, bool relu1, const c10::optional<at::Tensor>& residual,
    const c10::optional<at::Tensor>& packed1, const at::Tensor& crow2, const at::Tensor& col2,
    const at::Tensor& values2, const c10::optional<at::Tensor>& bias2, bool relu2,
    const c10::optional<at::Tensor>& packed2) {
  const char* op = "csr_pointwise_conv_pair";
  const int64_t one[] = {1, 1}, none[] = {0, 0};
  SPARSE_RT_CHECK(input.scalar_type() == at::kFloat, op, "input must be float32, got ", input.scalar_type());
  const PairProblem p =
      prepare_pointwise_conv_pair(input, crow1, col1, values1, bias1, in_channels, residual, crow2, col2, values2, bias2);
  const ConvProblem &first = p.first, &second = p.second;
  const Conv2dShape& s = first.shape;
  check_packing(kPairFirstLayer, packed1, values1);
  check_sparse_indices(kPairFirstLayer, crow1, col1, first.index_cols, full_index_checks_enabled());
  SPARSE_RT_CHECK(values1.scalar_type() == values2.scalar_type(), op, "the layers' values must share a dtype, got ",
                  values1.scalar_type(), " and ", values2.scalar_type());
  check_packing(kPairSecondLayer, packed2, values2);
  check_sparse_indices(kPairSecondLayer, crow2, col2, second.index_cols, full_index_checks_enabled());
  const cpu::ParallelFor pf = torch_parallel_for();
  // What chains_pointwise reads of the first layer's epilogue: whether it adds a residual.
  const cpu::Epilogue shape_of_ep1{nullptr, relu1, residual ? residual->const_data_ptr<float>() : nullptr};
  if (!cpu::chains_pointwise(s, shape_of_ep1, pf.num_threads)) {
    // Too few panels to give each thread whole ones, or a first output that stays in the cache
    // anyway: the layers one after the other.
    at::Tensor out1 = csr_conv2d_cpu(input, crow1, col1, values1, bias1, in_channels, one, one, none, one, 1, relu1,
                                     residual, packed1);
    at::Tensor out2 = csr_conv2d_cpu(out1, crow2, col2, values2, bias2, s.out_channels, one, one, none, one, 1,
                                     relu2, c10::nullopt, packed2);
    return {out1, out2};
  }
  at::Tensor y1 = allocate(op, "first output", p.middle_shape, input.options());
  at::Tensor y2 = allocate(op, "second output", {s.batch, second.shape.out_channels, s.height, s.width},
                           input.options());
  const at::Tensor x = input.contiguous();
  const c10::optional<at::Tensor> bias1_32 = as_fp32(bias1), bias2_32 = as_fp32(bias2), residual32 = as_fp32(residual);
  at::Tensor buffers = empty_cached({cpu::pointwise_chain_scratch(s, residual.has_value(), pf.num_threads)}, x.options());
  dispatch_value_type(values1.scalar_type(), [&](auto tag) {
    using V = decltype(tag);
    cpu::CsrView<V> w1{crow1.const_data_ptr<int32_t>(), col1.const_data_ptr<int32_t>(), values_ptr<V>(values1),
                       s.out_channels, first.index_cols};
    cpu::CsrView<V> w2{crow2.const_data_ptr<int32_t>(), col2.const_data_ptr<int32_t>(), values_ptr<V>(values2),
                       second.shape.out_channels, second.index_cols};
    cpu::PackedNonzeros view1, view2;
    const int64_t pixels = s.batch * s.height * s.width;
    w1.packed = checked_packing(kPairFirstLayer, packed1, w1, pixels, view1);
    w2.packed = checked_packing(kPairSecondLayer, packed2, w2, pixels, view2);
    cpu::pointwise_conv_chain(s, w1, make_epilogue(bias1_32, relu1, residual32), y1.mutable_data_ptr<float>(), w2,
                              make_epilogue(bias2_32, relu2, c10::nullopt), y2.mutable_data_ptr<float>(),
                              x.const_data_ptr<float>(), buffers.mutable_data_ptr<float>(), pf);
  });
  return {y1, y2};
}

// Band by band through the three layers (and the shortcut, summed in the band) where the block's
// activations leave the cache (cpu::bottleneck_band_rows); elsewhere the layers one after the other.
at::Tensor csr_bottleneck_block_cpu(const at::Tensor& input, const at::Tensor& crow1, const at::Tensor& col1,
                                    const at::Tensor& values1, const c10::optional<at::Tensor>& bias1,
                                    int64_t in_channels, bool relu1, const at::Tensor& crow2, const at::Tensor& col2,
                                    const at::Tensor& values2, const c10::optional<at::Tensor>& bias2, bool relu2,
                                    const at::Tensor& crow3, const at::Tensor& col3, const at::Tensor& values3,
                                    const c10::optional<at::Tensor>& bias3, bool relu3,
                                    const c10::optional<at::Tensor>& residual,
                                    const c10::optional<at::Tensor>& shortcut_crow,
                                    const c10::optional<at::Tensor>& shortcut_col,
                                    const c10::optional<at::Tensor>& shortcut_values,
                                    const c10::optional<at::Tensor>& shortcut_bias,
                                    const c10::optional<at::Tensor>& packed1, const c10::optional<at::Tensor>& packed2,
                                    const c10::optional<at::Tensor>& packed3,
                                    const c10::optional<at::Tensor>& shortcut_packed) {
  const char* op = "csr_bottleneck_block";
  SPARSE_RT_CHECK(input.scalar_type() == at::kFloat, op, "input must be float32, got ", input.scalar_type());
  const BlockShortcut shortcut{shortcut_crow, shortcut_col, shortcut_values, shortcut_bias};
  const BlockProblem p = prepare_bottleneck_block(input, crow1, col1, values1, bias1, in_channels, crow2, col2, values2,
                                                  bias2, crow3, col3, values3, bias3, residual, shortcut);
  const int layer_count = shortcut.given() ? 4 : 3;
  const at::Tensor* crows[] = {&crow1, &crow2, &crow3, shortcut.given() ? &*shortcut_crow : nullptr};
  const at::Tensor* cols[] = {&col1, &col2, &col3, shortcut.given() ? &*shortcut_col : nullptr};
  const at::Tensor* values[] = {&values1, &values2, &values3, shortcut.given() ? &*shortcut_values : nullptr};
  const ConvProblem* layers[] = {&p.first, &p.second, &p.last, p.shortcut ? &*p.shortcut : nullptr};
  const char* names[] = {kBlockLayers[0], kBlockLayers[1], kBlockLayers[2], kBlockShortcut};
  check_block_packings(packed1, packed2, packed3, shortcut_packed, values1, values2, values3, shortcut);
  for (int i = 0; i < layer_count; ++i) {
    check_sparse_indices(names[i], *crows[i], *cols[i], layers[i]->index_cols, full_index_checks_enabled());
    SPARSE_RT_CHECK(values[i]->scalar_type() == values1.scalar_type(), op,
                    "the layers' values must share a dtype, got ", values1.scalar_type(), " and ",
                    values[i]->scalar_type());
  }
  const Conv2dShape &s1 = p.first.shape, &s3 = p.last.shape;
  const cpu::BottleneckShape b{s1.batch, s1.in_channels, s1.height, s1.width, s1.out_channels,
                               p.second.shape.out_channels, s3.out_channels};
  const cpu::ParallelFor pf = torch_parallel_for();
  const int64_t rows = cpu::bottleneck_band_rows(b, p.second.weight.stored, pf.num_threads);
  if (rows == 0) {
    const int64_t one[] = {1, 1}, three[] = {3, 3}, none[] = {0, 0};
    const at::Tensor y1 = conv2d_layer(names[0], input, crow1, col1, values1, bias1, b.in_channels, one, one, none, one,
                                       1, relu1, c10::nullopt, packed1);
    const at::Tensor y2 = conv2d_layer(names[1], y1, crow2, col2, values2, bias2, b.mid1, three, one, one, one, 1, relu2,
                                       c10::nullopt, packed2);
    if (!shortcut.given()) {
      return conv2d_layer(names[2], y2, crow3, col3, values3, bias3, b.mid2, one, one, none, one, 1, relu3, residual,
                          packed3);
    }
    // The shortcut takes the sum here (the same values: a sum of two is commutative).
    const at::Tensor y3 = conv2d_layer(names[2], y2, crow3, col3, values3, bias3, b.mid2, one, one, none, one, 1, false,
                                       c10::nullopt, packed3);
    return conv2d_layer(names[3], input, *shortcut_crow, *shortcut_col, *shortcut_values, shortcut_bias, b.in_channels,
                        one, one, none, one, 1, relu3, y3, shortcut_packed);
  }
  at::Tensor y = allocate(op, "output", {s3.batch, s3.out_channels, s3.out_h, s3.out_w}, input.options());
  const at::Tensor x = input.contiguous();
  const c10::optional<at::Tensor> bias1_32 = as_fp32(bias1), bias2_32 = as_fp32(bias2), bias3_32 = as_fp32(bias3),
                                  bias4_32 = as_fp32(shortcut_bias), residual32 = as_fp32(residual);
  const cpu::BottleneckScratchSizes sizes = cpu::bottleneck_scratch(b, rows, p.second.weight.stored, pf.num_threads,
                                                                    shortcut.given());
  at::Tensor buffers = empty_cached({sizes.floats}, x.options());
  at::Tensor offsets = empty_cached({sizes.offsets}, crow2.options());
  dispatch_value_type(values1.scalar_type(), [&](auto tag) {
    using V = decltype(tag);
    const auto view = [&](int i) {
      return cpu::CsrView<V>{crows[i]->const_data_ptr<int32_t>(), cols[i]->const_data_ptr<int32_t>(),
                             values_ptr<V>(*values[i]), layers[i]->shape.out_channels, layers[i]->index_cols};
    };
    const c10::optional<cpu::CsrView<V>> added = shortcut.given() ? c10::optional<cpu::CsrView<V>>(view(3))
                                                                  : c10::nullopt;
    cpu::bottleneck_block(b, rows, view(0), make_epilogue(bias1_32, relu1, c10::nullopt), view(1),
                          make_epilogue(bias2_32, relu2, c10::nullopt), view(2),
                          make_epilogue(bias3_32, relu3, residual32), added ? &*added : nullptr,
                          make_epilogue(bias4_32, false, c10::nullopt), x.const_data_ptr<float>(),
                          y.mutable_data_ptr<float>(), buffers.mutable_data_ptr<float>(),
                          offsets.numel() > 0 ? offsets.mutable_data_ptr<int32_t>() : nullptr, pf);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_rt, CPU, m) {
  m.impl("csr_conv2d", &csr_conv2d_cpu);
  m.impl("csr_pointwise_conv_pair", &csr_pointwise_conv_pair_cpu);
  m.impl("csr_bottleneck_block", &csr_bottleneck_block_cpu);
}

}  // namespace sparse_rt
