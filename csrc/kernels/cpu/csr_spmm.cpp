#include "csr_spmm.h"

#include <algorithm>
#include <cstddef>
#include <limits>
#include <type_traits>

#include "cache_sizes.h"
#include "finished_rows.h"
#include "isa.h"
#include "scalar_types.h"
#include "vectors.h"

namespace sparse_rt::cpu {
namespace {

// acc[i] += v * src[i-th vector], for i < VECS: one nonzero's share of a tile.
template <typename Vec, int VECS>
[[gnu::always_inline]] inline void add_scaled(Vec (&acc)[VECS], float v, const float* src) {
  for (int i = 0; i < VECS; ++i) acc[i] += v * load<Vec>(src + kLanesOf<Vec> * i);
}

// add_scaled with v given by its bits, broadcast from a general register rather than loaded again.
template <typename Vec, int VECS>
[[gnu::always_inline]] inline void add_scaled_bits(Vec (&acc)[VECS], uint32_t value_bits, const float* src) {
  typedef int32_t Bits __attribute__((vector_size(sizeof(Vec))));
  const Vec v = reinterpret_cast<Vec>(Bits{} + int32_t(value_bits));
  for (int i = 0; i < VECS; ++i) acc[i] += v * load<Vec>(src + kLanesOf<Vec> * i);
}

// B's row stride in a tile kWidth columns wide: kWidth itself where B is a panel of that width (see
// with_panel_stride), a constant, so that a nonzero's row address is a shift of its column rather
// than a multiply by a stride held in a register (BERT-base 90% and 80% at batch 1, whose layers read
// panels unpacked, 1.008-1.015x in process on Zen 4; ResNet-50 level).
template <int64_t kWidth, bool kPanel>
[[gnu::always_inline]] inline int64_t panel_stride(const DenseRows& b) {
  return kPanel ? kWidth : b.ld;
}

// f(std::true_type{}) where B's rows are kWidth floats apart (a panel: spmm_rows), else
// f(std::false_type{}): the caller instantiates its tile for each.
template <int64_t kWidth, typename F>
[[gnu::always_inline]] inline void with_panel_stride(const DenseRows& b, const F& f) {
  if (b.ld == kWidth) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// One row, output columns [q0, q0 + VECS * lanes), the sums written to tile[0, VECS * lanes);
// always inlined, so that each ISA version of csr_spmm compiles it for its own vector width. Each
// nonzero costs VECS loads and FMAs. Narrow tiles split the nonzeros over several partial sums so
// that consecutive FMAs don't wait on each other's latency (about four cycles): four independent
// chains keep the FMA unit busy. With `ahead` > 0 the B row of the nonzero that many places on is
// prefetched (see column_tile).
template <typename Vec, int VECS, bool kPanel, typename V>
[[gnu::always_inline]] inline void row_tile(const CsrView<V>& w, const DenseRows& b, int64_t r, int64_t q0,
                                            int64_t ahead, float* tile) {
  constexpr int kLanes = kLanesOf<Vec>;
  constexpr int kPartials = VECS >= 4 ? 1 : 4 / VECS;
  Vec acc[kPartials][VECS] = {};
  const int32_t* const col = w.col;
  const V* const values = w.values;
  const float* const data = b.data + q0;
  const int64_t ld = panel_stride<VECS * kLanes, kPanel>(b);
  const int64_t begin = w.crow[r], end = w.crow[r + 1];
  int64_t k = begin;
  for (; k + kPartials <= end; k += kPartials) {
    if (ahead && k + ahead < end) {
      const float* next = data + int64_t(col[k + ahead]) * ld;
      for (int line = 0; line < VECS * kLanes; line += 16) __builtin_prefetch(next + line);
    }
    for (int p = 0; p < kPartials; ++p) add_scaled(acc[p], to_float(values[k + p]), data + int64_t(col[k + p]) * ld);
  }
  for (; k < end; ++k) add_scaled(acc[0], to_float(values[k]), data + int64_t(col[k]) * ld);
  for (int p = 1; p < kPartials; ++p) {
    for (int i = 0; i < VECS; ++i) acc[0][i] += acc[p][i];
  }
  // Spilled whole; indexing the vectors element-wise would keep them in memory during the loop.
  __builtin_memcpy(tile, acc[0], sizeof acc[0]);
}

// row_tile's sums (one partial sum: VECS >= 4) over the nonzeros of row r from `cursor` on whose
// column is below `limit`, added to the sums at `tile`, or starting them when `first`; `cursor`
// is left at the first nonzero not taken. The operands are copied to locals first: read through
// `w` and `b` GCC reloaded them on every nonzero.
template <typename Vec, int VECS, bool kPanel, typename V>
[[gnu::always_inline]] inline void row_tile_until(const CsrView<V>& w, const DenseRows& b, int64_t r,
                                                  int64_t q0, int64_t& cursor, int64_t limit, bool first,
                                                  float* tile) {
  constexpr int kLanes = kLanesOf<Vec>;
  Vec acc[VECS] = {};
  if (!first) {
    for (int i = 0; i < VECS; ++i) acc[i] = load<Vec>(tile + kLanes * i);
  }
  const int32_t* const col = w.col;
  const V* const values = w.values;
  const float* const data = b.data + q0;
  const int64_t ld = panel_stride<VECS * kLanes, kPanel>(b), end = w.crow[r + 1];
  int64_t k = cursor;
  for (; k < end && col[k] < limit; ++k) add_scaled(acc, to_float(values[k]), data + int64_t(col[k]) * ld);
  cursor = k;
  __builtin_memcpy(tile, acc, sizeof acc);
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
  const int64_t index = q < y.columns ? y.index(r, q) : -1;
  if (index >= 0) y.data[index] = ep.apply((acc[0] + acc[1]) + (acc[2] + acc[3]), r, index);
}

// Rows are computed kGroup at a time into a tile buffer (row i's sums at i * kTileStride), then
// stored together with the epilogue along whichever output dimension is contiguous, so that the
// stores and the epilogue are vector operations: a linear layer's output is stored transposed
// (consecutive rows adjacent), a convolution's a row at a time. Storing each row's tile on its own
// meant 64 scattered scalar stores per row for linear layers, which cost more than the sums.
constexpr int64_t kGroup = 16, kTileStride = 64;

// Whole groups of a linear layer's output (consecutive rows adjacent), stored Wide-square blocks
// at a time: each block transposed in registers, then stored a column at a time.
template <typename Wide>
[[gnu::always_inline]] inline void store_group_transposed(const float* tile, const StridedOutput& y,
                                                          const Epilogue& ep, int64_t r0, int64_t q0,
                                                          int64_t stored) {
  constexpr int kLanes = kLanesOf<Wide>;
  static_assert(kGroup % kLanes == 0);
  for (int64_t i0 = 0; i0 < kGroup; i0 += kLanes) {
    Wide bias = {};
    if (ep.bias) bias = load<Wide>(ep.bias + r0 + i0);
    for (int64_t j0 = 0; j0 < stored; j0 += kLanes) {
      Wide block[kLanes];
#pragma GCC unroll 16
      for (int i = 0; i < kLanes; ++i) block[i] = load<Wide>(tile + (i0 + i) * kTileStride + j0);
      transpose(block);
      // Unrolled with constant indices into the block (a variable one would keep it in memory).
#pragma GCC unroll 16
      for (int64_t j = 0; j < kLanes; ++j) {
        if (j0 + j >= stored) break;
        const int64_t start = r0 + i0 + (q0 + j0 + j) * y.col_stride;
        store_finished<Wide>(block[j] + bias, ep.residual ? ep.residual + start : nullptr, ep,
                             y.data + start);
      }
    }
  }
}

template <typename Wide>
[[gnu::always_inline]] inline void store_group_body(const float* tile, const StridedOutput& y,
                                                  const Epilogue& ep, int64_t r0, int64_t count,
                                                  int64_t q0, int64_t width) {
  const int64_t stored = std::min(width, y.columns - q0);
  // A linear layer's output (consecutive rows adjacent); a 1x1 image's convolution has a row stride
  // of 1 too, but its columns are images (segments).
  const bool transposed = y.row_stride == 1 && y.segment_columns == 0;
  if (transposed && count == kGroup && width % kLanesOf<Wide> == 0) {
    store_group_transposed<Wide>(tile, y, ep, r0, q0, stored);
    return;
  }
  if (transposed) {
    for (int64_t j = 0; j < stored; ++j) {
      const int64_t start = r0 + (q0 + j) * y.col_stride;
      const float* residual = ep.residual ? ep.residual + start : nullptr;
      for (int64_t i = 0; i < count; ++i) {
        float v = tile[i * kTileStride + j] + (ep.bias ? ep.bias[r0 + i] : 0.f);
        if (residual) v += residual[i];
        y.data[start + i] = ep.activate(v);
      }
    }
    return;
  }
  if (y.col_stride == 1) {
    // A convolution's output: each row's columns are contiguous, in one image or in runs that
    // end where a segment does (StridedOutput::segment_columns), of which the first `kept` are stored.
    struct Run {
      int64_t from, kept, at;
    };
    Run runs[kTileStride];
    int64_t count_runs = 0;
    bool adjacent = true;  // each run's outputs follow the last one's
    for (int64_t j = 0; j < stored;) {
      int64_t run = stored - j, kept = run, at = q0 + j;
      if (y.segment_columns > 0) {
        const int64_t column = y.first_column + q0 + j, element = column % y.segment_columns;
        run = std::min(run, y.segment_columns - element);
        kept = std::clamp<int64_t>(y.segment_kept - element, 0, run);
        at = column / y.segment_columns * y.segment_stride + element;
      }
      if (kept > 0) {
        if (count_runs > 0) adjacent = adjacent && at == runs[count_runs - 1].at + runs[count_runs - 1].kept;
        runs[count_runs++] = {j, kept, at};
      }
      j += run;
    }
    if (count_runs > 1 && adjacent) {
      // Runs that meet in the output (a convolution's wide rows cropped: 7 of each 9 columns on a
      // 7x7 image) are joined first and stored as one row, in vectors rather than seven at a time.
      for (int64_t i = 0; i < count; ++i) {
        alignas(64) float joined[kTileStride];
        int64_t length = 0;
        for (int64_t u = 0; u < count_runs; ++u) {
          const float* from = tile + i * kTileStride + runs[u].from;
          for (int64_t t = 0; t < runs[u].kept; ++t) joined[length++] = from[t];
        }
        const int64_t r = r0 + i, start = r * y.row_stride + runs[0].at;
        store_finished_row<Wide>(joined, ep.bias ? ep.bias[r] : 0.f, ep.residual ? ep.residual + start : nullptr, ep,
                                 y.data + start, length);
      }
      return;
    }
    for (int64_t u = 0; u < count_runs; ++u) {
      for (int64_t i = 0; i < count; ++i) {
        const int64_t r = r0 + i, start = r * y.row_stride + runs[u].at;
        store_finished_row<Wide>(tile + i * kTileStride + runs[u].from, ep.bias ? ep.bias[r] : 0.f,
                                 ep.residual ? ep.residual + start : nullptr, ep, y.data + start, runs[u].kept);
      }
    }
    return;
  }
  for (int64_t i = 0; i < count; ++i) {
    const int64_t r = r0 + i, start = r * y.row_stride + q0 * y.col_stride;
    for (int64_t j = 0; j < stored; ++j) {
      const int64_t index = start + j * y.col_stride;
      y.data[index] = ep.apply(tile[i * kTileStride + j], r, index);
    }
  }
}

// Called, not inlined, by the kernels: one copy per instruction set rather than one per tile width
// and value type (the unrolled transposes in each made this file take minutes to compile).
[[gnu::noinline]] void store_group(const float* tile, const StridedOutput& y, const Epilogue& ep,
                                   int64_t r0, int64_t count, int64_t q0, int64_t width) {
  // The residual of these rows in the next call's columns, a line at a time (StridedOutput::next_columns):
  // spread over the groups, the prefetches overlap the sums rather than stall a burst of them. A column's
  // place is the same in every row but for the row's stride: found once per line, not once per row (a
  // segment's place takes two divisions).
  if (ep.residual && y.next_columns > 0) {
    for (int64_t j = 0; j < y.next_columns; j += 64 / int64_t(sizeof(float))) {
      const int64_t column = y.index(0, q0 + width + j);
      if (column < 0) continue;
      for (int64_t i = 0; i < count; ++i) __builtin_prefetch(ep.residual + (r0 + i) * y.row_stride + column);
    }
  }
  SPARSE_RT_DISPATCH_WIDE(store_group_body<Wide>(tile, y, ep, r0, count, q0, width))
}

// How a tile of `width` columns reads B's rows (column_tile_blocked): `size` idx values at a time,
// in `count` blocks, the last taking the rest; count 0 for all of them at once. Where the caller
// does not block them (DenseRows::idx_block), a block of B rows fills L1; B's rows must be disjoint
// (a linear layer's panel), and blocking pays only when a row has enough nonzeros in each block: its
// sums are stored and reloaded once per block, and each (row, block) ends in a mispredicted loop
// exit. On a Zen 3 (32 KiB of L1, blocks of 128 rows), 64 tokens, one thread: 1.2-1.5x at
// densities 0.2-0.5 on 768x768, 3072x768 and 768x3072 layers, 0.94-1.11x at 0.1 (12.8 nonzeros per
// row and block), 0.6-0.9x at 0.02-0.05.
struct IdxBlocks {
  int64_t size, count;
};

template <typename V>
IdxBlocks idx_blocks(const CsrView<V>& w, const DenseRows& b, int64_t width) {
  if (b.idx_block > 0) return {b.idx_block, b.idx_blocks};
  constexpr double kMinNonzerosPerBlock = 16;
  const int64_t block = l1_cache_bytes() / (width * int64_t(sizeof(float)));
  // In double: rows x cols of a huge logical shape overflows int64.
  const double nnz = double(w.crow[w.rows] - w.crow[0]);
  const bool pays = nnz * double(block) >= kMinNonzerosPerBlock * double(w.rows) * double(w.cols);
  if (b.ld < width || block < 1 || w.cols <= block || !pays) return {0, 0};
  return {block, (w.cols + block - 1) / block};
}

// Output columns [q, q + VECS * lanes) of rows [row_begin, row_end), B's rows read a block of idx
// values at a time: kRowBlock rows each add the nonzeros of their columns in the block to their
// sums before the next block of B is read, so a B row comes from L2 once per row block rather than
// once per nonzero (with a whole row per pass the tile's window of B, w.cols rows, outgrows L1 from
// 128 columns of 64 floats). Nonzeros are taken in CSR order, the last block taking whatever
// remains: the sums are row_tile's bit for bit, and columns out of order within a row cost speed,
// not correctness. The row block's columns and values are read in order first (touch_rows): a weight
// that comes from DRAM (whole BERT-base at 80%, 128 tokens, Zen 4, 2 threads) took 1.16-1.25x as
// long as unblocked without it, 0.90x with it (in process, a temporary switch, /tmp/bert/ab.py outside
// the repo); ResNet-50's convolutions, blocked by their callers, level (1.00x).
template <typename Vec, int VECS, typename V>
[[gnu::always_inline]] inline void column_tile_blocked(const CsrView<V>& w, const DenseRows& b,
                                                       const StridedOutput& y, const Epilogue& ep,
                                                       int64_t row_begin, int64_t row_end, int64_t q,
                                                       IdxBlocks blocks) {
  constexpr int64_t kWidth = VECS * int64_t(kLanesOf<Vec>), kRowBlock = 64;
  static_assert(VECS >= 4 && kWidth <= kTileStride && kRowBlock % kGroup == 0);
  alignas(64) float sums[kRowBlock * kTileStride];
  int64_t cursor[kRowBlock];
  for (int64_t rb = row_begin; rb < row_end; rb += kRowBlock) {
    const int64_t count = std::min(kRowBlock, row_end - rb);
    for (int64_t i = 0; i < count; ++i) cursor[i] = w.crow[rb + i];
    touch_rows(w, rb, rb + count);
    for (int64_t j = 0; j < blocks.count; ++j) {
      const int64_t limit = j + 1 < blocks.count ? (j + 1) * blocks.size : std::numeric_limits<int64_t>::max();
      with_panel_stride<kWidth>(b, [&](auto panel) {
        for (int64_t i = 0; i < count; ++i) {
          row_tile_until<Vec, VECS, decltype(panel)::value>(w, b, rb + i, q, cursor[i], limit, j == 0,
                                                            sums + i * kTileStride);
        }
      });
    }
    for (int64_t g = 0; g < count; g += kGroup) {
      store_group(sums + g * kTileStride, y, ep, rb + g, std::min(kGroup, count - g), q, kWidth);
    }
  }
}

// Output columns [q, q + VECS * lanes) of rows [row_begin, row_end).
template <typename Vec, int VECS, typename V>
[[gnu::always_inline]] inline void column_tile(const CsrView<V>& w, const DenseRows& b,
                                               const StridedOutput& y, const Epilogue& ep,
                                               int64_t row_begin, int64_t row_end, int64_t q) {
  constexpr int64_t kWidth = VECS * int64_t(kLanesOf<Vec>);
  static_assert(kWidth <= kTileStride);
  if constexpr (VECS >= 4) {
    if (const IdxBlocks blocks = idx_blocks(w, b, kWidth); blocks.count > 0) {
      return column_tile_blocked<Vec, VECS>(w, b, y, ep, row_begin, row_end, q, blocks);
    }
  }
  // The window of B a linear layer's tile reads (its width in each of B's rows: w.cols rows
  // apart from each other) stays in L2 while it fits; a larger one comes from L3, and prefetching
  // each nonzero's B row eight nonzeros ahead hides that. On a Zen 3 (512 KiB of L2), 128 tokens
  // at 90%: 15% on a 768x3072 layer, BERT-base 6% (batch 1) and 17% (batch 8); 4-9% lost on
  // layers whose window fits, and 1% / 6% on ResNet-50, whose convolutions' B rows overlap (tap
  // offsets into one image, ld 1): so only for disjoint rows and a window larger than L2.
  const bool window_exceeds_l2 =
      b.ld >= kWidth && w.cols * kWidth * int64_t(sizeof(float)) > l2_cache_bytes();
  const int64_t ahead = window_exceeds_l2 ? 8 : 0;
  alignas(64) float tile[kGroup * kTileStride];
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kGroup) {
    const int64_t count = std::min(kGroup, row_end - r0);
    with_panel_stride<kWidth>(b, [&](auto panel) {
      for (int64_t i = 0; i < count; ++i) {
        row_tile<Vec, VECS, decltype(panel)::value>(w, b, r0 + i, q, ahead, tile + i * kTileStride);
      }
    });
    store_group(tile, y, ep, r0, count, q, kWidth);
  }
}

// Adds a row block's segments of rows [lo, hi) to their rows' sums (sums + row * kTileStride), from
// the panel `data` (its rows kWidth floats apart). A segment never reaches past the block's entries
// [e, block_end), so a blob whose segments were not placed (find_packed_error without the comparison)
// is read within bounds. kClamp: each column is clamped into [0, cols), for entries that may not lie
// in the weight.
template <typename Vec, int VECS, bool kClamp>
[[gnu::always_inline]] inline void add_block_segments(const PackedNonzeros& p, int64_t block, int64_t lo, int64_t hi,
                                                      int64_t cols, const float* data, float* sums) {
  // A constant stride makes each nonzero's row address a shift of its column, not a multiply by a
  // stride the compiler kept on the stack: on a Zen 3, 1.06-1.15x on BERT-base's feed-forward shapes
  // at densities 0.05-0.1 (one thread), and whole BERT-base 1.04-1.09x (2 threads, batch 8, and
  // batch 1 with trusted packings).
  constexpr int64_t ld = VECS * int64_t(kLanesOf<Vec>);
  const uint32_t last_col = uint32_t(cols - 1);
  const PackedNonzeros::Entry* e = p.entries + p.block_entries[block];
  const PackedNonzeros::Entry* const block_end = p.entries + p.block_entries[block + 1];
  for (int64_t s = p.block_segments[block]; s < p.block_segments[block + 1]; ++s) {
    const PackedNonzeros::Segment segment = p.segments[s];
    const PackedNonzeros::Entry* const end = e + std::clamp<int64_t>(segment.count, 0, block_end - e);
    if (segment.row < lo || segment.row >= hi) {
      e = end;
      continue;
    }
    float* const tile = sums + segment.row * kTileStride;
    Vec acc[VECS];
    for (int i = 0; i < VECS; ++i) acc[i] = load<Vec>(tile + kLanesOf<Vec> * i);
    // An entry in one 8-byte load (column in the low half), its value broadcast from the register:
    // loaded apart, the column and the value (a broadcast from memory) are two loads per nonzero
    // beside its four operand vectors, in a loop bound by its loads (Zen 4, a standalone loop at 13
    // nonzeros per segment: 5.2 cycles per nonzero against 5.7; whole BERT-base at batch 8 1.03-1.05x).
    static_assert(sizeof(PackedNonzeros::Entry) == 8 && offsetof(PackedNonzeros::Entry, col) == 0 &&
                  __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__);
    for (; e < end; ++e) {
      uint64_t entry;
      __builtin_memcpy(&entry, e, sizeof entry);
      const uint32_t col = kClamp ? std::min(uint32_t(entry), last_col) : uint32_t(entry);
      add_scaled_bits(acc, uint32_t(entry >> 32), data + int64_t(col) * ld);
    }
    __builtin_memcpy(tile, acc, sizeof acc);
  }
}

// Rows [row_begin, row_end) of a 64-column panel (its rows 64 floats apart: b.ld == kWidth, see
// spmm_rows) from the packed nonzeros (PackedNonzeros): the row blocks overlapping the range, each
// block's segments in order, those of rows outside the range skipped. Entries not compared with the
// weight (PackedNonzeros::columns_checked) are first checked block by block, one pass over the
// block's columns, which then stay in cache for the sums: a block whose columns all lie in the weight
// runs without the clamp per nonzero, which kept its bound on the stack, two more loads per nonzero
// for a kernel bound by its loads (whole BERT-base at batch 8 with trusted packings, Zen 4: 1.10x as
// long on one thread, 1.06x on two).
template <typename Vec, int VECS>
[[gnu::always_inline]] inline void packed_tile(const PackedNonzeros& p, int64_t cols, const DenseRows& b,
                                               const StridedOutput& y, const Epilogue& ep, int64_t row_begin,
                                               int64_t row_end) {
  constexpr int64_t kWidth = VECS * int64_t(kLanesOf<Vec>);
  static_assert(kWidth == kPackedTileWidth && kWidth <= kTileStride && VECS >= 4);
  alignas(64) float sums[kPackedRowBlock * kTileStride];
  for (int64_t block = row_begin / kPackedRowBlock; block * kPackedRowBlock < row_end; ++block) {
    const int64_t first = block * kPackedRowBlock;
    const int64_t lo = std::max(row_begin, first) - first, hi = std::min(row_end, first + kPackedRowBlock) - first;
    std::fill(sums + lo * kTileStride, sums + hi * kTileStride, 0.f);
    if (p.columns_checked ||
        columns_below(p.entries + p.block_entries[block], p.entries + p.block_entries[block + 1], cols)) {
      add_block_segments<Vec, VECS, false>(p, block, lo, hi, cols, b.data, sums);
    } else {
      add_block_segments<Vec, VECS, true>(p, block, lo, hi, cols, b.data, sums);
    }
    for (int64_t g = lo; g < hi; g += kGroup) {
      store_group(sums + g * kTileStride, y, ep, first + g, std::min(kGroup, hi - g), 0, kWidth);
    }
  }
}

// Prefetches where rows [row_begin, row_end) store output columns [q, q + 64) (each row's run, cropped
// or not: its first four lines and the line of its last stored column), with write intent where the
// build targets PREFETCHW (the baseline x86-64 one does not: a read prefetch). A convolution's
// tile stores a run in each of its rows, more streams than the prefetchers follow, and a line stored
// to is read first: fetched one tile ahead, the whole of ResNet-50 90% ran 1.016-1.024x as fast at
// batch 8, 1.000-1.008x at batch 1 (Intel Xeon, 2 threads; old and new alternated in one process).
inline void prefetch_tile_output(const StridedOutput& y, int64_t row_begin, int64_t row_end, int64_t q) {
  if (q >= y.columns) return;
  const int64_t last_column = std::min(q + 63, y.columns - 1);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t first = y.index(r, q), last = y.index(r, last_column);
    if (first >= 0) {
      for (int64_t t = 0; t < 64; t += 64 / int64_t(sizeof(float))) __builtin_prefetch(y.data + first + t, 1);
    }
    if (last >= 0) __builtin_prefetch(y.data + last, 1);
  }
}

// Wide: the vector type of the column tiles (vec16 on AVX-512, vec8 below it: see
// SPARSE_RT_DISPATCH_WIDE).
template <typename Wide, typename V>
[[gnu::always_inline]] inline void spmm_rows(const CsrView<V>& w, const DenseRows& b,
                                             const StridedOutput& y, const Epilogue& ep,
                                             int64_t row_begin, int64_t row_end) {
  // Column tiles outermost: while every row of the range uses one tile, the window of B it reads
  // (a tile's width in each of B's rows) stays in L2. Row-outermost order streams the whole of B
  // through the cache once per row, which is what made wide convolutions slow.
  int64_t q = 0;
  constexpr int kLanes = kLanesOf<Wide>;
  if (w.packed && b.width == kPackedTileWidth && b.ld == kPackedTileWidth) {
    return packed_tile<Wide, kPackedTileWidth / kLanes>(*w.packed, w.cols, b, y, ep, row_begin, row_end);
  }
  for (; q + 64 <= b.width; q += 64) {
    if (!ep.stream && y.col_stride == 1 && q + 128 <= b.width) prefetch_tile_output(y, row_begin, row_end, q + 64);
    column_tile<Wide, 64 / kLanes>(w, b, y, ep, row_begin, row_end, q);
  }
  for (; q + 32 <= b.width; q += 32) column_tile<Wide, 32 / kLanes>(w, b, y, ep, row_begin, row_end, q);
  for (; q + 16 <= b.width; q += 16) column_tile<Wide, 16 / kLanes>(w, b, y, ep, row_begin, row_end, q);
  for (; q + 8 <= b.width; q += 8) column_tile<vec8, 1>(w, b, y, ep, row_begin, row_end, q);
  if (q < b.width && b.width >= 8 && !ep.residual_is_output) {
    // The last few columns as one 8-wide tile ending at the last column: it recomputes up to
    // seven columns already stored (same sums, same values), which beats one pass per column; not
    // where the residual is the output, which those stores have overwritten.
    column_tile<vec8, 1>(w, b, y, ep, row_begin, row_end, b.width - 8);
    return;
  }
  for (; q < b.width; ++q) {
    for (int64_t r = row_begin; r < row_end; ++r) row_column(w, b, y, ep, r, q);
  }
}

// Columns [k_begin, k_end) of x's panels [p_begin, p_end) (k_begin a multiple of 16): their
// Wide-square blocks transposed in registers (a block never straddles two panels: both are aligned
// to 16), the edges that do not fill one and the padding element by element.
template <typename Wide>
[[gnu::always_inline]] inline void pack_blocks(const float* x, const PanelLayout& layout, int64_t p_begin,
                                               int64_t p_end, int64_t k_begin, int64_t k_end, float* panels) {
  const int64_t rows = layout.rows, cols = layout.cols;
  const auto at = [&](int64_t k, int64_t n) {
    const int64_t panel = n / kPanelWidth;
    return panels + layout.offset(panel) + k * layout.width(panel) + (n - panel * kPanelWidth);
  };
  constexpr int kLanes = kLanesOf<Wide>;
  static_assert(kPanelWidth % kLanes == 0 && 16 % kLanes == 0);
  const int64_t n_begin = p_begin * kPanelWidth, n_end = std::min(layout.padded(), p_end * kPanelWidth);
  const int64_t full_rows = std::max(n_begin, std::min(n_end, rows / kLanes * kLanes));
  const int64_t full_cols_end = k_begin + (k_end - k_begin) / kLanes * kLanes;
  for (int64_t n0 = n_begin; n0 < full_rows; n0 += kLanes) {
    // The block's rows of the panel holding batch rows [n0, n0 + kLanes) lie `width` floats apart.
    const int64_t width = layout.width(n0 / kPanelWidth);
    for (int64_t k0 = k_begin; k0 < full_cols_end; k0 += kLanes) {
      Wide block[kLanes];
#pragma GCC unroll 16
      for (int i = 0; i < kLanes; ++i) block[i] = load<Wide>(x + (n0 + i) * cols + k0);
      transpose(block);
      float* out = at(k0, n0);
#pragma GCC unroll 16
      for (int i = 0; i < kLanes; ++i) __builtin_memcpy(out + i * width, &block[i], sizeof block[i]);
    }
  }
  for (int64_t k = k_begin; k < k_end; ++k) {
    for (int64_t n = k < full_cols_end ? full_rows : n_begin; n < n_end; ++n) {
      *at(k, n) = n < rows ? x[n * cols + k] : 0.f;
    }
  }
}

void pack_columns(const float* x, const PanelLayout& layout, int64_t p_begin, int64_t p_end, int64_t k_begin,
                  int64_t k_end, float* panels) {
  SPARSE_RT_DISPATCH_WIDE(pack_blocks<Wide>(x, layout, p_begin, p_end, k_begin, k_end, panels))
}

}  // namespace

