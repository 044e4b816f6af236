// Shape handling shared by the CSR and BSR linear bindings: any leading shape of the input is
// flattened to a batch, and the output keeps it with the last dimension replaced.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace sparse_rt {

struct FlatLinearInput {
  at::Tensor x;                    // fp32 contiguous [batch, in_features]
  int64_t batch;
  std::vector<int64_t> out_shape;  // input.shape[:-1] + [out_features]
};

FlatLinearInput flatten_linear_input(const char* op, const at::Tensor& input, int64_t in_features,
                                     int64_t out_features);

}  // namespace sparse_rt
