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

// With full index checks enabled (checks.h), the O(rows + nnz) validation runs on the device
// before the kernel. It reads the result back (a host synchronization), so it is off by default and
// cannot be used inside CUDA graph capture.

inline void check_indices_on_device(const char* op, const at::Tensor& crow, const at::Tensor& col,
                                    int64_t cols) {
  const int64_t rows = crow.numel() - 1;
  at::Tensor status = at::empty({2}, crow.options().dtype(at::kInt));
  C10_CUDA_CHECK(cuda::validate_compressed_indices(
      crow.const_data_ptr<int32_t>(), col.const_data_ptr<int32_t>(), rows, cols, col.numel(),
      status.mutable_data_ptr<int32_t>(), current_stream()));
  const at::Tensor host = status.cpu();
  const int32_t code = host.const_data_ptr<int32_t>()[0];
  const int32_t where = host.const_data_ptr<int32_t>()[1];
  switch (code) {
    case cuda::kIndicesOk:
      return;
    case cuda::kCrowFirstNotZero:
      SPARSE_RT_CHECK(false, op, "crow_indices[0] must be 0");
    case cuda::kCrowDecreasing:
      SPARSE_RT_CHECK(false, op, "crow_indices must be non-decreasing, but crow_indices[", where + 1,
                      "] < crow_indices[", where, "]");
    case cuda::kCrowLastNotNnz:
      SPARSE_RT_CHECK(false, op, "crow_indices[-1] must equal the number of stored entries (",
                      col.numel(), ")");
    case cuda::kColOutOfRange:
      SPARSE_RT_CHECK(false, op, "col_indices[", where, "] is outside [0, ", cols, ")");
    default:
      SPARSE_RT_CHECK(false, op, "index validation returned unknown code ", code);
  }
}

inline void maybe_check_indices(const char* op, const at::Tensor& crow, const at::Tensor& col,
                                int64_t cols) {
  if (full_index_checks_enabled()) check_indices_on_device(op, crow, col, cols);
}

}  // namespace cuda_binding
}  // namespace sparse_rt
