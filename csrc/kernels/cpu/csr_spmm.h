// The tiled CSR SpMM shared by batched linear layers and convolutions:
//
//   Y[r, q] = act(bias[r] + sum_k val[k] * B[idx[k] * ld + q])   for q in [0, width)
//
// Row k of the dense operand starts at B + idx[k] * ld. For a linear layer B is x transposed
// ([in_features, batch], idx = column, ld = batch). For a convolution B holds the (padded,
// stride-phase-split) input planes and idx[k] is the precomputed offset of nonzero k's tap (ld = 1),
// which turns every convolution into this one kernel. Y[r, q] is stored at
// y[r * row_stride + q * col_stride] for q < columns. Rows [row_begin, row_end) are computed, so
// callers split rows across threads. Output tiles of up to 64 columns stay in registers across a
// row's nonzeros, and are stored 16 rows at a time along the output's contiguous dimension
// (row_stride == 1 or col_stride == 1 vectorize; other strides are stored element by element); a width that is not a multiple of 8 ends with an overlapping 8-wide tile, and only
// operands narrower than 8 columns take a scalar path.
#pragma once

#include <cstdint>

#include "sparse_matrix.h"

namespace sparse_rt::cpu {

struct DenseRows {
  const float* data;
  int64_t ld;     // floats between consecutive idx values
  int64_t width;  // columns computed (q range); B + idx*ld + width - 1 must be readable
};

struct StridedOutput {
  float* data;
  int64_t row_stride;
  int64_t col_stride;
  int64_t columns;  // columns stored (<= DenseRows::width; the rest is padding)
};

// xt[k * ld + n] = x[n * cols + k] for n < rows, and 0 for rows <= n < ld: the dense operand of a
// batched linear layer (x is [rows, cols] row-major).
void pack_transposed(const float* x, int64_t rows, int64_t cols, int64_t ld, float* xt);

template <typename V>
void csr_spmm(const CsrView<V>& w, const DenseRows& b, StridedOutput y, Epilogue ep,
              int64_t row_begin, int64_t row_end);

}  // namespace sparse_rt::cpu
