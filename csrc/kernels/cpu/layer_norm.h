// A sum and the LayerNorm after it in one pass over each row, the residual connections of a
// transformer (BERT's LayerNorm(dense(h) + input)):
//
//   y[r, :] = (s - mean(s)) / sqrt(var(s) + eps) * weight + bias,   s = x[r, :] + residual[r, :]
//
// with the biased variance, as nn.LayerNorm. Run op by op, the sum is one pass over both operands
// that writes a tensor, and the LayerNorm two more over it; here each row's sum is written into
// its output row, which then stays in L1 for the statistics and the normalisation. Mean and
// variance are taken in two passes in fp32 (16 partial sums each).
#pragma once

#include <cstdint>

#include "parallel.h"

namespace sparse_rt::cpu {

// x, residual and y are [rows, cols] row-major; weight and bias [cols] or null (1 and 0).
void add_layer_norm(const float* x, const float* residual, const float* weight, const float* bias, int64_t rows,
                    int64_t cols, float eps, float* y, const ParallelFor& pf);

}  // namespace sparse_rt::cpu
