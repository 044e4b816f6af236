#include "linear_common.h"

#include <c10/util/Exception.h>

#include "cpu_common.h"

namespace sparse_rt {

FlatLinearInput flatten_linear_input(const char* op, const at::Tensor& input, int64_t in_features,
                                     int64_t out_features) {
  TORCH_CHECK(input.dim() >= 1 && input.size(-1) == in_features, "sparse_rt.", op,
              ": input has shape ", input.sizes(), " but the layer expects in_features=",
              in_features, " in the last dimension");
  std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end());
  out_shape.back() = out_features;
  int64_t batch = 1;
  for (size_t i = 0; i + 1 < out_shape.size(); ++i) batch *= out_shape[i];
  return {as_fp32(input.reshape({batch, in_features})), batch, std::move(out_shape)};
}

}  // namespace sparse_rt
