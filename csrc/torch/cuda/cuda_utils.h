// Glue shared by the CUDA bindings: dtype dispatch to the torch-free launch functions, raw
// pointers in the CUDA toolkit's types, and the opt-in device-side index validation.
// The bindings are host code compiled by the C++ compiler: no kernel is defined here, and nvcc
// would parse the torch headers twice (host and device passes). Only the headers in use are
// included (not <ATen/ATen.h>, which pulls in every op): a binding compiles in ~14 s, not ~57 s.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
// c10::cuda::getCurrentCUDAStream is what at::cuda::getCurrentCUDAStream re-exports; this header
// avoids ATen/cuda/CUDAContext.h, which pulls in the cuBLAS/cuSPARSE/cuSOLVER headers.
#include <c10/cuda/CUDAStream.h>

#include "../../kernels/cuda/launch.h"
#include "../checks.h"

namespace sparse_rt {
namespace cuda_binding {

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<T>{}) with T the CUDA toolkit type for the tensor dtype (at::Half and
// __half share a layout, so data pointers are reinterpreted, never converted).
template <typename Fn>
void dispatch_floating(const char* op, at::ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case at::kFloat:
      return fn(TypeTag<float>{});
    case at::kHalf:
      return fn(TypeTag<__half>{});
    case at::kBFloat16:
      return fn(TypeTag<__nv_bfloat16>{});
    default:
      SPARSE_RT_CHECK(false, op, "CUDA kernels support float32, float16 and bfloat16, got ", dtype);
  }
}

template <typename T>
const T* ptr(const at::Tensor& t) {
  return static_cast<const T*>(t.const_data_ptr());
}

// The checks do not require a contiguous bias; an undefined tensor stands for "no bias".
inline at::Tensor contiguous_bias(const c10::optional<at::Tensor>& bias) {
  return bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? ptr<T>(t) : nullptr;
}

template <typename T>
T* mutable_ptr(at::Tensor& t) {
  return static_cast<T*>(t.mutable_data_ptr());
}

// Without full index checks the CUDA ops check no index value on the host: that would copy crow
// back and synchronize, which CUDA graph capture forbids. The kernels still never read past col or
// values whatever crow holds; a row with malformed pointers outputs NaN (kernels/cuda/row_extent.h).
// With full index checks enabled (checks.h), crow and col are validated on the device before the
// kernel, and the verdict is read back (a host synchronization, so off by default and unusable
// inside graph capture). A failure is located and worded by the CPU op's check on host copies, so
// both devices report a bad index in the same words.

inline void check_indices_on_device(const char* op, const at::Tensor& crow, const at::Tensor& col,
                                    int64_t cols) {
  at::Tensor invalid = at::empty({1}, crow.options().dtype(at::kInt));
  C10_CUDA_CHECK(cuda::validate_compressed_indices(
      crow.const_data_ptr<int32_t>(), col.const_data_ptr<int32_t>(), crow.numel() - 1, cols,
      col.numel(), invalid.mutable_data_ptr<int32_t>(), current_stream()));
  if (invalid.cpu().const_data_ptr<int32_t>()[0] == 0) return;
  check_sparse_indices(op, crow.cpu(), col.cpu(), cols, /*check_columns=*/true);
  TORCH_INTERNAL_ASSERT(false, "sparse_rt.", op, ": the device index check failed where the host check passes");
}

// The CUDA kernels' epilogues have no residual yet: with one, the kernel runs without its ReLU
// (kernel_relu) and add_residual adds the residual and applies the ReLU as two torch ops after it:
// the op's result, without the saving of a fused epilogue.
inline bool kernel_relu(bool relu, const c10::optional<at::Tensor>& residual) {
  return relu && !residual.has_value();
}

inline void add_residual(at::Tensor& y, const c10::optional<at::Tensor>& residual, bool relu) {
  if (!residual.has_value()) return;
  y.add_(*residual);
  if (relu) y.relu_();
}

inline void maybe_check_indices(const char* op, const at::Tensor& crow, const at::Tensor& col,
                                int64_t cols) {
  if (full_index_checks_enabled()) check_indices_on_device(op, crow, col, cols);
}

}  // namespace cuda_binding
}  // namespace sparse_rt
