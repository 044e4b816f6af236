#include <torch/library.h>

#include "../../kernels/cpu/csr_linear.h"
#include "../../kernels/cpu/csr_spmm.h"
#include "../checks.h"
#include "cpu_common.h"

namespace sparse_rt {
namespace {

std::vector<at::Tensor> csr_linears_cpu(const at::Tensor& input, at::TensorList crows, at::TensorList cols,
                                        at::TensorList values, const c10::List<c10::optional<at::Tensor>>& biases,
                                        int64_t in_features,
                                        const c10::optional<c10::List<c10::optional<at::Tensor>>>& packings) {
  const c10::List<c10::optional<at::Tensor>> packed = packings.value_or(c10::List<c10::optional<at::Tensor>>());
  const char* op = "csr_linears";
  const std::vector<LinearProblem> layers = prepare_linears(input, crows, cols, values, biases, in_features, packed);
  const int64_t count = int64_t(layers.size()), batch = layers[0].batch;
  std::vector<at::Tensor> outputs;
  std::vector<c10::optional<at::Tensor>> biases32;
  for (int64_t i = 0; i < count; ++i) {
    check_sparse_indices(linears_layer_name(i).c_str(), crows[i], cols[i], layers[i].index_cols,
                         full_index_checks_enabled());
    outputs.push_back(allocate(op, "output", {batch, layers[i].weight.rows}, input.options().dtype(at::kFloat)));
    biases32.push_back(as_fp32(biases.get(i)));
  }
  if (batch > 0) {
    const at::Tensor x = as_fp32(input.reshape({batch, in_features}));
    at::Tensor panels_tensor = panel_scratch(op, x, batch, in_features);
    const float* xp = x.const_data_ptr<float>();
    float* panels = panels_or_null(panels_tensor);
    dispatch_value_type(values[0].scalar_type(), [&](auto tag) {
      using V = decltype(tag);
      std::vector<cpu::CsrView<V>> weights;
      std::vector<cpu::PackedNonzeros> views(count);
      for (int64_t i = 0; i < count; ++i) {
        weights.push_back({crows[i].const_data_ptr<int32_t>(), cols[i].const_data_ptr<int32_t>(),
                           values_ptr<V>(values[i]), layers[i].weight.rows, in_features});
        if (!packed.empty()) {
          weights[i].packed = checked_packing(linears_layer_name(i).c_str(), packed.get(i), weights[i], batch, views[i]);
        }
      }
      std::vector<cpu::Epilogue> epilogues;
      std::vector<float*> ys;
      for (int64_t i = 0; i < count; ++i) {
        epilogues.push_back(make_epilogue(biases32[i], false, c10::nullopt));
        ys.push_back(outputs[i].mutable_data_ptr<float>());
      }
      cpu::csr_linears(weights.data(), epilogues.data(), ys.data(), count, xp, panels, batch, torch_parallel_for());
    });
  }
  for (int64_t i = 0; i < count; ++i) outputs[i] = outputs[i].to(input.scalar_type()).view(layers[i].out_shape);
  return outputs;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_rt, CPU, m) { m.impl("csr_linears", &csr_linears_cpu); }

}  // namespace sparse_rt
