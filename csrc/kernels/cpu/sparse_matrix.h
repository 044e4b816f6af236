// Views of sparse weights as the kernels see them: raw pointers and sizes, no ownership.
#pragma once

#include <cstdint>

namespace sparse_rt::cpu {

// CSR matrix [rows, cols]: row r holds entries crow[r] .. crow[r+1]-1.
template <typename V>
struct CsrView {
  const int32_t* crow;
  const int32_t* col;
  const V* values;
  int64_t rows;
  int64_t cols;
};

// BSR matrix [block_rows*bh, block_cols*bw]: block row r holds blocks crow[r] .. crow[r+1]-1, block
// k covers columns col[k]*bw ... and its values are a row-major bh x bw tile at values + k*bh*bw.
template <typename V>
struct BsrView {
  const int32_t* crow;
  const int32_t* col;
  const V* values;
  int64_t block_rows;
  int64_t block_cols;
  int64_t bh;
  int64_t bw;
};

// The epilogue every kernel applies to its fp32 accumulator before storing it.
struct Epilogue {
  const float* bias;  // nullptr: no bias
  bool relu;

  float apply(float acc, int64_t row) const {
    if (bias) acc += bias[row];
    return relu && acc < 0.f ? 0.f : acc;
  }
};

// Splits rows [0, rows) into `parts` contiguous ranges holding about the same number of nonzeros,
// so that threads get equal work even when row lengths are uneven (pruned layers are). Returns the
// first row of part `part`; part == parts gives `rows`.
int64_t balanced_row_start(const int32_t* crow, int64_t rows, int64_t part, int64_t parts);

}  // namespace sparse_rt::cpu
