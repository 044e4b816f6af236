#include <torch/library.h>

#include "../../kernels/cpu/csr_linear.h"
#include "../../kernels/cpu/csr_spmm.h"
#include "../checks.h"
#include "cpu_common.h"
#include "linear_common.h"

namespace sparse_rt {
namespace {

at::Tensor csr_linear_cpu(const at::Tensor& input, const at::Tensor& crow, const at::Tensor& col,
                          const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                          int64_t in_features, bool relu) {
  const char* op = "csr_linear";
  const SparseWeightInfo info = check_sparse_weight(op, crow, col, values, 1);
  check_activation(op, input, values);
  check_bias(op, bias, values, info.rows);
  TORCH_CHECK(in_features >= 0, "sparse_rt.", op, ": in_features must be >= 0, got ", in_features);
  check_sparse_indices(op, crow, col, in_features);
  FlatLinearInput flat = flatten_linear_input(op, input, in_features, info.rows);
  at::Tensor y = at::empty({flat.batch, info.rows}, input.options().dtype(at::kFloat));
  if (flat.batch > 0 && info.rows > 0) {
    const c10::optional<at::Tensor> bias32 = bias ? c10::optional<at::Tensor>(as_fp32(*bias)) : c10::nullopt;
    const cpu::Epilogue ep = make_epilogue(bias32, relu);
    const bool tiled = flat.batch >= cpu::kTiledMinBatch;
    // The tiled SpMM reads x transposed, its batch padded with zeros to a multiple of 8.
    const int64_t ld = (flat.batch + 7) / 8 * 8;
    // Packed serially: a second parallel region costs more than the copy saves.
    at::Tensor xt;
    if (tiled) {
      xt = at::empty({in_features, ld}, flat.x.options());
      cpu::pack_transposed(flat.x.const_data_ptr<float>(), flat.batch, in_features, ld,
                           xt.mutable_data_ptr<float>());
    }
    float* yp = y.mutable_data_ptr<float>();
    const int32_t* crow_p = crow.const_data_ptr<int32_t>();
    dispatch_value_type(values.scalar_type(), [&](auto tag) {
      using V = decltype(tag);
      const cpu::CsrView<V> w{crow_p, col.const_data_ptr<int32_t>(), values_ptr<V>(values),
                              info.rows, in_features};
      parallel_over_rows(crow_p, info.rows, 1, info.nnz * flat.batch,
                         [&](int64_t, int64_t r0, int64_t r1) {
                           if (tiled) {
                             cpu::csr_spmm(w, {xt.const_data_ptr<float>(), ld, ld},
                                           {yp, 1, info.rows, flat.batch}, ep, r0, r1);
                           } else {
                             cpu::csr_linear_gather(w, flat.x.const_data_ptr<float>(), flat.batch,
                                                    yp, ep, r0, r1);
                           }
                         });
    });
  }
  return y.to(input.scalar_type()).view(flat.out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_rt, CPU, m) { m.impl("csr_linear", &csr_linear_cpu); }

}  // namespace sparse_rt
