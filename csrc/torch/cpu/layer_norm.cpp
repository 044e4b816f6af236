#include <torch/library.h>

#include "../../kernels/cpu/layer_norm.h"
#include "../checks.h"
#include "cpu_common.h"

namespace sparse_rt {
namespace {

at::Tensor add_layer_norm_cpu(const at::Tensor& input, const at::Tensor& residual,
                              const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                              double eps) {
  const int64_t rows = prepare_add_layer_norm(input, residual, weight, bias, eps);
  at::Tensor out = allocate("add_layer_norm", "output", input.sizes(), input.options().dtype(at::kFloat));
  if (out.numel() > 0) {
    const at::Tensor x = as_fp32(input), r = as_fp32(residual);
    const c10::optional<at::Tensor> w = as_fp32(weight), b = as_fp32(bias);
    cpu::add_layer_norm(x.const_data_ptr<float>(), r.const_data_ptr<float>(), w ? w->const_data_ptr<float>() : nullptr,
                        b ? b->const_data_ptr<float>() : nullptr, rows, input.size(-1), static_cast<float>(eps),
                        out.mutable_data_ptr<float>(), torch_parallel_for());
  }
  return out.to(input.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_rt, CPU, m) { m.impl("add_layer_norm", &add_layer_norm_cpu); }

}  // namespace sparse_rt
