#include <torch/library.h>

#include <algorithm>
#include <array>
#include <limits>

#include "../../kernels/cpu/csr_conv2d.h"
#include "../../kernels/cpu/csr_spmm.h"
#include "../checks.h"
#include "cpu_common.h"

namespace sparse_rt {
namespace {

at::Tensor csr_conv2d_cpu(const at::Tensor& input, const at::Tensor& crow, const at::Tensor& col,
                          const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                          int64_t in_channels, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                          bool relu) {
  const char* op = "csr_conv2d";
  const SparseWeightInfo info = check_sparse_weight(op, crow, col, values, 1);
  check_activation(op, input, values);
  check_bias(op, bias, values, info.rows);
  const ConvGeometry geom = check_conv_geometry(input, in_channels, info.rows, kernel_size, stride,
                                                padding, dilation, groups);
  const int64_t cols = geom.weight_cols;
  const std::array<int64_t, 2> out_hw{geom.out_h, geom.out_w};
  check_sparse_indices(op, crow, col, cols);
  const int64_t batch = input.size(0);
  at::Tensor y = at::empty({batch, info.rows, out_hw[0], out_hw[1]},
                           input.options().dtype(at::kFloat));
  if (y.numel() > 0) {
    const at::Tensor x = as_fp32(input);
    const c10::optional<at::Tensor> bias32 = bias ? c10::optional<at::Tensor>(as_fp32(*bias)) : c10::nullopt;
    const cpu::Epilogue ep = make_epilogue(bias32, relu);
    const cpu::Conv2dGeometry g{in_channels, input.size(2), input.size(3), info.rows, out_hw[0],
                                out_hw[1], kernel_size[0], kernel_size[1], stride[0], stride[1],
                                padding[0], padding[1], dilation[0], dilation[1], groups};
    const cpu::PackedConvLayout layout = cpu::packed_conv_layout(g);
    TORCH_CHECK(layout.packed_len < std::numeric_limits<int32_t>::max(), "sparse_rt.", op,
                ": an input image of ", layout.packed_len, " packed floats exceeds int32 offsets");
    const int64_t in_image = in_channels * g.height * g.width, out_image = y[0].numel();
    // The output is computed "wide" (rows of phase_w columns); when phase_w == out_w the wide rows
    // are the output rows and the kernel writes y directly, otherwise a buffer is cropped into y.
    const bool crop = layout.phase_w != g.out_w;
    // The SpMM's dense operand: the packed image, or the input itself for 1x1 stride-1 unpadded
    // convolutions (whose layout is the input's; then the width is not padded, so no read runs
    // past the input, and the last wide % 8 columns take the kernel's overlapping last tile).
    const bool direct = cpu::conv_reads_input_directly(g);
    const int64_t image_stride = direct ? in_image : layout.packed_len;
    const int64_t width = direct ? layout.wide : layout.wide_padded;
    at::Tensor packed = direct ? x : at::empty({batch, layout.packed_len}, x.options());
    at::Tensor offsets = at::empty({info.nnz}, crow.options());
    at::Tensor wide = crop ? at::empty({batch, info.rows, layout.wide_padded}, x.options()) : at::Tensor();
    const int32_t* crow_p = crow.const_data_ptr<int32_t>();
    const std::vector<int32_t> column_offsets = cpu::conv_column_offsets(g, layout);
    at::parallel_for(0, info.rows, 64, [&](int64_t o0, int64_t o1) {
      cpu::conv_tap_offsets(crow_p, col.const_data_ptr<int32_t>(), g, layout, column_offsets,
                            offsets.mutable_data_ptr<int32_t>(), o0, o1);
    });
    if (!direct) {
      // Split by image and channel: a batch-1 image is packed by every thread too.
      const float* xp = x.const_data_ptr<float>();
      float* packed_p = packed.mutable_data_ptr<float>();
      at::parallel_for(0, batch * in_channels, 16, [&](int64_t u0, int64_t u1) {
        while (u0 < u1) {
          const int64_t n = u0 / in_channels, c0 = u0 % in_channels;
          const int64_t c1 = std::min(in_channels, c0 + (u1 - u0));
          cpu::pack_conv_input(g, layout, xp + n * in_image, packed_p + n * layout.packed_len, c0, c1);
          u0 += c1 - c0;
        }
      });
    }
    const float* packed_p = packed.const_data_ptr<float>();
    float* yp = y.mutable_data_ptr<float>();
    dispatch_value_type(values.scalar_type(), [&](auto tag) {
      using V = decltype(tag);
      // Column indices of the SpMM are the tap offsets into the packed image.
      const cpu::CsrView<V> w{crow_p, offsets.const_data_ptr<int32_t>(), values_ptr<V>(values),
                              info.rows, cols};
      parallel_over_rows(crow_p, info.rows, batch, info.nnz * layout.wide,
                         [&](int64_t n, int64_t o0, int64_t o1) {
                           const cpu::DenseRows b{packed_p + n * image_stride, 1, width};
                           if (crop) {
                             float* wide_p = wide.mutable_data_ptr<float>() + n * info.rows * layout.wide_padded;
                             cpu::csr_spmm(w, b, {wide_p, layout.wide_padded, 1, layout.wide}, ep, o0, o1);
                             cpu::crop_wide_output(g, layout, wide_p, yp + n * out_image, o0, o1);
                           } else {
                             cpu::csr_spmm(w, b, {yp + n * out_image, layout.wide, 1, layout.wide}, ep, o0, o1);
                           }
                         });
    });
  }
  return y.to(input.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_rt, CPU, m) { m.impl("csr_conv2d", &csr_conv2d_cpu); }

}  // namespace sparse_rt
