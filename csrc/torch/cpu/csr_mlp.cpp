#include <torch/library.h>

#include "../../kernels/cpu/csr_linear.h"
#include "../../kernels/cpu/csr_spmm.h"
#include "../checks.h"
#include "cpu_common.h"

namespace sparse_rt {
namespace {

at::Tensor csr_mlp_cpu(const at::Tensor& input, const at::Tensor& crow1, const at::Tensor& col1,
                       const at::Tensor& values1, const c10::optional<at::Tensor>& bias1,
                       const at::Tensor& crow2, const at::Tensor& col2, const at::Tensor& values2,
                       const c10::optional<at::Tensor>& bias2, int64_t in_features,
                       c10::string_view activation, const c10::optional<at::Tensor>& residual,
                       const c10::optional<at::Tensor>& packed1, const c10::optional<at::Tensor>& packed2) {
  const char* op = "csr_mlp";
  const MlpProblem p = prepare_mlp(input, crow1, col1, values1, bias1, crow2, col2, values2, bias2, in_features,
                                   activation, residual, packed1, packed2);
  check_sparse_indices(kMlpFirstLayer, crow1, col1, p.first.index_cols, full_index_checks_enabled());
  check_sparse_indices(kMlpSecondLayer, crow2, col2, p.second.index_cols, full_index_checks_enabled());
  const int64_t batch = p.first.batch, hidden_features = p.first.weight.rows, out_features = p.second.weight.rows;
  at::Tensor y = allocate(op, "output", {batch, out_features}, input.options().dtype(at::kFloat));
  if (batch == 0 || out_features == 0) return y.to(input.scalar_type()).view(p.out_shape);
  const at::Tensor x = as_fp32(input.reshape({batch, in_features}));
  const c10::optional<at::Tensor> bias1_32 = as_fp32(bias1), bias2_32 = as_fp32(bias2),
                                  residual32 = as_fp32(residual);
  // Below kTiledMinBatch the layers run one after the other on the gather kernel.
  at::Tensor panels = panel_scratch(op, x, batch, in_features);
  const bool tiled = panels.defined();
  // The hidden activations of a panel per thread that takes whole panels (tiled), or of the batch.
  const int64_t hidden_floats = tiled ? cpu::mlp_hidden_floats(batch, in_features, hidden_features, at::get_num_threads())
                                      : hidden_features * batch;
  at::Tensor hidden = allocate(op, "hidden activations", {hidden_floats}, x.options());
  // The GELU runs in the first layer's epilogue, on its sums in registers, within 3e-7 |h| of torch's
  // (activation.h): torch's own GELU over each panel's hidden activations, bit for bit the unfused
  // model's, made BERT-base's feed-forward block 3-6% slower (Zen 3, 90-95%, 128-1024 tokens).
  cpu::Epilogue ep1 = make_epilogue(bias1_32, p.relu, c10::nullopt);
  if (!p.relu) ep1.gelu = p.gelu_approximate == "tanh" ? cpu::Gelu::kTanh : cpu::Gelu::kExact;
  const cpu::Epilogue ep2 = make_epilogue(bias2_32, false, residual32);
  dispatch_value_type(values1.scalar_type(), [&](auto tag) {
    using V = decltype(tag);
    cpu::CsrView<V> w1{crow1.const_data_ptr<int32_t>(), col1.const_data_ptr<int32_t>(), values_ptr<V>(values1),
                       hidden_features, in_features};
    cpu::CsrView<V> w2{crow2.const_data_ptr<int32_t>(), col2.const_data_ptr<int32_t>(), values_ptr<V>(values2),
                       out_features, hidden_features};
    cpu::PackedNonzeros view1, view2;
    w1.packed = checked_packing(kMlpFirstLayer, packed1, w1, batch, view1);
    w2.packed = checked_packing(kMlpSecondLayer, packed2, w2, batch, view2);
    float* h = hidden.mutable_data_ptr<float>();
    if (tiled) {
      cpu::csr_mlp_tiled(w1, ep1, w2, ep2, x.const_data_ptr<float>(), panels.mutable_data_ptr<float>(), batch, h,
                         y.mutable_data_ptr<float>(), torch_parallel_for());
      return;
    }
    cpu::parallel_over_rows(torch_parallel_for(), w1.crow, w1.rows, 1, p.first.weight.stored * batch,
                            [&](int64_t, int64_t r0, int64_t r1) {
                              cpu::csr_linear_gather(w1, x.const_data_ptr<float>(), batch, h, ep1, r0, r1);
                            });
    cpu::parallel_over_rows(torch_parallel_for(), w2.crow, w2.rows, 1, p.second.weight.stored * batch,
                            [&](int64_t, int64_t r0, int64_t r1) {
                              cpu::csr_linear_gather(w2, h, batch, y.mutable_data_ptr<float>(), ep2, r0, r1);
                            });
  });
  return y.to(input.scalar_type()).view(p.out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_rt, CPU, m) { m.impl("csr_mlp", &csr_mlp_cpu); }

}  // namespace sparse_rt
