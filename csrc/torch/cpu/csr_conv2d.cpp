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

at::Tensor csr_conv2d_cpu(const at::Tensor& input, const at::Tensor& crow, const at::Tensor& col,
                          const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                          int64_t in_channels, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                          bool relu, const c10::optional<at::Tensor>& residual,
                          const c10::optional<at::Tensor>& packed) {
  const char* op = "csr_conv2d";
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
    cpu::PackedConvLayout layout = cpu::packed_conv_layout(s, p.weight.stored);
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
        // Only the panels layout reads a packing, whose columns are the panels'.
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

}  // namespace

TORCH_LIBRARY_IMPL(sparse_rt, CPU, m) { m.impl("csr_conv2d", &csr_conv2d_cpu); }

}  // namespace sparse_rt
