#include <torch/library.h>

#include "../../kernels/cpu/bsr_linear.h"
#include "../checks.h"
#include "cpu_common.h"
#include "linear_common.h"

namespace sparse_rt {
namespace {

at::Tensor bsr_linear_cpu(const at::Tensor& input, const at::Tensor& crow, const at::Tensor& col,
                          const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                          int64_t in_features, bool relu) {
  const char* op = "bsr_linear";
  const SparseWeightInfo info = check_sparse_weight(op, crow, col, values, 3);
  check_activation(op, input, values);
  check_bias(op, bias, values, info.rows);
  TORCH_CHECK(info.block_h <= cpu::kMaxBlockHeight, "sparse_rt.", op, ": block height ",
              info.block_h, " exceeds the supported maximum ", cpu::kMaxBlockHeight);
  TORCH_CHECK(in_features >= 0 && in_features % info.block_w == 0, "sparse_rt.", op,
              ": in_features=", in_features, " is not a multiple of the block width ",
              info.block_w);
  const int64_t block_rows = crow.numel() - 1, block_cols = in_features / info.block_w;
  check_sparse_indices(op, crow, col, block_cols);
  FlatLinearInput flat = flatten_linear_input(op, input, in_features, info.rows);
  at::Tensor y = at::empty({flat.batch, info.rows}, input.options().dtype(at::kFloat));
  if (flat.batch > 0 && info.rows > 0) {
    const c10::optional<at::Tensor> bias32 = bias ? c10::optional<at::Tensor>(as_fp32(*bias)) : c10::nullopt;
    const cpu::Epilogue ep = make_epilogue(bias32, relu);
    const float* xp = flat.x.const_data_ptr<float>();
    float* yp = y.mutable_data_ptr<float>();
    const int32_t* crow_p = crow.const_data_ptr<int32_t>();
    dispatch_value_type(values.scalar_type(), [&](auto tag) {
      using V = decltype(tag);
      const cpu::BsrView<V> w{crow_p, col.const_data_ptr<int32_t>(), values_ptr<V>(values),
                              block_rows, block_cols, info.block_h, info.block_w};
      parallel_over_rows(crow_p, block_rows, 1, info.nnz * info.block_h * info.block_w * flat.batch,
                         [&](int64_t, int64_t r0, int64_t r1) {
                           cpu::bsr_linear(w, xp, flat.batch, yp, ep, r0, r1);
                         });
    });
  }
  return y.to(input.scalar_type()).view(flat.out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_rt, CPU, m) { m.impl("bsr_linear", &bsr_linear_cpu); }

}  // namespace sparse_rt
