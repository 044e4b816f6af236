// CUDA implementation of sparse_rt::csr_conv2d (schema in csrc/torch/registration.cpp).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../checks.h"
#include "cuda_utils.h"

namespace sparse_rt {
namespace {

using namespace cuda_binding;

at::Tensor csr_conv2d_cuda(const at::Tensor& input, const at::Tensor& crow_indices,
                           const at::Tensor& col_indices, const at::Tensor& values,
                           const c10::optional<at::Tensor>& bias, int64_t in_channels,
                           at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           bool relu, const c10::optional<at::Tensor>& residual,
                           const c10::optional<at::Tensor>& packed) {
  constexpr const char* op = "csr_conv2d";
  const ConvProblem p = prepare_conv(input, crow_indices, col_indices, values, bias, in_channels,
                                     kernel_size, stride, padding, dilation, groups);
  const Conv2dShape& s = p.shape;
  const std::vector<int64_t> out_shape{s.batch, s.out_channels, s.out_h, s.out_w};
  check_residual(op, residual, out_shape, input);
  check_packing(op, packed, values);  // empty or none here: CUDA has no packed layout
  // A limit of this backend's kernel (a channel index in its 32-bit shared-memory tap table).
  SPARSE_RT_CHECK(in_channels <= std::numeric_limits<int32_t>::max(), op, "in_channels=", in_channels,
                  " exceeds the CUDA kernel's limit of 2^31 - 1");

  const c10::cuda::CUDAGuard guard(input.device());
  maybe_check_indices(op, crow_indices, col_indices, p.index_cols);
  const at::Tensor x = input.contiguous();
  const at::Tensor b = contiguous_bias(bias);
  at::Tensor y = allocate(op, "output", out_shape, x.options());
  if (y.numel() == 0) return y;

  const cudaStream_t stream = current_stream();
  dispatch_floating(op, x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    C10_CUDA_CHECK(cuda::csr_conv2d(ptr<T>(x), crow_indices.const_data_ptr<int32_t>(),
                                    col_indices.const_data_ptr<int32_t>(), ptr<T>(values),
                                    ptr_or_null<T>(b), mutable_ptr<T>(y), s, p.weight.stored,
                                    kernel_relu(relu, residual), stream));
  });
  add_residual(y, residual, relu);
  return y;
}

// The two layers one after the other, each checked first under its own name (the CPU op's panels
// through both layers have no counterpart here).
std::tuple<at::Tensor, at::Tensor> csr_pointwise_conv_pair_cuda(
    const at::Tensor& input, const at::Tensor& crow1, const at::Tensor& col1, const at::Tensor& values1,
    const c10::optional<at::Tensor>& bias1, int64_t in_channels, bool relu1, const c10::optional<at::Tensor>& residual,
    const c10::optional<at::Tensor>& packed1, const at::Tensor& crow2, const at::Tensor& col2,
    const at::Tensor& values2, const c10::optional<at::Tensor>& bias2, bool relu2,
    const c10::optional<at::Tensor>& packed2) {
  const int64_t one[] = {1, 1}, none[] = {0, 0};
  const Conv2dShape s =
      prepare_pointwise_conv_pair(input, crow1, col1, values1, bias1, in_channels, residual, crow2, col2, values2, bias2)
          .first.shape;
  at::Tensor y1 = csr_conv2d_cuda(input, crow1, col1, values1, bias1, in_channels, one, one, none, one, 1, relu1,
                                  residual, packed1);
  at::Tensor y2 = csr_conv2d_cuda(y1, crow2, col2, values2, bias2, s.out_channels, one, one, none, one, 1, relu2,
                                  c10::nullopt, packed2);
  return {y1, y2};
}

// The three layers (and the shortcut, before the last) one after the other, checked first under their
// own names (the CPU op's bands through all of them have no counterpart here).
at::Tensor csr_bottleneck_block_cuda(const at::Tensor& input, const at::Tensor& crow1, const at::Tensor& col1,
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
                                     const c10::optional<at::Tensor>& packed1,
                                     const c10::optional<at::Tensor>& packed2,
                                     const c10::optional<at::Tensor>& packed3,
                                     const c10::optional<at::Tensor>& shortcut_packed) {
  const int64_t one[] = {1, 1}, three[] = {3, 3}, none[] = {0, 0};
  const BlockShortcut shortcut{shortcut_crow, shortcut_col, shortcut_values, shortcut_bias};
  const BlockProblem p = prepare_bottleneck_block(input, crow1, col1, values1, bias1, in_channels, crow2, col2, values2,
                                                  bias2, crow3, col3, values3, bias3, residual, shortcut);
  // Empty or none here: CUDA has no packed layout.
  check_block_packings(packed1, packed2, packed3, shortcut_packed, values1, values2, values3, shortcut);
  const at::Tensor y1 = csr_conv2d_cuda(input, crow1, col1, values1, bias1, p.first.shape.in_channels, one, one, none,
                                        one, 1, relu1, c10::nullopt, c10::nullopt);
  const at::Tensor y2 = csr_conv2d_cuda(y1, crow2, col2, values2, bias2, p.second.shape.in_channels, three, one, one,
                                        one, 1, relu2, c10::nullopt, c10::nullopt);
  const c10::optional<at::Tensor> summand =
      shortcut.given() ? c10::optional<at::Tensor>(csr_conv2d_cuda(input, *shortcut_crow, *shortcut_col,
                                                                    *shortcut_values, shortcut_bias,
                                                                    p.first.shape.in_channels, one, one, none, one, 1,
                                                                    false, c10::nullopt, c10::nullopt))
                       : residual;
  return csr_conv2d_cuda(y2, crow3, col3, values3, bias3, p.last.shape.in_channels, one, one, none, one, 1, relu3,
                         summand, c10::nullopt);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_rt, CUDA, m) {
  m.impl("csr_conv2d", &csr_conv2d_cuda);
  m.impl("csr_pointwise_conv_pair", &csr_pointwise_conv_pair_cuda);
  m.impl("csr_bottleneck_block", &csr_bottleneck_block_cuda);
}

}  // namespace sparse_rt
