// The tiled CSR SpMM shared by batched linear layers and convolutions:
//
//   Y[r, q] = act(bias[r] + sum_k val[k] * B[idx[k] * ld + q])   for q in [0, width)
//
// Row k of the dense operand starts at B + idx[k] * ld. For a linear layer B is one panel of x
// transposed ([in_features, panel width], idx = column, ld = panel width; see pack_panels). For a
// convolution B holds the (padded, stride-phase-split) input planes and idx[k] is the precomputed
// offset of nonzero k's tap (ld = 1), which turns every convolution into this one kernel. Y[r, q]
// is stored at y[r * row_stride + q * col_stride] for q < columns. Rows [row_begin, row_end) are
// computed, so callers split rows across threads. Output tiles of up to 64 columns stay in
// registers across a row's nonzeros, and are stored 16 rows at a time along the output's contiguous
// dimension (row_stride == 1 or col_stride == 1 vectorize; other strides are stored element by
// element); a width that is not a multiple of 8 ends with an overlapping 8-wide tile (column by
// column where the residual is the output: Epilogue::residual_is_output), and only operands narrower
// than 8 columns take a scalar path otherwise.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "packed_nonzeros.h"
#include "parallel.h"
#include "sparse_matrix.h"

namespace sparse_rt::cpu {

struct DenseRows {
  const float* data;
  int64_t ld;     // floats between consecutive idx values
  int64_t width;  // columns computed (q range); B + idx*ld + width - 1 must be readable
  // Overlapping rows (ld < width: a convolution's taps into one image) read in blocks of idx
  // values, [j * idx_block, (j + 1) * idx_block) for j < idx_blocks, the last block taking the rest,
  // chosen by the caller so that a tile's window of each block fits L1 (see column_tile_blocked);
  // 0: the SpMM decides, blocking disjoint rows only.
  int64_t idx_block = 0;
  int64_t idx_blocks = 0;
};

struct StridedOutput {
  float* data;
  int64_t row_stride;
  int64_t col_stride;
  int64_t columns;  // columns stored (<= DenseRows::width; the rest is padding)
  // With col_stride 1, the columns may be cut into segments of segment_columns (0: one segment):
  // column q is element e = (first_column + q) % segment_columns of segment
  // s = (first_column + q) / segment_columns, stored at s * segment_stride + e when e <
  // segment_kept, and not at all otherwise. Two uses: the pixels of several images side by side
  // (a pointwise convolution's panels: a segment is an image, all kept), and a convolution's wide
  // rows (a segment is a row of a stride phase, of which the first out_w columns are the output's:
  // stored cropped, straight from the sums).
  int64_t segment_columns = 0;
  int64_t segment_kept = 0;
  int64_t segment_stride = 0;
  int64_t first_column = 0;
  // For a call of one tile: columns of the caller's next call, which go on where this tile ends; each
  // group of rows stored prefetches its residual there (0: none; see pointwise_conv_panels).
  int64_t next_columns = 0;

  // Where Y[r, q] is stored, or -1 where column q is cut away.
  int64_t index(int64_t r, int64_t q) const {
    if (segment_columns == 0) return r * row_stride + q * col_stride;
    const int64_t column = first_column + q, element = column % segment_columns;
    return element < segment_kept ? r * row_stride + column / segment_columns * segment_stride + element : -1;
  }
};

// The dense operand of a batched linear layer: x ([rows, cols] row-major, rows = the batch)
// transposed in panels. The batch is cut into panels of kPanelWidth, the last one narrower (its
// width rounded up to a multiple of 8 with zeros; to a whole panel when it holds more than 32 rows:
// one 64-column tile beats the 32-, 16- and 8-column ones it would take, each a pass over the
// weight, as for ResNet-50's 7x7 images at batch 1, 49 columns: 1x1 convolutions of 512 and 2048
// channels 1.4-1.9x on a Zen 4), and panel p holds x[p * 64 : p * 64 + width, :]
// transposed, [cols][width], contiguously. The window of B that a 64-column tile reads is then one
// contiguous block; with x^T stored whole its rows lay `batch` floats apart, and at a batch of 1024
// (4 KiB apart) every row of a window fell into the same few cache sets.
constexpr int64_t kPanelWidth = 64;

// The columns an operand of `columns` is computed over: rounded up to a multiple of 8, or to a
// whole 64-column tile where its last one holds more than 32 (see above).
constexpr int64_t padded_columns(int64_t columns) {
  const int64_t last = columns % kPanelWidth;
  return last > kPanelWidth / 2 ? columns - last + kPanelWidth : (columns + 7) / 8 * 8;
}

struct PanelLayout {
  int64_t rows;
  int64_t cols;

  int64_t padded() const { return padded_columns(rows); }  // all panels hold cols * padded() floats
  int64_t count() const { return (padded() + kPanelWidth - 1) / kPanelWidth; }
  int64_t width(int64_t panel) const { return std::min(kPanelWidth, padded() - panel * kPanelWidth); }
  int64_t offset(int64_t panel) const { return panel * kPanelWidth * cols; }
};

// Packs x's panels [first_panel, layout.count()) into panels (at their layout offsets), split by
// columns over pf's threads when they are large enough to pay for that.
void pack_panels(const float* x, const PanelLayout& layout, float* panels, const ParallelFor& pf,
                 int64_t first_panel = 0);

// Packs x's panels [p_begin, p_end) on the calling thread: the one that will read them, so that they
// are in its cache rather than the other cores' (see csr_linears).
void pack_panel_range(const float* x, const PanelLayout& layout, int64_t p_begin, int64_t p_end, float* panels);

template <typename V>
void csr_spmm(const CsrView<V>& w, const DenseRows& b, StridedOutput y, Epilogue ep,
              int64_t row_begin, int64_t row_end);

}  // namespace sparse_rt::cpu
