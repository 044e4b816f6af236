// y = act(x @ W.T + bias) with W in BSR (dense bh x bw tiles). x is fp32 row-major [batch, cols];
// y is fp32 row-major [batch, block_rows*bh]. Computes block rows [brow_begin, brow_end).
#pragma once

#include <cstdint>

#include "sparse_matrix.h"

namespace sparse_rt::cpu {

// Largest block height the kernel keeps in its on-stack accumulator.
constexpr int64_t kMaxBlockHeight = 64;

template <typename V>
void bsr_linear(const BsrView<V>& w, const float* x, int64_t batch, float* y, Epilogue ep,
                int64_t brow_begin, int64_t brow_end);

}  // namespace sparse_rt::cpu
