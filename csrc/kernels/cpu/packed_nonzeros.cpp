#include "packed_nonzeros.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "cache_sizes.h"
#include "isa.h"
#include "scalar_types.h"

namespace sparse_rt::cpu {
namespace {

// Below this many nonzeros per segment on average, the sums' load and store per segment would
// cost more than reading from L1 saves. On a Zen 3 at 128 tokens (a standalone C++ loop, one
// thread, BERT-base's shapes): 1.05-1.49x the unpacked kernel at 6.4 nonzeros per segment (density
// 0.05; the most on the 3072-wide layer, whose panel outgrows L2), 1.45-1.68x at 12.8, 1.19-1.98x
// at 25.6. Whole BERT-base at 95% (6.4), batch 8, 2 threads: onnxruntime's kernels 1.05x
// (benchmarks/results/onnx-2026-12-04-zen3-bert95-b8.json), the fused PyTorch path, whose ops also
// compare the packing with the weight per call, level (0.98x; engines-2026-12-04-zen3-torch-packed-
// ab-b8.json). Sparser was not measured, so the bound sits below the sparsest gain seen. Wider
// column blocks at density 0.05 (256 or 384 columns, more nonzeros per segment) gained nothing.
constexpr double kMinPackedSegment = 4;

enum HeaderField { kTag, kRows, kCols, kRowBlocks, kSegments, kEntries };

int32_t float_bits(float value) {
  int32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

std::string text(int64_t value) { return std::to_string(value); }

// The entries of a row block's segments [s_begin, s_end), from entry e on, against w: each segment's
// against its run of the CSR arrays from csr_start (one per segment), an entry's 8 bytes against its
// column and value as one 64-bit word, its column in range. The first segment that differs, or s_end.
template <typename V>
int64_t first_differing_segment_scalar(const CsrView<V>& w, const PackedNonzeros& p, int64_t s_begin, int64_t s_end,
                                       int64_t e, const int32_t* csr_start) {
  const uint64_t* words = reinterpret_cast<const uint64_t*>(p.entries);
  for (int64_t s = s_begin; s < s_end; ++s) {
    const int64_t k0 = csr_start[s - s_begin], n = p.segments[s].count;
    uint64_t differ = 0;
    uint32_t largest = 0;
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t col = uint32_t(w.col[k0 + i]);
      differ |= words[e + i] ^ (uint64_t(col) | uint64_t(uint32_t(float_bits(to_float(w.values[k0 + i])))) << 32);
      largest = std::max(largest, col);
    }
    if (differ != 0 || uint64_t(largest) >= uint64_t(w.cols)) return s;
    e += n;
  }
  return s_end;
}

#if defined(__x86_64__) && defined(__GNUC__)
// The same eight entries at a time with AVX-512, whose masked loads take a segment's last few
// without reading past it. In one process against the scalar loop (Zen 4, 2 threads, 128 tokens,
// random BERT-base-shaped weights at 90%, a temporary switch and /tmp/bert/cmp_ab.py outside the
// repo), the comparison's time over trusted packings: query/key/value 0.094 -> 0.057 ms, the
// feed-forward pair 0.26 -> 0.15 ms. fp32 and bf16 weights; fp16 ones take the scalar loop, whose
// conversion to fp32 the comparison must match bit for bit.
SPARSE_RT_TARGET_X86_64_V4 inline __m256i value_bits(const float* values, __mmask8 lanes) {
  return _mm256_maskz_loadu_epi32(lanes, values);
}
SPARSE_RT_TARGET_X86_64_V4 inline __m256i value_bits(const bfloat16_t* values, __mmask8 lanes) {
  return _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_maskz_loadu_epi16(lanes, values)), 16);
}

