// y = act(x @ W.T + bias) with W in CSR for small batches. x is fp32 row-major [batch, cols]; y is
// fp32 row-major [batch, rows]. Each call computes output features [row_begin, row_end) for the
// whole batch, so the caller can split rows across threads (kernels never spawn threads). Batches
// of kTiledMinBatch and more go to csr_linear_tiled.
#pragma once

#include <cstdint>

#include "sparse_matrix.h"

namespace sparse_rt::cpu {

// Small batches: every output is a dot product of a weight row with a gathered slice of x; the
// row's indices and values are reused from L1 across the batch.
template <typename V>
void csr_linear_gather(const CsrView<V>& w, const float* x, int64_t batch, float* y, Epilogue ep,
                       int64_t row_begin, int64_t row_end);

// The batch size from which the tiled SpMM beats csr_linear_gather (its narrowest tile is 8 wide).
constexpr int64_t kTiledMinBatch = 8;

// Larger batches: the tiled SpMM over x packed by pack_panels (csr_spmm.h), panel by panel.
template <typename V>
void csr_linear_tiled(const CsrView<V>& w, const float* panels, int64_t batch, float* y, Epilogue ep,
                      int64_t row_begin, int64_t row_end);

}  // namespace sparse_rt::cpu
