#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../../kernels/cpu/csr_linear.h"
#include "../../kernels/cpu/csr_spmm.h"
#include "../../kernels/cpu/packed_nonzeros.h"
#include "../checks.h"
#include "cpu_common.h"

namespace sparse_rt {
namespace {

at::Tensor csr_linear_cpu(const at::Tensor& input, const at::Tensor& crow, const at::Tensor& col,
                          const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                          int64_t in_features, bool relu, const c10::optional<at::Tensor>& residual,
                          const c10::optional<at::Tensor>& packed) {
  const char* op = "csr_linear";
  const LinearProblem p = prepare_linear(op, input, crow, col, values, bias, in_features, 1);
  check_residual(op, residual, p.out_shape, input);
  check_packing(op, packed, values);
  check_sparse_indices(op, crow, col, p.index_cols, full_index_checks_enabled());
  const int64_t batch = p.batch, rows = p.weight.rows;
  at::Tensor y = allocate(op, "output", {batch, rows}, input.options().dtype(at::kFloat));
  if (batch > 0 && rows > 0) {
    const at::Tensor x = as_fp32(input.reshape({batch, in_features}));
    const c10::optional<at::Tensor> bias32 = as_fp32(bias), residual32 = as_fp32(residual);
    const cpu::Epilogue ep = make_epilogue(bias32, relu, residual32);
    at::Tensor panels_tensor = panel_scratch(op, x, batch, in_features);
    const float* xp = x.const_data_ptr<float>();
    float* panels = panels_or_null(panels_tensor);
    float* yp = y.mutable_data_ptr<float>();
    const int32_t* crow_p = crow.const_data_ptr<int32_t>();
    dispatch_value_type(values.scalar_type(), [&](auto tag) {
      using V = decltype(tag);
      cpu::CsrView<V> w{crow_p, col.const_data_ptr<int32_t>(), values_ptr<V>(values), rows, in_features};
      cpu::PackedNonzeros view;
      w.packed = checked_packing(op, packed, w, batch, view);
      cpu::csr_linear(w, xp, panels, batch, yp, ep, torch_parallel_for());
    });
  }
  return y.to(input.scalar_type()).view(p.out_shape);
}

// The weight's nonzeros packed for the tiled SpMM (cpu::pack_nonzeros) in an int32 tensor, empty
// where packing would not pay.
at::Tensor pack_csr_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, int64_t in_features) {
  const char* op = "pack_csr";
  const SparseWeightInfo weight = prepare_pack(crow, col, values, in_features);
  check_sparse_indices(op, crow, col, in_features, /*check_columns=*/true);
  std::vector<int32_t> blob;
  dispatch_value_type(values.scalar_type(), [&](auto tag) {
    using V = decltype(tag);
    blob = cpu::pack_nonzeros(cpu::CsrView<V>{crow.const_data_ptr<int32_t>(), col.const_data_ptr<int32_t>(),
                                              values_ptr<V>(values), weight.rows, in_features});
  });
  at::Tensor packed = allocate(op, "packing", {int64_t(blob.size())}, crow.options());
  std::copy(blob.begin(), blob.end(), packed.mutable_data_ptr<int32_t>());
  return packed;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_rt, CPU, m) {
  m.impl("csr_linear", &csr_linear_cpu);
  m.impl("pack_csr", &pack_csr_cpu);
}

}  // namespace sparse_rt