void pack_panels(const float* x, const PanelLayout& layout, float* panels, const ParallelFor& pf,
                 int64_t first_panel) {
  // Chunks of 16 columns; a thread gets at least kMinPackFloats of them (a parallel region costs a
  // few microseconds, about what copying that many floats takes).
  constexpr int64_t kMinPackFloats = 1 << 15;
  const int64_t chunks = (layout.cols + 15) / 16;
  const int64_t packed_rows = std::max<int64_t>(1, layout.padded() - first_panel * kPanelWidth);
  const int64_t grain = std::max<int64_t>(1, kMinPackFloats / (16 * packed_rows));
  pf.run(0, chunks, grain, [&](int64_t begin, int64_t end) {
    pack_columns(x, layout, first_panel, layout.count(), begin * 16, std::min(layout.cols, end * 16), panels);
  });
}

void pack_panel_range(const float* x, const PanelLayout& layout, int64_t p_begin, int64_t p_end, float* panels) {
  pack_columns(x, layout, p_begin, p_end, 0, layout.cols, panels);
}

template <typename V>
void csr_spmm(const CsrView<V>& w, const DenseRows& b, StridedOutput y, Epilogue ep,
              int64_t row_begin, int64_t row_end) {
  [&] { SPARSE_RT_DISPATCH_WIDE(spmm_rows<Wide>(w, b, y, ep, row_begin, row_end)) }();
#if defined(__x86_64__)
  // Non-temporal stores are weakly ordered: visible to the thread that reads the output next once fenced.
  if (ep.stream) asm volatile("sfence" ::: "memory");
#endif
}

template void csr_spmm<float>(const CsrView<float>&, const DenseRows&, StridedOutput, Epilogue,
                              int64_t, int64_t);
template void csr_spmm<half_t>(const CsrView<half_t>&, const DenseRows&, StridedOutput, Epilogue,
                               int64_t, int64_t);
template void csr_spmm<bfloat16_t>(const CsrView<bfloat16_t>&, const DenseRows&, StridedOutput,
                                   Epilogue, int64_t, int64_t);

}  // namespace sparse_rt::cpu