template <typename V>
SPARSE_RT_TARGET_X86_64_V4 int64_t first_differing_segment_avx512(const CsrView<V>& w, const PackedNonzeros& p,
                                                                  int64_t s_begin, int64_t s_end, int64_t e,
                                                                  const int32_t* csr_start) {
  const uint64_t* words = reinterpret_cast<const uint64_t*>(p.entries);
  const __m256i cols = _mm256_set1_epi32(int32_t(w.cols));
  for (int64_t s = s_begin; s < s_end; ++s) {
    const int64_t k0 = csr_start[s - s_begin], n = p.segments[s].count;
    __m512i differ = _mm512_setzero_si512();
    __mmask8 outside = 0;
    for (int64_t i = 0; i < n; i += 8) {
      const __mmask8 lanes = n - i >= 8 ? __mmask8(0xFF) : __mmask8((1u << (n - i)) - 1);
      const __m256i col = _mm256_maskz_loadu_epi32(lanes, w.col + k0 + i);
      const __m512i value = _mm512_cvtepu32_epi64(value_bits(w.values + k0 + i, lanes));
      const __m512i expected = _mm512_or_si512(_mm512_cvtepu32_epi64(col), _mm512_slli_epi64(value, 32));
      differ = _mm512_or_si512(differ, _mm512_xor_si512(expected, _mm512_maskz_loadu_epi64(lanes, words + e + i)));
      outside |= _mm256_cmpge_epu32_mask(col, cols);
    }
    if (_mm512_test_epi64_mask(differ, differ) != 0 || outside != 0) return s;
    e += n;
  }
  return s_end;
}
#endif

template <typename V>
int64_t first_differing_segment(const CsrView<V>& w, const PackedNonzeros& p, int64_t s_begin, int64_t s_end,
                                int64_t e, const int32_t* csr_start) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (!std::is_same_v<V, half_t>) {
    if (cpu_isa() >= Isa::kX86_64_V4) return first_differing_segment_avx512(w, p, s_begin, s_end, e, csr_start);
  }
#endif
  return first_differing_segment_scalar(w, p, s_begin, s_end, e, csr_start);
}

}  // namespace

template <typename V>
std::vector<int32_t> pack_nonzeros(const CsrView<V>& w) {
  const int64_t column_block = std::max<int64_t>(1, l1_cache_bytes() / (kPackedTileWidth * int64_t(sizeof(float))));
  const int64_t column_blocks = (w.cols + column_block - 1) / column_block;
  const int64_t nnz = w.crow[w.rows] - w.crow[0];
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  if (column_blocks <= 1 || nnz == 0 || double(nnz) < kMinPackedSegment * double(w.rows) * double(column_blocks) ||
      w.rows > kInt32Max || w.cols > kInt32Max || nnz > (kInt32Max - kPackedHeader) / 4) {
    return {};
  }
  std::vector<int32_t> block_segments{0}, block_entries{0};
  std::vector<PackedNonzeros::Segment> segments;
  std::vector<PackedNonzeros::Entry> entries;
  entries.reserve(nnz);
  int64_t cursor[kPackedRowBlock];
  struct Pending {
    int32_t count, row;
    int64_t start;
  };
  std::vector<Pending> pending;
  for (int64_t first = 0; first < w.rows; first += kPackedRowBlock) {
    const int64_t count = std::min(kPackedRowBlock, w.rows - first);
    for (int64_t i = 0; i < count; ++i) cursor[i] = w.crow[first + i];
    for (int64_t kb = 0; kb < column_blocks; ++kb) {
      // The last block takes whatever remains, so columns out of order within a row are still
      // each taken once (in CSR order, like the unpacked kernel).
      const int64_t limit = kb + 1 < column_blocks ? (kb + 1) * column_block : std::numeric_limits<int64_t>::max();
      pending.clear();
      for (int64_t i = 0; i < count; ++i) {
        const int64_t start = cursor[i], end = w.crow[first + i + 1];
        while (cursor[i] < end && w.col[cursor[i]] < limit) ++cursor[i];
        if (cursor[i] > start) pending.push_back({int32_t(cursor[i] - start), int32_t(i), start});
      }
      std::stable_sort(pending.begin(), pending.end(),
                       [](const Pending& a, const Pending& b) { return a.count < b.count; });
      for (const Pending& segment : pending) {
        segments.push_back({segment.row, segment.count});
        for (int64_t k = segment.start; k < segment.start + segment.count; ++k) {
          entries.push_back({w.col[k], to_float(w.values[k])});
        }
      }
    }
    block_segments.push_back(int32_t(segments.size()));
    block_entries.push_back(int32_t(entries.size()));
  }
  const int64_t row_blocks = int64_t(block_segments.size()) - 1;
  std::vector<int32_t> blob{kPackedFormatTag, int32_t(w.rows), int32_t(w.cols), int32_t(row_blocks),
                            int32_t(segments.size()), int32_t(entries.size())};
  blob.reserve(kPackedHeader + 2 * (row_blocks + 1) + 2 * segments.size() + 2 * entries.size());
  blob.insert(blob.end(), block_segments.begin(), block_segments.end());
  blob.insert(blob.end(), block_entries.begin(), block_entries.end());
  for (const auto& s : segments) blob.insert(blob.end(), {s.row, s.count});
  for (const auto& e : entries) blob.insert(blob.end(), {e.col, float_bits(e.value)});
  return blob;
}

