// CUDA implementation of sparse_rt::csr_conv2d (schema in csrc/torch/registration.cpp).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
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
                           bool relu) {
  constexpr const char* op = "csr_conv2d";
  const SparseWeightInfo info = check_sparse_weight(op, crow_indices, col_indices, values, 1);
  check_activation(op, input, values);
  check_bias(op, bias, values, info.rows);
  const ConvGeometry geom = check_conv_geometry(input, in_channels, info.rows, kernel_size, stride,
                                                padding, dilation, groups);
  const int64_t weight_cols = geom.weight_cols;
  const std::array<int64_t, 2> out_hw{geom.out_h, geom.out_w};
  // The kernel keeps a channel index in 32 bits (its shared-memory tap table).
  TORCH_CHECK(in_channels <= std::numeric_limits<int32_t>::max(), op, ": too many input channels");

  const c10::cuda::CUDAGuard guard(input.device());
  maybe_check_indices(op, crow_indices, col_indices, weight_cols);
  const at::Tensor x = input.contiguous();
  const at::Tensor b = contiguous_bias(bias);
  at::Tensor y = at::empty({input.size(0), info.rows, out_hw[0], out_hw[1]}, x.options());
  if (y.numel() == 0) return y;

  const cuda::Conv2dShape shape{input.size(0), in_channels, input.size(2), input.size(3),
                                info.rows,      out_hw[0],   out_hw[1],     kernel_size[0],
                                kernel_size[1], stride[0],   stride[1],     padding[0],
                                padding[1],     dilation[0], dilation[1],   groups};
  const cudaStream_t stream = current_stream();
  dispatch_floating(op, x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    C10_CUDA_CHECK(cuda::csr_conv2d(ptr<T>(x), crow_indices.const_data_ptr<int32_t>(),
                                    col_indices.const_data_ptr<int32_t>(), ptr<T>(values),
                                    ptr_or_null<T>(b), mutable_ptr<T>(y), shape, relu,
                                    stream));
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_rt, CUDA, m) { m.impl("csr_conv2d", &csr_conv2d_cuda); }

}  // namespace sparse_rt
