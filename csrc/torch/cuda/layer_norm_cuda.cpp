// CUDA implementation of sparse_rt::add_layer_norm (schema in csrc/torch/registration.cpp): the
// sum and PyTorch's LayerNorm, in turn (correct, not fused).
#include <ATen/ops/add.h>
#include <ATen/ops/layer_norm.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"

namespace sparse_rt {
namespace {

at::Tensor add_layer_norm_cuda(const at::Tensor& input, const at::Tensor& residual,
                               const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                               double eps) {
  prepare_add_layer_norm(input, residual, weight, bias, eps);
  const c10::cuda::CUDAGuard guard(input.device());
  return at::layer_norm(at::add(input, residual), {input.size(-1)}, weight, bias, eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_rt, CUDA, m) { m.impl("add_layer_norm", &add_layer_norm_cuda); }

}  // namespace sparse_rt
