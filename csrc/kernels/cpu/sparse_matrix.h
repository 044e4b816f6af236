// Views of sparse weights as the kernels see them: raw pointers and sizes, no ownership.
#pragma once

#include <cstdint>

#include "activation.h"

namespace sparse_rt::cpu {

struct PackedNonzeros;  // packed_nonzeros.h

// CSR matrix [rows, cols]: row r holds entries crow[r] .. crow[r+1]-1. `packed`, when given, views
// pack_nonzeros of this same matrix (its nonzeros in the tiled SpMM's order), which the SpMM then
// reads instead of col and values for a 64-column panel.
template <typename V>
struct CsrView {
  const int32_t* crow;
  const int32_t* col;
  const V* values;
  int64_t rows;
  int64_t cols;
  const PackedNonzeros* packed = nullptr;
};

// Reads a byte of each cache line of rows [first, last)'s columns and values once, in order, so
// that they are in cache for a pass that takes a run of each row in turn: with more rows than the
// hardware prefetchers follow streams, such a pass waits on memory for every run where the matrix
// is not in cache already (column_tile_blocked in csr_spmm.cpp, find_packed_error).
template <typename V>
void touch_rows(const CsrView<V>& w, int64_t first, int64_t last) {
  const auto touch = [](const void* begin, const void* end) {
    for (auto* byte = static_cast<const volatile char*>(begin); byte < end; byte += 64) (void)*byte;
  };
  touch(w.col + w.crow[first], w.col + w.crow[last]);
  touch(w.values + w.crow[first], w.values + w.crow[last]);
}

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

// Which GELU an epilogue applies (activation.h): none, the exact form or the tanh approximation.
enum class Gelu : uint8_t { kNone, kExact, kTanh };

// The epilogue every kernel applies to its fp32 accumulator before storing it:
// act(acc + bias[row] + residual[index]), where `index` is where the value is stored, counted from
// the output pointer the kernel was given, and act the ReLU, a GELU or nothing. The residual (a skip
// connection's tensor) has the output's layout; adding it here saves the separate pass over the
// output that `y + x` costs.
struct Epilogue {
  const float* bias;  // nullptr: no bias
  bool relu;
  const float* residual = nullptr;  // nullptr: none
  Gelu gelu = Gelu::kNone;          // not with relu
  // Store whole aligned 64-byte vectors with non-temporal stores, which write a line without
  // reading it first: for outputs too large to stay in the cache until they are read (AVX-512 only;
  // the kernel fences its stores before it returns).
  bool stream = false;
  // The residual is the output itself, each value read and overwritten in place (a bottleneck
  // block's last layer adding its sums to the shortcut's in the band's scratch): no column may be
  // stored twice, which the SpMM's overlapping last 8-wide tile would do (csr_spmm.h).
  bool residual_is_output = false;

  float apply(float acc, int64_t row, int64_t index) const {
    if (bias) acc += bias[row];
    if (residual) acc += residual[index];
    return activate(acc);
  }

  // The activation alone, on a float or a vector of them (vectors.h).
  template <typename T>
  [[gnu::always_inline]] T activate(T v) const {
    if (relu) v = v < 0.f ? T{} : v;
    if (gelu == Gelu::kExact) v = cpu::gelu(v);
    if (gelu == Gelu::kTanh) v = cpu::gelu_tanh(v);
    return v;
  }
  bool activates() const { return relu || gelu != Gelu::kNone; }

  // The same epilogue for an output that starts `offset` elements into the one it was made for.
  Epilogue at(int64_t offset) const {
    return {bias, relu, residual ? residual + offset : nullptr, gelu, stream, residual_is_output};
  }
};

// Splits rows [0, rows) into `parts` contiguous ranges holding about the same number of nonzeros,
// so that threads get equal work even when row lengths are uneven (pruned layers are). Returns the
// first row of part `part`; part == parts gives `rows`.
int64_t balanced_row_start(const int32_t* crow, int64_t rows, int64_t part, int64_t parts);

}  // namespace sparse_rt::cpu
