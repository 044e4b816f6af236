// A CSR matrix's nonzeros copied in the order the tiled SpMM (csr_spmm.h) reads them for one
// 64-column tile, so that the operand rows it multiplies come from L1 rather than L2. The tile's
// window of the operand (cols rows of 64 floats: 192 KiB for a 768-wide layer) outgrows L1, and row
// by row every nonzero fetches its 256 bytes from L2, which caps the kernel at about one
// multiply-add per cycle. Packed, rows are taken kPackedRowBlock at a time and, within those,
// columns an L1's worth of operand rows at a time (a column block): each row's nonzeros in the
// column block form a segment that adds to the row's sums in a buffer, so each operand row is read
// from L2 once per row block and from L1 by every other nonzero of the block that needs it. A
// column block's segments are sorted by length, so that consecutive segments' loops run the same
// number of times and their exits are predicted. Each segment keeps CSR order and a row's segments
// follow column-block order, so the sums are the unpacked kernel's bit for bit.
//
// The packing is one flat int32 array (a "blob"), so that a binding can keep it in a tensor or a
// vector it owns: header (kPackedHeader ints: format tag, rows, cols, row blocks, segments,
// entries), block_segments and block_entries (row blocks + 1 each), the segments (2 ints each) and
// the entries (2 ints each: column, then the value's fp32 bits). It copies the nonzeros (8 bytes
// each) and pays where the weight does not change between calls.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "parallel.h"
#include "sparse_matrix.h"

namespace sparse_rt::cpu {

constexpr int64_t kPackedRowBlock = 256, kPackedTileWidth = 64;
constexpr int64_t kPackedHeader = 6;
constexpr int32_t kPackedFormatTag = 0x50545253;  // "SRTP"

// A view of a blob, as the SpMM reads it.
struct PackedNonzeros {
  struct Entry {
    int32_t col;
    float value;
  };
  struct Segment {
    int32_t row;    // within its row block
    int32_t count;  // entries
  };
  const Entry* entries;
  const Segment* segments;
  // Row block b's segments are [block_segments[b], block_segments[b + 1]), its entries
  // [block_entries[b], block_entries[b + 1]).
  const int32_t* block_segments;
  const int32_t* block_entries;
  // Whether every entry's column is known to lie in the weight (the blob was compared with it, made
  // from it by whoever holds the view, or passed packed_columns_below); otherwise the SpMM checks a row block's columns before
  // its sums and clamps each column into the weight in a block where one lies outside it.
  bool columns_checked = false;
};

// w packed, or an empty blob where packing would not pay: a column block of at most the whole row
// (nothing to block), or fewer than kMinPackedSegment nonzeros per row and column block on average
// (each segment costs a load and a store of its row's sums). The column block is an L1's worth of
// 64-float operand rows on the machine that packs; any blocking computes the same sums.
template <typename V>
std::vector<int32_t> pack_nonzeros(const CsrView<V>& w);

// The view of a non-empty blob made by pack_nonzeros (not checked: see find_packed_error), its
// columns not known to be checked.
PackedNonzeros packed_nonzeros(const int32_t* blob);

// Whether every entry of [begin, end) has a column below `cols` (a negative one, read unsigned,
// does not).
[[gnu::always_inline]] inline bool columns_below(const PackedNonzeros::Entry* begin, const PackedNonzeros::Entry* end,
                                                 int64_t cols) {
  uint32_t highest = 0;
  for (const PackedNonzeros::Entry* e = begin; e < end; ++e) highest = std::max(highest, uint32_t(e->col));
  return begin == end || int64_t(highest) < cols;
}

// Whether every entry of a blob that passed find_packed_error has a column below `cols` (a negative
// one, read unsigned, does not): one pass over its entries, over pf's threads.
bool packed_columns_below(const int32_t* blob, int64_t cols, const ParallelFor& pf);

// Why blob (`size` ints) is not w's nonzeros packed by pack_nonzeros ("" when it is). Always: a
// malformed header, or row blocks' offsets that do not fit w or the blob (O(row blocks)). With
// `compare_entries`, also a segment outside its row block or past its row's nonzeros, a row not
// covered whole (O(rows + segments)), and an entry whose column or value is not w's at that place
// (w changed after it was packed; O(nnz), every entry against w's arrays). All over pf's threads;
// w's row pointers must have been checked (find_index_error). A blob that passes without the
// comparison is safe to read whatever its segments and entries hold: the SpMM keeps each segment
// within its row block and, unless the view says its columns were checked, clamps them into w
// where a row block's columns do not all lie in it.
template <typename V>
std::string find_packed_error(const CsrView<V>& w, const int32_t* blob, int64_t size, const ParallelFor& pf,
                              bool compare_entries = true);

}  // namespace sparse_rt::cpu
