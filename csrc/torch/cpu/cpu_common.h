// Glue shared by the CPU bindings: value-type dispatch onto the torch-free kernels' types, fp32
// staging of activations, and row-parallel execution on torch's intra-op thread pool.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>

#include "../../kernels/cpu/scalar_types.h"
#include "../../kernels/cpu/sparse_matrix.h"

namespace sparse_rt {

// Calls f(V{}) with V the kernel-side type whose layout matches `t`'s element type.
template <typename F>
void dispatch_value_type(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: return f(float{});
    case at::kHalf: return f(cpu::half_t{});
    case at::kBFloat16: return f(cpu::bfloat16_t{});
    default: TORCH_CHECK(false, "sparse_rt: unsupported value dtype ", t);
  }
}

template <typename V>
const V* values_ptr(const at::Tensor& values) {
  return reinterpret_cast<const V*>(values.const_data_ptr());
}

// Kernels read activations and bias in fp32 (16-bit activations are widened once, not per use).
inline at::Tensor as_fp32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

inline cpu::Epilogue make_epilogue(const c10::optional<at::Tensor>& bias_fp32, bool relu) {
  return {bias_fp32 ? bias_fp32->const_data_ptr<float>() : nullptr, relu};
}

// Below this many multiply-adds a single thread beats the cost of waking the pool.
constexpr int64_t kMinParallelWork = 1 << 13;

// Runs body(outer, row_begin, row_end) over outer x (rows split into nnz-balanced parts), in
// parallel on torch's intra-op pool (no second thread pool).
template <typename F>
void parallel_over_rows(const int32_t* crow, int64_t rows, int64_t outer, int64_t work,
                        const F& body) {
  const int64_t parts =
      work < kMinParallelWork ? 1 : std::max<int64_t>(1, std::min<int64_t>(rows, at::get_num_threads()));
  at::parallel_for(0, outer * parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t part = u % parts;
      body(u / parts, cpu::balanced_row_start(crow, rows, part, parts),
           cpu::balanced_row_start(crow, rows, part + 1, parts));
    }
  });
}

}  // namespace sparse_rt
