// CUDA implementation of sparse_rt::max_pool2d (schema in csrc/torch/registration.cpp): PyTorch's
// max pooling, made NCHW-contiguous (correct, not fused).
#include <ATen/ops/max_pool2d.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"

namespace sparse_rt {
namespace {

at::Tensor max_pool2d_cuda(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding) {
  prepare_max_pool2d(input, kernel_size, stride, padding);
  const c10::cuda::CUDAGuard guard(input.device());
  return at::max_pool2d(input, kernel_size, stride, padding, {1, 1}, false).contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_rt, CUDA, m) { m.impl("max_pool2d", &max_pool2d_cuda); }

}  // namespace sparse_rt
