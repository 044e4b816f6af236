// CUDA implementation of sparse_rt::bsr_linear (schema in csrc/torch/registration.cpp).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "cuda_utils.h"

namespace sparse_rt {
namespace {

using namespace cuda_binding;

at::Tensor bsr_linear_cuda(const at::Tensor& input, const at::Tensor& crow_indices,
                           const at::Tensor& col_indices, const at::Tensor& values,
                           const c10::optional<at::Tensor>& bias, int64_t in_features, bool relu,
                           const c10::optional<at::Tensor>& residual) {
  constexpr const char* op = "bsr_linear";
  const LinearProblem p = prepare_linear(op, input, crow_indices, col_indices, values, bias,
                                         in_features, 3);
  const SparseWeightInfo& info = p.weight;
  check_residual(op, residual, p.out_shape, input);

  const c10::cuda::CUDAGuard guard(input.device());
  maybe_check_indices(op, crow_indices, col_indices, p.index_cols);
  const at::Tensor x = input.contiguous();
  const at::Tensor b = contiguous_bias(bias);
  at::Tensor y = allocate(op, "output", p.out_shape, x.options());
  if (y.numel() == 0) return y;

  const cudaStream_t stream = current_stream();
  dispatch_floating(op, x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    C10_CUDA_CHECK(cuda::bsr_spmm(ptr<T>(x), crow_indices.const_data_ptr<int32_t>(),
                                  col_indices.const_data_ptr<int32_t>(), ptr<T>(values),
                                  ptr_or_null<T>(b), mutable_ptr<T>(y), p.batch, info.rows,
                                  in_features, info.stored, info.block_h, info.block_w,
                                  kernel_relu(relu, residual), stream));
  });
  add_residual(y, residual, relu);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_rt, CUDA, m) { m.impl("bsr_linear", &bsr_linear_cuda); }

}  // namespace sparse_rt
