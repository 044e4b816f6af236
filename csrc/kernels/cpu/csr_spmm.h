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
// element); a width that is not a multiple of 8 ends with an overlapping 8-wide tile, and only
// operands narrower than 8 columns take a scalar path.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "parallel.h"
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

// The dense operand of a batched linear layer: x ([rows, cols] row-major, rows = the batch)
// transposed in panels. The batch is cut into panels of kPanelWidth, the last one narrower (its
// width rounded up to a multiple of 8 with zeros), and panel p holds x[p * 64 : p * 64 + width, :]
// transposed, [cols][width], contiguously. The window of B that a 64-column tile reads is then one
// contiguous block; with x^T stored whole its rows lay `batch` floats apart, and at a batch of 1024
// (4 KiB apart) every row of a window fell into the same few cache sets.
constexpr int64_t kPanelWidth = 64;

struct PanelLayout {
  int64_t rows;
  int64_t cols;

  int64_t padded() const { return (rows + 7) / 8 * 8; }  // all panels hold cols * padded() floats
  int64_t count() const { return (padded() + kPanelWidth - 1) / kPanelWidth; }
  int64_t width(int64_t panel) const { return std::min(kPanelWidth, padded() - panel * kPanelWidth); }
  int64_t offset(int64_t panel) const { return panel * kPanelWidth * cols; }
};

// Packs x into panels, split by columns over pf's threads when x is large enough to pay for that.
void pack_panels(const float* x, const PanelLayout& layout, float* panels, const ParallelFor& pf);

// A CSR matrix's nonzeros copied in the order the SpMM reads them for one 64-column tile, so that
// the operand rows it multiplies come from L1 rather than L2. The tile's window of the operand (cols
// rows of 64 floats: 192 KiB for a 768-wide layer) outgrows L1, and row by row every nonzero
// fetches its 256 bytes from L2, which caps the kernel at about one multiply-add per cycle. Packed,
// rows are taken kPackedRowBlock at a time and, within those, columns an L1's worth of operand
// rows at a time (a column block): each row's nonzeros in the column block form a segment that
// adds to the row's sums in a buffer, so each operand row is read from L2 once per row block and
// from L1 by every other nonzero of the block that needs it. A column block's segments are sorted by
// length, so that consecutive segments' loops run the same number of times and their exits are
// predicted. Each segment keeps CSR order and a row's segments follow column-block order, so the
// sums are the unpacked kernel's bit for bit. Packing copies the nonzeros (8 bytes each) and pays
// where the weight does not change between calls (see pack_nonzeros for when it is not built).
struct PackedNonzeros {
  struct Entry {
    int32_t col;
    float value;
  };
  struct Segment {
    int32_t row;    // within its row block
    int32_t count;  // entries
  };
  std::vector<Entry> entries;
  std::vector<Segment> segments;
  // Row block b's segments are [block_segments[b], block_segments[b + 1]), its entries start at
  // block_entries[b].
  std::vector<int64_t> block_segments, block_entries;
};

constexpr int64_t kPackedRowBlock = 256, kPackedTileWidth = 64;

// The packing of w for the SpMM, or null where it would not pay: a column block of at most the
// whole row (nothing to block), or fewer than kMinPackedSegment nonzeros per row and column block
// on average (each segment costs a load and a store of its row's sums).
template <typename V>
std::unique_ptr<const PackedNonzeros> pack_nonzeros(const CsrView<V>& w);

template <typename V>
void csr_spmm(const CsrView<V>& w, const DenseRows& b, StridedOutput y, Epilogue ep,
              int64_t row_begin, int64_t row_end);

}  // namespace sparse_rt::cpu
