// CUDA implementations of sparse_rt::csr_linear, bsr_linear, csr_linears, csr_mlp and pack_csr
// (schemas in csrc/torch/registration.cpp): one front half (checks, output, dtype dispatch,
// residual), the format's kernel launched in the middle.
#include <ATen/ops/gelu.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "cuda_utils.h"

namespace sparse_rt {
namespace {

using namespace cuda_binding;

// launch(TypeTag<T>, x, bias, y, problem, fused relu, stream) -> cudaError_t runs the format's kernel.
template <typename Launch>
at::Tensor linear_cuda(const char* op, int64_t values_dims, const at::Tensor& input,
                       const at::Tensor& crow_indices, const at::Tensor& col_indices,
                       const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                       int64_t in_features, bool relu, const c10::optional<at::Tensor>& residual,
                       const Launch& launch) {
  const LinearProblem p = prepare_linear(op, input, crow_indices, col_indices, values, bias,
                                         in_features, values_dims);
  check_residual(op, residual, p.out_shape, input);

  const c10::cuda::CUDAGuard guard(input.device());
  maybe_check_indices(op, crow_indices, col_indices, p.index_cols);
  const at::Tensor x = input.contiguous();
  const at::Tensor b = contiguous_bias(bias);
  at::Tensor y = allocate(op, "output", p.out_shape, x.options());
  if (y.numel() == 0) return y;

  const cudaStream_t stream = current_stream();
  dispatch_floating(op, x.scalar_type(), [&](auto tag) {
    C10_CUDA_CHECK(launch(tag, x, b, y, p, kernel_relu(relu, residual), stream));
  });
  add_residual(y, residual, relu);
  return y;
}

at::Tensor csr_linear_cuda(const at::Tensor& input, const at::Tensor& crow_indices,
                           const at::Tensor& col_indices, const at::Tensor& values,
                           const c10::optional<at::Tensor>& bias, int64_t in_features, bool relu,
                           const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& packed) {
  check_packing("csr_linear", packed, values);
  return linear_cuda("csr_linear", 1, input, crow_indices, col_indices, values, bias, in_features,
                     relu, residual,
                     [&](auto tag, const at::Tensor& x, const at::Tensor& b, at::Tensor& y,
                         const LinearProblem& p, bool fused_relu, cudaStream_t stream) {
                       using T = typename decltype(tag)::type;
                       return cuda::csr_spmm(ptr<T>(x), crow_indices.const_data_ptr<int32_t>(),
                                             col_indices.const_data_ptr<int32_t>(), ptr<T>(values),
                                             ptr_or_null<T>(b), mutable_ptr<T>(y), p.batch,
                                             p.weight.rows, in_features, p.weight.stored,
                                             fused_relu, stream);
                     });
}

at::Tensor bsr_linear_cuda(const at::Tensor& input, const at::Tensor& crow_indices,
                           const at::Tensor& col_indices, const at::Tensor& values,
                           const c10::optional<at::Tensor>& bias, int64_t in_features, bool relu,
                           const c10::optional<at::Tensor>& residual) {
  return linear_cuda("bsr_linear", 3, input, crow_indices, col_indices, values, bias, in_features,
                     relu, residual,
                     [&](auto tag, const at::Tensor& x, const at::Tensor& b, at::Tensor& y,
                         const LinearProblem& p, bool fused_relu, cudaStream_t stream) {
                       using T = typename decltype(tag)::type;
                       return cuda::bsr_spmm(ptr<T>(x), crow_indices.const_data_ptr<int32_t>(),
                                             col_indices.const_data_ptr<int32_t>(), ptr<T>(values),
                                             ptr_or_null<T>(b), mutable_ptr<T>(y), p.batch,
                                             p.weight.rows, in_features, p.weight.stored,
                                             p.weight.block_h, p.weight.block_w, fused_relu,
                                             stream);
                     });
}

// The layers one after the other (the index checks first, so that their errors name the layer).
std::vector<at::Tensor> csr_linears_cuda(const at::Tensor& input, at::TensorList crows, at::TensorList cols,
                                         at::TensorList values, const c10::List<c10::optional<at::Tensor>>& biases,
                                         int64_t in_features,
                                        const c10::optional<c10::List<c10::optional<at::Tensor>>>& packings) {
  const c10::List<c10::optional<at::Tensor>> packed = packings.value_or(c10::List<c10::optional<at::Tensor>>());
  const std::vector<LinearProblem> layers = prepare_linears(input, crows, cols, values, biases, in_features, packed);
  const c10::cuda::CUDAGuard guard(input.device());
  for (size_t i = 0; i < crows.size(); ++i) {
    maybe_check_indices(linears_layer_name(i).c_str(), crows[i], cols[i], layers[i].index_cols);
  }
  std::vector<at::Tensor> outputs;
  for (size_t i = 0; i < crows.size(); ++i) {
    outputs.push_back(csr_linear_cuda(input, crows[i], cols[i], values[i], biases.get(i), in_features, false,
                                      c10::nullopt, c10::nullopt));
  }
  return outputs;
}

// The two layers one after the other (index checks first, as above), the hidden activations in
// the input's dtype as the unfused layers keep them (the CPU op's cache-resident panels have no
// counterpart here yet).
at::Tensor csr_mlp_cuda(const at::Tensor& input, const at::Tensor& crow1, const at::Tensor& col1,
                        const at::Tensor& values1, const c10::optional<at::Tensor>& bias1,
                        const at::Tensor& crow2, const at::Tensor& col2, const at::Tensor& values2,
                        const c10::optional<at::Tensor>& bias2, int64_t in_features,
                        c10::string_view activation, const c10::optional<at::Tensor>& residual,
                        const c10::optional<at::Tensor>& packed1, const c10::optional<at::Tensor>& packed2) {
  const MlpProblem p = prepare_mlp(input, crow1, col1, values1, bias1, crow2, col2, values2, bias2, in_features,
                                   activation, residual, packed1, packed2);
  const c10::cuda::CUDAGuard guard(input.device());
  maybe_check_indices(kMlpFirstLayer, crow1, col1, p.first.index_cols);
  maybe_check_indices(kMlpSecondLayer, crow2, col2, p.second.index_cols);
  at::Tensor hidden =
      csr_linear_cuda(input, crow1, col1, values1, bias1, in_features, p.relu, c10::nullopt, c10::nullopt);
  if (!p.relu) hidden = at::gelu(hidden, p.gelu_approximate);
  return csr_linear_cuda(hidden, crow2, col2, values2, bias2, p.first.weight.rows, false, residual, c10::nullopt);
}

// The CUDA kernels have no packed layout: an empty packing, which the ops take as none.
at::Tensor pack_csr_cuda(const at::Tensor& crow_indices, const at::Tensor& col_indices, const at::Tensor& values,
                         int64_t in_features) {
  prepare_pack(crow_indices, col_indices, values, in_features);
  return at::empty({0}, crow_indices.options());
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_rt, CUDA, m) {
  m.impl("pack_csr", &pack_csr_cuda);
  m.impl("csr_linear", &csr_linear_cuda);
  m.impl("bsr_linear", &bsr_linear_cuda);
  m.impl("csr_linears", &csr_linears_cuda);
  m.impl("csr_mlp", &csr_mlp_cuda);
}

}  // namespace sparse_rt
