#include "csr_spmm.h"

#include <algorithm>

#include "isa.h"
#include "scalar_types.h"

namespace sparse_rt::cpu {
namespace {

// 16 or 8 floats as one value: compiled for AVX-512 a vec16 is a zmm register, for AVX2 two ymm,
// otherwise four xmm. Explicit vectors keep the tile in registers; left to itself the
// compiler vectorizes across nonzeros with gathers instead.
typedef float vec16 __attribute__((vector_size(64)));
// Vectors never cross a function boundary (the helpers below are always inlined), so GCC's note
// about their calling convention differing between ISA levels does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float vec8 __attribute__((vector_size(32)));

template <typename Vec>
[[gnu::always_inline]] inline Vec load(const float* p) {
  Vec v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

// One row, output columns [q0, q0 + VECS * lanes); always inlined, so that each ISA version of
// csr_spmm compiles it for its own vector width. Each nonzero costs VECS loads and FMAs. Narrow
// tiles split the nonzeros over several partial sums so that consecutive FMAs don't wait on each
// other's latency (about four cycles): four independent chains keep the FMA unit busy.
template <typename Vec, int VECS, typename V>
[[gnu::always_inline]] inline void row_tile(const CsrView<V>& w, const DenseRows& b, const StridedOutput& y,
                     const Epilogue& ep, int64_t r, int64_t q0) {
  constexpr int kLanes = sizeof(Vec) / sizeof(float);
  constexpr int kPartials = VECS >= 4 ? 1 : 4 / VECS;
  Vec acc[kPartials][VECS] = {};
  const int64_t begin = w.crow[r], end = w.crow[r + 1];
  int64_t k = begin;
  for (; k + kPartials <= end; k += kPartials) {
    for (int p = 0; p < kPartials; ++p) {
      const float v = to_float(w.values[k + p]);
      const float* src = b.data + int64_t(w.col[k + p]) * b.ld + q0;
      for (int i = 0; i < VECS; ++i) acc[p][i] += v * load<Vec>(src + kLanes * i);
    }
  }
  for (; k < end; ++k) {
    const float v = to_float(w.values[k]);
    const float* src = b.data + int64_t(w.col[k]) * b.ld + q0;
    for (int i = 0; i < VECS; ++i) acc[0][i] += v * load<Vec>(src + kLanes * i);
  }
  for (int p = 1; p < kPartials; ++p) {
    for (int i = 0; i < VECS; ++i) acc[0][i] += acc[p][i];
  }
  // Spill the finished tile once; indexing the vectors element-wise here would keep them in
  // memory during the loop above.
  float tile[VECS * kLanes];
  __builtin_memcpy(tile, acc[0], sizeof tile);
  const int64_t row_start = r * y.row_stride;
  const int64_t stored = std::min<int64_t>(VECS * kLanes, y.columns - q0);
  for (int64_t j = 0; j < stored; ++j) {
    const int64_t index = row_start + (q0 + j) * y.col_stride;
    y.data[index] = ep.apply(tile[j], r, index);
  }
}

// Columns of an operand narrower than 8, one at a time (a 1x1 output is all tail), with four
// partial sums for the same reason as row_tile.
template <typename V>
inline void row_column(const CsrView<V>& w, const DenseRows& b, const StridedOutput& y,
                       const Epilogue& ep, int64_t r, int64_t q) {
  float acc[4] = {};
  const int64_t begin = w.crow[r], end = w.crow[r + 1];
  int64_t k = begin;
  for (; k + 4 <= end; k += 4) {
    for (int p = 0; p < 4; ++p) acc[p] += to_float(w.values[k + p]) * b.data[int64_t(w.col[k + p]) * b.ld + q];
  }
  for (; k < end; ++k) acc[0] += to_float(w.values[k]) * b.data[int64_t(w.col[k]) * b.ld + q];
  if (q < y.columns) {
    const int64_t index = r * y.row_stride + q * y.col_stride;
    y.data[index] = ep.apply((acc[0] + acc[1]) + (acc[2] + acc[3]), r, index);
  }
}

template <typename V>
[[gnu::always_inline]] inline void spmm_rows(const CsrView<V>& w, const DenseRows& b,
                                             const StridedOutput& y, const Epilogue& ep,
                                             int64_t row_begin, int64_t row_end) {
  // Column tiles outermost: while every row of the range uses one tile, the window of B it reads
  // (a tile's width in each of B's rows) stays in L2. Row-outermost order streams the whole of B
  // through the cache once per row, which is what made wide convolutions slow.
  int64_t q = 0;
  for (; q + 64 <= b.width; q += 64) {
    for (int64_t r = row_begin; r < row_end; ++r) row_tile<vec16, 4>(w, b, y, ep, r, q);
  }
  for (; q + 32 <= b.width; q += 32) {
    for (int64_t r = row_begin; r < row_end; ++r) row_tile<vec16, 2>(w, b, y, ep, r, q);
  }
  for (; q + 16 <= b.width; q += 16) {
    for (int64_t r = row_begin; r < row_end; ++r) row_tile<vec16, 1>(w, b, y, ep, r, q);
  }
  for (; q + 8 <= b.width; q += 8) {
    for (int64_t r = row_begin; r < row_end; ++r) row_tile<vec8, 1>(w, b, y, ep, r, q);
  }
  if (q < b.width && b.width >= 8) {
    // The last few columns as one 8-wide tile ending at the last column: it recomputes up to
    // seven columns already stored (same sums, same values), which beats one pass per column.
    for (int64_t r = row_begin; r < row_end; ++r) row_tile<vec8, 1>(w, b, y, ep, r, b.width - 8);
    return;
  }
  for (; q < b.width; ++q) {
    for (int64_t r = row_begin; r < row_end; ++r) row_column(w, b, y, ep, r, q);
  }
}

}  // namespace

void pack_transposed(const float* x, int64_t rows, int64_t cols, int64_t ld, float* xt) {
  // 16x16 blocks: both the rows read from x and the rows written to xt stay in L1.
  constexpr int64_t kBlock = 16;
  for (int64_t k0 = 0; k0 < cols; k0 += kBlock) {
    const int64_t k1 = std::min(k0 + kBlock, cols);
    for (int64_t n0 = 0; n0 < rows; n0 += kBlock) {
      const int64_t n1 = std::min(n0 + kBlock, rows);
      for (int64_t k = k0; k < k1; ++k) {
        for (int64_t n = n0; n < n1; ++n) xt[k * ld + n] = x[n * cols + k];
      }
    }
    for (int64_t k = k0; k < k1; ++k) std::fill(xt + k * ld + rows, xt + (k + 1) * ld, 0.f);
  }
}

template <typename V>
void csr_spmm(const CsrView<V>& w, const DenseRows& b, StridedOutput y, Epilogue ep,
              int64_t row_begin, int64_t row_end) {
  SPARSE_RT_DISPATCH_ISA(spmm_rows(w, b, y, ep, row_begin, row_end))
}

template void csr_spmm<float>(const CsrView<float>&, const DenseRows&, StridedOutput, Epilogue,
                              int64_t, int64_t);
template void csr_spmm<half_t>(const CsrView<half_t>&, const DenseRows&, StridedOutput, Epilogue,
                               int64_t, int64_t);
template void csr_spmm<bfloat16_t>(const CsrView<bfloat16_t>&, const DenseRows&, StridedOutput,
                                   Epilogue, int64_t, int64_t);

}  // namespace sparse_rt::cpu
