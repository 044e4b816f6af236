// Glue shared by the CPU bindings: value-type dispatch onto the torch-free kernels' types, fp32
// staging of activations, and torch's thread pool as the kernels' parallel-for.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include "../checks.h"

#include "../../kernels/cpu/csr_linear.h"
#include "../../kernels/cpu/csr_spmm.h"
#include "../../kernels/cpu/packed_nonzeros.h"
#include "../../kernels/cpu/parallel.h"
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
    default: TORCH_CHECK(false, "sparse_rt: unsupported value dtype ", t);  // prepare_* rejects it first
  }
}

template <typename V>
const V* values_ptr(const at::Tensor& values) {
  return reinterpret_cast<const V*>(values.const_data_ptr());
}

// Kernels read activations and bias in fp32 (16-bit activations are widened once, not per use).
inline at::Tensor as_fp32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

inline c10::optional<at::Tensor> as_fp32(const c10::optional<at::Tensor>& t) {
  return t ? c10::optional<at::Tensor>(as_fp32(*t)) : c10::nullopt;
}

// bias_fp32 and residual_fp32 are as_fp32 tensors the caller keeps alive while the kernel runs.
inline cpu::Epilogue make_epilogue(const c10::optional<at::Tensor>& bias_fp32, bool relu,
                                   const c10::optional<at::Tensor>& residual_fp32) {
  return {bias_fp32 ? bias_fp32->const_data_ptr<float>() : nullptr, relu,
          residual_fp32 ? residual_fp32->const_data_ptr<float>() : nullptr};
}

// torch's intra-op thread pool as the kernels' parallel-for (no second thread pool).
inline cpu::ParallelFor torch_parallel_for() {
  return {[](int64_t begin, int64_t end, int64_t grain, cpu::RangeFn body) {
            at::parallel_for(begin, end, grain, body);
          },
          at::get_num_threads()};
}

// Scratch for the input of the linear kernels, x [batch, in_features] fp32, packed into panels
// (the kernels pack it, see cpu::csr_linears) when the batch takes the tiled kernel; undefined below
// kTiledMinBatch, where the gather kernel reads x itself.
inline at::Tensor panel_scratch(const char* op, const at::Tensor& x, int64_t batch, int64_t in_features) {
  const int64_t floats = cpu::packed_input_floats(batch, in_features);
  return floats == 0 ? at::Tensor() : allocate(op, "packed input", {floats}, x.options());
}

constexpr int64_t kPanelsCheckedOnce = 4;

// The view of a CSR op's packing (pack_csr's result) where the SpMM will read it (some panel is a
// full 64 columns), after checking it against the weight w (find_packed_error: its entries too,
// unless packings are trusted); null where it is absent, empty (pack_csr
// found it would not pay) or not read. `view` holds the view.
template <typename V>
const cpu::PackedNonzeros* checked_packing(const char* op, const c10::optional<at::Tensor>& packed,
                                           const cpu::CsrView<V>& w, int64_t batch, cpu::PackedNonzeros& view) {
  if (!packed || packed->numel() == 0 || w.cols == 0 || cpu::PanelLayout{batch, w.cols}.padded() < cpu::kPackedTileWidth) {
    return nullptr;
  }
  const int32_t* blob = packed->const_data_ptr<int32_t>();
  const bool compare_entries = !trusted_packings_enabled();
  const std::string error = cpu::find_packed_error(w, blob, packed->numel(), torch_parallel_for(), compare_entries);
  SPARSE_RT_CHECK(error.empty(), op, "packed ", error,
                  " (pack it again with sparse_rt.ops.pack_csr; a sparse_rt layer repacks by itself after "
                  "in-place changes PyTorch sees, and after others, such as writes through .data or NumPy, "
                  "once its repack() is called)");
  view = cpu::packed_nonzeros(blob);
  // Trusted, the SpMM checks a row block's columns before its sums, once for every panel that reads
  // the block: from kPanelsCheckedOnce panels on, one pass over all the entries first costs less.
  view.columns_checked =
      compare_entries || (cpu::PanelLayout{batch, w.cols}.count() >= kPanelsCheckedOnce &&
                          cpu::packed_columns_below(blob, w.cols, torch_parallel_for()));
  return &view;
}

// The packed input's scratch, or null where there is none (the gather kernel then).
inline float* panels_or_null(at::Tensor& panels) {
  return panels.defined() ? panels.mutable_data_ptr<float>() : nullptr;
}

}  // namespace sparse_rt
