// y = act(x @ W.T + bias) with W in CSR. x is fp32 row-major [batch, cols]; y is fp32 row-major
// [batch, rows]. Each call computes output features [row_begin, row_end) for the whole batch, so
// the caller can split rows across threads (the kernels never spawn threads themselves).
#pragma once

#include <cstdint>

#include "sparse_matrix.h"

namespace sparse_rt::cpu {

// Small batches: every output is a dot product of a weight row with a gathered slice of x; the
// row's indices and values are reused from L1 across the batch.
template <typename V>
void csr_linear_gather(const CsrView<V>& w, const float* x, int64_t batch, float* y, Epilogue ep,
                       int64_t row_begin, int64_t row_end);

// Larger batches: x is passed transposed (xt, [cols, batch], contiguous), so each nonzero scales a
// contiguous run of the batch (a vectorizable axpy) instead of a scalar gather.
template <typename V>
void csr_linear_broadcast(const CsrView<V>& w, const float* xt, int64_t batch, float* y,
                          Epilogue ep, int64_t row_begin, int64_t row_end);

// The batch size from which csr_linear_broadcast is faster than csr_linear_gather.
constexpr int64_t kBroadcastMinBatch = 8;

}  // namespace sparse_rt::cpu