PackedNonzeros packed_nonzeros(const int32_t* blob) {
  const int64_t row_blocks = blob[kRowBlocks], segments = blob[kSegments];
  const int32_t* block_segments = blob + kPackedHeader;
  const int32_t* block_entries = block_segments + row_blocks + 1;
  const int32_t* segment_ints = block_entries + row_blocks + 1;
  return {reinterpret_cast<const PackedNonzeros::Entry*>(segment_ints + 2 * segments),
          reinterpret_cast<const PackedNonzeros::Segment*>(segment_ints), block_segments, block_entries, false};
}

bool packed_columns_below(const int32_t* blob, int64_t cols, const ParallelFor& pf) {
  const PackedNonzeros::Entry* const entries = packed_nonzeros(blob).entries;
  std::atomic<bool> below{true};
  pf.run(0, blob[kEntries], kMinParallelWork, [&](int64_t begin, int64_t end) {
    if (!columns_below(entries + begin, entries + end, cols)) below.store(false, std::memory_order_relaxed);
  });
  return below.load();
}

template <typename V>
std::string find_packed_error(const CsrView<V>& w, const int32_t* blob, int64_t size, const ParallelFor& pf,
                              bool compare_entries) {
  // The header and the layout it implies, before anything it points to is read.
  if (size < kPackedHeader || blob[kTag] != kPackedFormatTag) {
    return "is not a packing of nonzeros (its header is missing or not pack_csr's)";
  }
  if (blob[kRows] != w.rows || blob[kCols] != w.cols) {
    return "was packed for a " + text(blob[kRows]) + "x" + text(blob[kCols]) + " weight, not " + text(w.rows) +
           "x" + text(w.cols);
  }
  const int64_t row_blocks = blob[kRowBlocks], segment_count = blob[kSegments], entry_count = blob[kEntries];
  const int64_t nnz = w.crow[w.rows] - w.crow[0];
  if (row_blocks != (w.rows + kPackedRowBlock - 1) / kPackedRowBlock || entry_count != nnz ||
      segment_count < 0 || segment_count > nnz ||
      size != kPackedHeader + 2 * (row_blocks + 1) + 2 * segment_count + 2 * entry_count) {
    return "has a layout that does not fit the weight's " + text(w.rows) + " rows and " + text(nnz) +
           " nonzeros (" + text(size) + " ints)";
  }
  const PackedNonzeros p = packed_nonzeros(blob);
  for (int64_t b = 0; b < row_blocks; ++b) {
    if (p.block_segments[b] < 0 || p.block_segments[b] > p.block_segments[b + 1] || p.block_entries[b] < 0 ||
        p.block_entries[b] > p.block_entries[b + 1]) {
      return "has decreasing segment or entry offsets at row block " + text(b);
    }
  }
  if (p.block_segments[0] != 0 || p.block_segments[row_blocks] != segment_count || p.block_entries[0] != 0 ||
      p.block_entries[row_blocks] != entry_count) {
    return "has segment or entry offsets that do not span its segments and entries";
  }
  // Without the comparison that is all: the SpMM keeps each segment within its row block's rows and
  // entries and clamps the columns of a row block that has one outside the weight, so whatever the
  // segments hold it reads nothing outside the blob or the operand. Placing them (below) is
  // O(segments): 5-6% of csr_mlp at BERT-base's shapes and 128 rows (Zen 3).
  if (!compare_entries) return "";
  // Then each row block against the weight (row blocks over the threads), "" or the block's first
  // problem. Its segments' places: each continues its row from where the row's previous segment
  // ended, within the row and the block's entries, and its segments use up its rows and its entries
  // (O(segments + rows)). Then its entries against its range of the CSR arrays, segment by segment
  // (first_differing_segment).
  const auto block_error = [&](int64_t b) -> std::string {
    const int64_t first = b * kPackedRowBlock, count = std::min(kPackedRowBlock, w.rows - first);
    const int64_t segments_begin = p.block_segments[b], segments_end = p.block_segments[b + 1];
    std::vector<int32_t> csr_start(segments_end - segments_begin);
    int64_t cursor[kPackedRowBlock];
    for (int64_t i = 0; i < count; ++i) cursor[i] = w.crow[first + i];
    int64_t e = p.block_entries[b];
    for (int64_t s = segments_begin; s < segments_end; ++s) {
      const PackedNonzeros::Segment segment = p.segments[s];
      if (segment.row < 0 || segment.row >= count || segment.count <= 0 ||
          segment.count > p.block_entries[b + 1] - e ||
          segment.count > w.crow[first + segment.row + 1] - cursor[segment.row]) {
        return "segment " + text(s) + " (row " + text(first + int64_t(segment.row)) + ", " + text(segment.count) +
               " entries) lies outside its row block's rows or nonzeros";
      }
      csr_start[s - segments_begin] = int32_t(cursor[segment.row]);
      cursor[segment.row] += segment.count;
      e += segment.count;
    }
    for (int64_t i = 0; i < count; ++i) {
      if (cursor[i] != w.crow[first + i + 1]) {
        return "leaves out nonzeros of row " + text(first + i) + " (" + text(w.crow[first + i + 1] - cursor[i]) +
               " of them)";
      }
    }
    if (e != p.block_entries[b + 1]) return "has entries no segment of row block " + text(b) + " takes";
    // The block's range of the CSR arrays read once in order first: in segment order the comparison
    // takes a run of each of up to 256 rows in turn, more streams than the prefetchers follow, and
    // waited on memory (whole BERT-base at batch 8 in the default setting, Zen 4: 1.07x with this on
    // one thread, 1.03-1.05x on two).
    touch_rows(w, first, first + count);
    const int64_t s =
        first_differing_segment(w, p, segments_begin, segments_end, p.block_entries[b], csr_start.data());
    if (s == segments_end) return "";
    const int64_t k0 = csr_start[s - segments_begin];
    return "differs from col_indices / values in row " + text(first + p.segments[s].row) + " (nonzeros " +
           text(k0) + ".." + text(k0 + p.segments[s].count - 1) + "): the weight changed after it was packed";
  };
  const int64_t bad_block = first_violation(row_blocks, 1, pf, [&](int64_t b) { return !block_error(b).empty(); });
  return bad_block == kNoViolation ? "" : block_error(bad_block);
}

#define SPARSE_RT_INSTANTIATE(V)                                                                \
  template std::vector<int32_t> pack_nonzeros<V>(const CsrView<V>&);                            \
  template std::string find_packed_error<V>(const CsrView<V>&, const int32_t*, int64_t, const ParallelFor&, bool);
SPARSE_RT_INSTANTIATE(float)
SPARSE_RT_INSTANTIATE(half_t)
SPARSE_RT_INSTANTIATE(bfloat16_t)
#undef SPARSE_RT_INSTANTIATE

}  // namespace sparse_rt::cpu
