#include "csr_conv2d.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "../checked_int.h"
#include "cache_sizes.h"
#include "csr_spmm.h"
#include "isa.h"
#include "scalar_types.h"

namespace sparse_rt::cpu {
namespace {

// Marks the phases (tap offset modulo stride) that some tap of one axis reads and numbers them.
std::vector<int32_t> phase_slots(int64_t taps, int64_t dilation, int64_t stride, int64_t* stored) {
  std::vector<int32_t> slot(stride, -1);
  for (int64_t t = 0; t < taps; ++t) slot[(t * dilation) % stride] = 0;
  *stored = 0;
  for (auto& s : slot) {
    if (s == 0) s = int32_t((*stored)++);
  }
  return slot;
}

#if defined(__x86_64__) && defined(__GNUC__)
// Columns 2i and 2i + 1 of a row of `width` floats to even[i] and odd[i], 16 of each per step (a
// stride-2 layer's two column phases); a null destination is a phase that no tap reads. The scalar
// walk below it took a fifth of ResNet-50's stride-2 3x3 layers' time.
SPARSE_RT_TARGET_X86_64_V4 void split_columns_avx512(const float* src, int64_t width, float* even, float* odd) {
  const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
  for (int64_t x = 0; x < width; x += 32) {
    const int64_t left = std::min<int64_t>(width - x, 32);
    const __mmask16 low = __mmask16((1u << std::min<int64_t>(left, 16)) - 1);
    const __mmask16 high = __mmask16((1u << std::max<int64_t>(left - 16, 0)) - 1);
    const __m512 a = _mm512_maskz_loadu_ps(low, src + x), b = _mm512_maskz_loadu_ps(high, src + x + 16);
    float* const at_even = even ? even + x / 2 : nullptr;
    float* const at_odd = odd ? odd + x / 2 : nullptr;
    if (at_even) _mm512_mask_storeu_ps(at_even, __mmask16((1u << ((left + 1) / 2)) - 1), _mm512_permutex2var_ps(a, evens, b));
    if (at_odd) _mm512_mask_storeu_ps(at_odd, __mmask16((1u << (left / 2)) - 1), _mm512_permutex2var_ps(a, odds, b));
  }
}
#endif

void pack_conv_input(const Conv2dShape& s, const PackedConvLayout& l, const float* in,
                     float* packed, int64_t c_begin, int64_t c_end) {
  const int64_t sh = s.stride_h, sw = s.stride_w, channel_len = l.phases * l.plane;
  if (c_end == s.in_channels) {
    std::memset(packed + s.in_channels * channel_len, 0, sizeof(float) * l.wide_padded);
  }
  if (sh == 1 && sw == 1) {
    // One phase, the padded image itself: each float written once, the padding between the rows
    // zeroed as the rows are copied (zeroing the whole image first wrote it twice).
    for (int64_t c = c_begin; c < c_end; ++c) {
      float* const channel = packed + c * channel_len;
      int64_t written = 0;
      for (int64_t y = 0; y < s.height; ++y) {
        const int64_t at = (y + s.pad_h) * l.phase_w + s.pad_w;
        std::fill(channel + written, channel + at, 0.f);
        std::memcpy(channel + at, in + (c * s.height + y) * s.width, sizeof(float) * s.width);
        written = at + s.width;
      }
      std::fill(channel + written, channel + channel_len, 0.f);
    }
    return;
  }
  std::memset(packed + c_begin * channel_len, 0, sizeof(float) * (c_end - c_begin) * channel_len);
  for (int64_t c = c_begin; c < c_end; ++c) {
    for (int64_t y = 0; y < s.height; ++y) {
      const int64_t py = y + s.pad_h;  // padded row: phase py % sh, phase row py / sh
      const int32_t row_slot = l.row_slot[py % sh];
      if (row_slot < 0) continue;
      const float* src = in + (c * s.height + y) * s.width;
      float* row = packed + c * channel_len + row_slot * l.stored_cols * l.plane + (py / sh) * l.phase_w;
      if (sw == 1) {
        std::memcpy(row + s.pad_w, src, sizeof(float) * s.width);
        continue;
      }
      if (sw > s.width) {
        // Fewer columns than phases (a stride far beyond the image): walk the columns, each in a
        // phase of its own, so the cost follows the image, not the stride.
        for (int64_t x = 0; x < s.width; ++x) {
          const int32_t slot = l.col_slot[(x + s.pad_w) % sw];
          if (slot >= 0) row[slot * l.plane + (x + s.pad_w) / sw] = src[x];
        }
        continue;
      }
      // Column x lands in phase (x + pad_w) % sw at (x + pad_w) / sw.
#if defined(__x86_64__) && defined(__GNUC__)
      if (sw == 2 && cpu_isa() == Isa::kX86_64_V4) {
        float* phase_of[2] = {nullptr, nullptr};  // where the even and the odd columns go
        for (int64_t b = 0; b < 2; ++b) {
          if (l.col_slot[b] < 0) continue;
          const int64_t x0 = (b + s.pad_w) % 2;  // the parity of the columns in phase b
          phase_of[x0] = row + l.col_slot[b] * l.plane + (x0 + s.pad_w) / 2;
        }
        split_columns_avx512(src, s.width, phase_of[0], phase_of[1]);
        continue;
      }
#endif
      for (int64_t b = 0; b < sw; ++b) {
        if (l.col_slot[b] < 0) continue;
        const int64_t x0 = ((b - s.pad_w) % sw + sw) % sw;
        float* dst = row + l.col_slot[b] * l.plane + (x0 + s.pad_w) / sw;
        for (int64_t x = x0; x < s.width; x += sw) *dst++ = src[x];
      }
    }
  }
}

// The offset into a group's packed image of channel 0's tap `tap` (ky * kw + kx): the weight's
// column c * taps + tap reads c * phases * plane past it.
int64_t tap_offset(const Conv2dShape& s, const PackedConvLayout& l, int64_t tap) {
  const int64_t ty = (tap / s.kw) * s.dil_h, tx = (tap % s.kw) * s.dil_w;
  const int64_t phase = l.row_slot[ty % s.stride_h] * l.stored_cols + l.col_slot[tx % s.stride_w];
  return phase * l.plane + (ty / s.stride_h) * l.phase_w + tx / s.stride_w;
}

// The offset of each of the weight's columns (in_channels / groups * taps).
std::vector<int32_t> conv_column_offsets(const Conv2dShape& s, const PackedConvLayout& l) {
  const int64_t taps = s.kh * s.kw, cin_per_group = s.in_channels / s.groups;
  std::vector<int32_t> offsets(cin_per_group * taps);
  for (int64_t tap = 0; tap < taps; ++tap) {
    const int64_t first = tap_offset(s, l, tap);
    for (int64_t c = 0; c < cin_per_group; ++c) offsets[c * taps + tap] = int32_t(c * l.phases * l.plane + first);
  }
  return offsets;
}

// Where conv_tap_offsets writes: offsets[k] for the nonzero k of row o is base(o), the offset of
// o's group, plus its column's offset.
struct TapOffsetRows {
  const int32_t* crow;
  const int32_t* col;
  int64_t cout_per_group, group_stride;
  int32_t* offsets;

  int32_t base(int64_t o) const { return int32_t((o / cout_per_group) * group_stride); }
};

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12's float/int conversions in avx512fintrin.h start from an uninitialized "undefined" vector,
// which -Wmaybe-uninitialized reports in the sanitizers' build (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// The columns for which map_rows_avx512 is exact: its quotient col / taps, taken as
// (col + 0.5) * (1 / taps) in float, lies at least 0.5 / taps from an integer and is off by under
// (col / taps + 1) * 2^-23, below that margin while col < 2^22 - taps.
constexpr int64_t kVectorMappedColumns = int64_t(1) << 20;

// The offsets of rows [row_begin, row_end) for at most 16 taps, 16 nonzeros at a time: column
// c * taps + tap has the offset c * phases * plane + tap_offset(tap), a division and a permute of a
// one-vector table instead of a load from a table of every column, which no longer has to be built
// on each call (Zen 4, fused ResNet-50 at batch 1 on one thread: the whole forward 1.02-1.03x as
// fast; the mapping loop alone 2.7x under perf).
SPARSE_RT_TARGET_X86_64_V4 void map_rows_avx512(const TapOffsetRows& rows, const Conv2dShape& s,
                                                const PackedConvLayout& l, int64_t row_begin, int64_t row_end) {
  const int64_t taps = s.kh * s.kw;
  alignas(64) int32_t tap_offsets[16] = {};
  for (int64_t tap = 0; tap < taps; ++tap) tap_offsets[tap] = int32_t(tap_offset(s, l, tap));
  const __m512i table = _mm512_load_si512(tap_offsets);
  const __m512 inverse = _mm512_set1_ps(1.f / float(taps)), half = _mm512_set1_ps(0.5f);
  const __m512i taps_v = _mm512_set1_epi32(int32_t(taps));
  const __m512i channel_len = _mm512_set1_epi32(int32_t(l.phases * l.plane));
  for (int64_t o = row_begin; o < row_end; ++o) {
    const __m512i base = _mm512_set1_epi32(rows.base(o));
    const int64_t end = rows.crow[o + 1];
    for (int64_t k = rows.crow[o]; k < end; k += 16) {
      const __mmask16 lanes = end - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (end - k)) - 1);
      const __m512i col = _mm512_maskz_loadu_epi32(lanes, rows.col + k);
      const __m512i channel =
          _mm512_cvttps_epi32(_mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(col), half), inverse));
      // A column outside the weight (indices not checked) gets a wrong offset, never a read outside
      // the table: the permute takes the tap's low four bits.
      const __m512i tap = _mm512_sub_epi32(col, _mm512_mullo_epi32(channel, taps_v));
      const __m512i offset = _mm512_add_epi32(_mm512_add_epi32(base, _mm512_mullo_epi32(channel, channel_len)),
                                              _mm512_permutexvar_epi32(tap, table));
      _mm512_mask_storeu_epi32(rows.offsets + k, lanes, offset);
    }
  }
}
#pragma GCC diagnostic pop
#endif

// The output pixels q in [0, out) whose tap at `offset` (k * dilation - pad) reads inside
// [0, size): 0 <= q * stride + offset < size.
struct TapRange {
  int64_t begin, end;
};
TapRange tap_range(int64_t offset, int64_t stride, int64_t size, int64_t out) {
  const int64_t begin = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  const int64_t end = offset >= size ? 0 : std::min(out, (size - 1 - offset) / stride + 1);
  return {begin, std::max(begin, end)};
}

// The gather path (PackedConvLayout::gather): one (image, output channel) plane at a time, zeroed,
// then each nonzero of that channel's row added where its tap reads the image.
template <typename V>
void gather_conv2d(const Conv2dShape& s, const CsrView<V>& w, const float* x, float* y, Epilogue ep,
                   const ParallelFor& pf) {
  const int64_t taps = s.kh * s.kw, cin_per_group = s.in_channels / s.groups;
  const int64_t cout_per_group = s.out_channels / s.groups;
  const int64_t in_plane = s.height * s.width, out_plane = s.out_h * s.out_w;
  pf.run(0, s.batch * s.out_channels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n = p / s.out_channels, o = p % s.out_channels;
      float* out = y + p * out_plane;
      std::fill(out, out + out_plane, 0.f);
      for (int64_t k = w.crow[o]; k < w.crow[o + 1]; ++k) {
        const int64_t tap = w.col[k] % taps;
        const int64_t offset_y = tap / s.kw * s.dil_h - s.pad_h, offset_x = tap % s.kw * s.dil_w - s.pad_w;
        const TapRange rows = tap_range(offset_y, s.stride_h, s.height, s.out_h);
        const TapRange cols = tap_range(offset_x, s.stride_w, s.width, s.out_w);
        const float value = to_float(w.values[k]);
        const float* in = x + (n * s.in_channels + (o / cout_per_group) * cin_per_group + w.col[k] / taps) * in_plane;
        for (int64_t oy = rows.begin; oy < rows.end; ++oy) {
          // May be negative; the sum is the pixel read, inside the plane for every ox in cols.
          const int64_t row_start = (oy * s.stride_h + offset_y) * s.width + offset_x;
          float* out_row = out + oy * s.out_w;
          for (int64_t ox = cols.begin; ox < cols.end; ++ox) out_row[ox] += value * in[row_start + ox * s.stride_w];
        }
      }
      for (int64_t q = 0; q < out_plane; ++q) out[q] = ep.apply(out[q], o, p * out_plane + q);
    }
  });
}

// How the panels layout splits its work: each panel's rows in `parts` nnz-balanced parts (as
// parallel_over_rows would), the (panel, part) pairs in order over `slots` threads by their columns
// (the last panel is narrower), each thread with its own panel buffer, so that it copies each of its
// panels once. A batch-1 14x14 image, three whole panels and one of 8 columns, ran 0.88-0.96x the tap
// offsets when split by the pairs' count (128 columns on one thread, 72 on the other).
struct PanelWork {
  int64_t panels, parts, slots;
  PanelLayout layout;

  // The thread that computes pair u (panel u / parts): where its columns' middle falls among all
  // the pairs' columns.
  int64_t slot_of(int64_t u) const {
    const int64_t p = u / parts, width = layout.width(p);
    const int64_t middle = 2 * (p * kPanelWidth * parts + u % parts * width) + width;
    return middle * slots / (2 * layout.padded() * parts);
  }
};

bool pointwise(const Conv2dShape& s) { return s.kh == 1 && s.kw == 1 && s.pad_h == 0 && s.pad_w == 0; }

// The shape that the panels layout runs: a strided layer's is a stride-1 one on the pixels its 1x1
// kernel reads.
Conv2dShape panel_shape(const Conv2dShape& s) {
  Conv2dShape p = s;
  p.height = s.out_h;
  p.width = s.out_w;
  p.stride_h = p.stride_w = 1;
  return p;
}

PanelWork panel_work(const Conv2dShape& s, int64_t nnz, int64_t threads) {
  const int64_t columns = s.batch * s.height * s.width;
  const int64_t panels = PanelLayout{columns, s.in_channels}.count();
  // In double: nnz * columns may overflow int64 where neither does.
  const bool parallel = double(nnz) * double(columns) >= double(kMinParallelWork);
  const int64_t parts = parallel ? std::max<int64_t>(1, std::min(s.out_channels, threads)) : 1;
  return {panels, parts, std::max<int64_t>(1, std::min(threads, panels * parts)), {columns, s.in_channels}};
}

// Prefetches the `length` floats that follow run[0, length): the next panel's columns of a row that
// pack_pixel_panel copies.
void prefetch_following(const float* run, int64_t length) {
  for (int64_t t = 0; t < length; t += 64 / int64_t(sizeof(float))) __builtin_prefetch(run + length + t);
}

// Prefetches a panel's share of a contiguous [images, channels, pixels] tensor `t`: from column
// `column` (pixel column % pixels of image column / pixels) to the panel's or the image's end, in each
// of the channels' rows; with write intent where `write` and the build targets PREFETCHW (a line about
// to be stored to is read first either way).
void prefetch_panel(const float* t, int64_t channels, int64_t pixels, int64_t column, bool write) {
  const float* const at = t + column / pixels * channels * pixels + column % pixels;
  const int64_t length = std::min(kPanelWidth, pixels - column % pixels);
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t j = 0; j < length; j += 64 / int64_t(sizeof(float))) {
      if (write) {
        __builtin_prefetch(at + c * pixels + j, 1);
      } else {
        __builtin_prefetch(at + c * pixels + j);
      }
    }
  }
}

// Where a 1x1 convolution's output pixels read its input: pixel (oy, ox) of image n reads channel c
// at x[n * image + c * plane + oy * row_step + ox * col_step] (a stride-1 layer's rows follow each
// other: contiguous).
struct PixelSource {
  const float* x;
  int64_t image, plane, out_w, row_step, col_step;
  bool contiguous() const { return col_step == 1 && row_step == out_w; }
};

// A panel's columns [first, first + width) as runs within one image (or output row, where the source
// is not contiguous): `length` columns from `at` in the panel, read at `from` in the source. A panel
// crosses at most width of them.
struct PanelRun {
  int64_t from, at, length;
};
int64_t panel_runs(const PixelSource& source, int64_t pixels, int64_t columns, int64_t first, int64_t width,
                   PanelRun* runs) {
  int64_t count = 0;
  const int64_t filled = std::min(width, columns - first);
  for (int64_t j = 0; j < filled;) {
    const int64_t column = first + j, pixel = column % pixels, image = column / pixels * source.image;
    if (source.contiguous()) {
      runs[count] = {image + pixel, j, std::min(filled - j, pixels - pixel)};
    } else {
      const int64_t oy = pixel / source.out_w, ox = pixel % source.out_w;
      runs[count] = {image + oy * source.row_step + ox * source.col_step, j, std::min(filled - j, source.out_w - ox)};
    }
    j += runs[count++].length;
  }
  return count;
}

// A run of a panel row's columns, the same in every channel (pack_pixel_panel, pack_tap_panel):
// `length` floats at `at` in the channel's first row of the panel, of which [lead, lead + count) are
// read from the channel's plane from `from` on (every stride-th float) and the rest are padding (zeros).
struct PanelCopy {
  int64_t at, from, lead, count, length;
};

#if defined(__x86_64__) && defined(__GNUC__)
// copy_panel at stride 1 or 2, in pieces of 16 floats worked out once for all the channels: masked
// loads (masked lanes read nothing; the padding's zeros), the even floats of two vectors picked at
// stride 2, a masked store. Masks computed per piece and channel took a third of ResNet-50 95%'s 14x14
// 3x3 layer at batch 8 (perf, one thread), a scalar loop at stride 2 up to half of its stride-2 3x3
// layers' time.
template <int kStride>
SPARSE_RT_TARGET_X86_64_V4 void copy_panel_avx512(const std::vector<PanelCopy>& copies, const float* x,
                                                  int64_t channels, int64_t plane, int64_t channel_rows,
                                                  float* panel) {
  static_assert(kStride == 1 || kStride == 2);
  struct Piece {
    int64_t to, from;
    __mmask16 read, store, low, high;  // low, high: the two source vectors' lanes read at stride 2
  };
  thread_local std::vector<Piece> pieces;
  pieces.clear();
  for (const PanelCopy& t : copies) {
    for (int64_t j = 0; j < t.length; j += 16) {
      const uint32_t read_begin = uint32_t(std::clamp<int64_t>(t.lead - j, 0, 16));
      const uint32_t read_end = uint32_t(std::clamp<int64_t>(t.lead + t.count - j, read_begin, 16));
      // Source floats [2 * read_begin, 2 * read_end - 1) at stride 2.
      const uint32_t source = read_end > read_begin
                                  ? _bzhi_u32(~0u, 2 * read_end - 1) & ~_bzhi_u32(~0u, 2 * read_begin)
                                  : 0;
      pieces.push_back({t.at + j, t.from + (j - t.lead) * kStride,
                        __mmask16(_bzhi_u32(0xffff, read_end) & ~_bzhi_u32(0xffff, read_begin)),
                        __mmask16(_bzhi_u32(0xffff, uint32_t(std::min<int64_t>(16, t.length - j)))),
                        __mmask16(source), __mmask16(source >> 16)});
    }
  }
  const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int64_t c = 0; c < channels; ++c) {
    const float* const source = x + c * plane;
    float* const rows = panel + c * channel_rows;
    for (const Piece& piece : pieces) {
      __m512 v;
      if constexpr (kStride == 1) {
        v = _mm512_maskz_loadu_ps(piece.read, source + piece.from);
      } else {
        const __m512 low = _mm512_maskz_loadu_ps(piece.low, source + piece.from);
        const __m512 high = _mm512_maskz_loadu_ps(piece.high, source + piece.from + 16);
        v = _mm512_maskz_permutex2var_ps(piece.read, low, evens, high);
      }
      _mm512_mask_storeu_ps(rows + piece.to, piece.store, v);
    }
  }
}
#endif

// Each channel's rows of a panel (channel c's first at panel + c * channel_rows) from `copies`, reading
// channel c's plane at x + c * plane every `stride`-th float.
void copy_panel(const std::vector<PanelCopy>& copies, const float* x, int64_t channels, int64_t plane,
                int64_t channel_rows, int64_t stride, float* panel) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (stride <= 2 && cpu_isa() == Isa::kX86_64_V4) {
    (stride == 1 ? copy_panel_avx512<1> : copy_panel_avx512<2>)(copies, x, channels, plane, channel_rows, panel);
    return;
  }
#endif
  for (int64_t c = 0; c < channels; ++c) {
    const float* const source = x + c * plane;
    float* const rows = panel + c * channel_rows;
    for (const PanelCopy& t : copies) {
      float* const to = rows + t.at;
      std::fill(to, to + t.lead, 0.f);
      for (int64_t i = 0; i < t.count; ++i) to[t.lead + i] = source[t.from + i * stride];
      std::fill(to + t.lead + t.count, to + t.length, 0.f);
    }
  }
}

// Zeros past column `filled` in each of a panel's `rows` rows (`width` floats each).
void zero_panel_tail(float* panel, int64_t rows, int64_t width, int64_t filled) {
  if (filled == width) return;
  for (int64_t r = 0; r < rows; ++r) std::fill(panel + r * width + filled, panel + (r + 1) * width, 0.f);
}

// Columns [first, first + width) of the [channels, columns] operand that the images' output pixels
// (`pixels` each) form side by side, read from `source`, channel by channel into `panel` (rows
// `width` floats apart), zeros past the last column; its runs are worked out once. Runs of adjacent
// pixels are copied whole (memcpy), the next panel's columns of a contiguous source prefetched as each
// run is copied (prefetch_following); a strided layer's (into `copies`) by copy_panel, in pieces
// (ResNet-50's stride-2 downsampling layers 1.05-1.24x at batch 8 against a scalar loop; adjacent
// pixels' runs in pieces ran 0.89-1.22x the memcpy: Zen 4, 2 threads, a script outside the repo,
// /tmp/k1/pw_ab.py).
void pack_pixel_panel(const PixelSource& source, int64_t channels, int64_t pixels, int64_t columns, int64_t first,
                      int64_t width, std::vector<PanelCopy>& copies, float* panel) {
  PanelRun runs[kPanelWidth];
  const int64_t count = panel_runs(source, pixels, columns, first, width, runs);
  zero_panel_tail(panel, channels, width, std::min(width, columns - first));
  if (source.col_step != 1) {
    copies.clear();
    for (int64_t i = 0; i < count; ++i) copies.push_back({runs[i].at, runs[i].from, 0, runs[i].length, runs[i].length});
    copy_panel(copies, source.x, channels, source.plane, width, source.col_step, panel);
    return;
  }
  const bool contiguous = source.contiguous();
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t i = 0; i < count; ++i) {
      const float* from = source.x + runs[i].from + c * source.plane;
      if (contiguous) prefetch_following(from, runs[i].length);
      std::memcpy(panel + c * width + runs[i].at, from, sizeof(float) * runs[i].length);
    }
  }
}

// Columns [first, first + width) of the [in_channels * taps, columns] operand of a convolution of
// more than one tap (its input unfolded: row c * taps + tap holds, for each output pixel, the input
// pixel that tap reads in channel c, or 0 in the padding), the images' output pixels (`pixels` each)
// side by side, into `panel` (rows `width` floats apart), zeros past the last column. The copies (a
// run of one output row for each tap) are worked out once for all the channels (into `copies`).
void pack_tap_panel(const Conv2dShape& s, const float* x, int64_t columns, int64_t first, int64_t width,
                    std::vector<PanelCopy>& copies, float* panel) {
  const int64_t pixels = s.out_h * s.out_w, taps = s.kh * s.kw, plane = s.height * s.width;
  const int64_t filled = std::min(width, columns - first);
  const auto ceil_div = [](int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -(-a / b); };
  copies.clear();
  for (int64_t j = 0; j < filled;) {
    const int64_t column = first + j, image = column / pixels, pixel = column % pixels;
    const int64_t oy = pixel / s.out_w, ox = pixel % s.out_w, length = std::min(filled - j, s.out_w - ox);
    for (int64_t ky = 0; ky < s.kh; ++ky) {
      const int64_t iy = oy * s.stride_h - s.pad_h + ky * s.dil_h;
      for (int64_t kx = 0; kx < s.kw; ++kx) {
        const int64_t at = (ky * s.kw + kx) * width + j;
        if (iy < 0 || iy >= s.height) {
          copies.push_back({at, 0, length, 0, length});
          continue;
        }
        // Output column ox + t reads input column ix0 + t * stride: inside the row for t in [lead, end).
        const int64_t ix0 = ox * s.stride_w - s.pad_w + kx * s.dil_w;
        const int64_t lead = std::clamp<int64_t>(ceil_div(-ix0, s.stride_w), 0, length);
        const int64_t end = std::clamp<int64_t>(ceil_div(s.width - ix0, s.stride_w), lead, length);
        copies.push_back({at, image * s.in_channels * plane + iy * s.width + ix0 + lead * s.stride_w, lead,
                          end - lead, length});
      }
    }
    j += length;
  }
  zero_panel_tail(panel, s.in_channels * taps, width, filled);
  copy_panel(copies, x, s.in_channels, plane, taps * width, s.stride_w, panel);
}

#if defined(__x86_64__) && defined(__GNUC__)
// to[0, n) = from[0, n), the whole 64-byte lines of `to` with non-temporal stores.
SPARSE_RT_TARGET_X86_64_V4 void stream_floats_avx512(float* to, const float* from, int64_t n) {
  int64_t head = std::min<int64_t>(n, (64 - int64_t(reinterpret_cast<uintptr_t>(to) & 63)) % 64 / int64_t(sizeof(float)));
  if (reinterpret_cast<uintptr_t>(to) % sizeof(float) != 0) head = n;  // never aligns: plain stores
  std::memcpy(to, from, sizeof(float) * head);
  int64_t i = head;
  for (; i + 16 <= n; i += 16) _mm512_stream_ps(to + i, _mm512_loadu_ps(from + i));
  std::memcpy(to + i, from + i, sizeof(float) * (n - i));
}
#endif

// to[0, n) = from[0, n), with non-temporal stores where `stream` (AVX-512 only).
void copy_floats(float* to, const float* from, int64_t n, bool stream) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (stream && cpu_isa() == Isa::kX86_64_V4) {
    stream_floats_avx512(to, from, n);
    return;
  }
#endif
  std::memcpy(to, from, sizeof(float) * n);
}

// The inverse of pack_pixel_panel for a contiguous [batch, channels, pixels] output `y`: the panel's
// stored columns written to their runs, with non-temporal stores where `stream` (AVX-512 only).
void store_pixel_panel(const float* panel, int64_t channels, int64_t pixels, int64_t columns, int64_t first,
                       int64_t width, float* y, bool stream) {
  const PixelSource target{y, channels * pixels, pixels, pixels, pixels, 1};
  PanelRun runs[kPanelWidth];
  const int64_t count = panel_runs(target, pixels, columns, first, width, runs);
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t i = 0; i < count; ++i) {
      copy_floats(y + runs[i].from + c * pixels, panel + c * width + runs[i].at, runs[i].length, stream);
    }
  }
}

// The panels layout (PackedConvLayout::panels): the SpMM of each panel of output pixels, its output
// stored in runs that end where an image does; a kernel of several taps unfolds each panel's input
// (pack_tap_panel). A whole panel within one image of a contiguous source
// is read in place, its rows `pixels` apart, unless the packed kernel reads it (its rows must be 64
// floats apart): ResNet-50's 56x56 layers of 64 input channels, whose weights do not pack, lost up
// to 10% to the copy.
// Each panel prefetches the next one's input (copied or read in place), its residual and, unless
// the output streams, its output lines: a panel reads and writes a run in each of hundreds of
// channel rows, more streams than the prefetchers follow, and a layer's input has often left the
// cache (Intel Xeon, 2 threads, ResNet-50 90% batch 8: the first 64 -> 64 layer with its operands
// flushed 2.6 -> 1.3 ms, the whole model 1.02x; the residual's too, 1.03-1.04x more, at 95% 1.05x;
// batch 1 1.00x; old and new alternated in one process). Where the output streams, the residual has left
// the cache too, and a burst of its prefetches (a line in each of hundreds of channel rows) stalls the
// loads behind it: the SpMM's stores prefetch it instead, a group of rows at a time, as they store the
// same rows (ResNet-50's second stage's last layer with the downsampling's output, after the block's
// first two layers: 2.45 -> 1.72 ms; the whole model at batch 8 1.013x / 1.035x at 90%, 1.023x / 1.023x
// at 95%, old and new alternated in one process; batch 1 unchanged: nothing streams there; Intel Xeon,
// 2 threads, scripts outside the repo: /tmp/i6/ctx.py, ab_flag.py).
template <typename V>
void conv_panels(const Conv2dShape& shape, const CsrView<V>& w, const float* x, float* y, const Epilogue& ep,
                 float* scratch, const ParallelFor& pf) {
  const Conv2dShape s = panel_shape(shape);
  const bool unfolds = !pointwise(shape);
  const int64_t panel_rows = shape.in_channels / shape.groups * shape.kh * shape.kw;
  const PixelSource source{x, shape.in_channels * shape.height * shape.width, shape.height * shape.width, s.out_w,
                           shape.stride_h * shape.width, shape.stride_w};
  const int64_t pixels = s.height * s.width, columns = s.batch * pixels;
  const PanelWork work = panel_work(s, w.crow[w.rows], pf.num_threads);
  const int64_t units = work.panels * work.parts;
  // A residual that leaves the cache with the rest of the call's operands (the output streams) is
  // prefetched by the SpMM's stores, a group of rows at a time (StridedOutput::next_columns).
  const bool spread_residual = ep.residual && ep.stream;
  // The first pair of a slot: slot_of does not decrease with the pair.
  const auto first_pair = [&](int64_t slot) {
    int64_t low = 0, high = units;
    while (low < high) {
      const int64_t mid = (low + high) / 2;
      if (work.slot_of(mid) < slot) {
        low = mid + 1;
      } else {
        high = mid;
      }
    }
    return low;
  };
  pf.run(0, work.slots, 1, [&](int64_t slot_begin, int64_t slot_end) {
    for (int64_t slot = slot_begin; slot < slot_end; ++slot) {
      float* const panel = scratch + slot * panel_rows * kPanelWidth;
      int64_t copied = -1;
      std::vector<PanelCopy> copies;
      const int64_t pairs_end = first_pair(slot + 1);
      for (int64_t u = first_pair(slot); u < pairs_end; ++u) {
        const int64_t p = u / work.parts, part = u % work.parts;
        const int64_t first = p * kPanelWidth, width = work.layout.width(p), pixel = first % pixels;
        DenseRows b{panel, width, width};
        const bool in_place =
            !unfolds && !w.packed && source.contiguous() && width == kPanelWidth && pixel + width <= pixels;
        if (in_place) {
          b = {x + first / pixels * source.image + pixel, pixels, width};
        } else if (p != copied && unfolds) {
          pack_tap_panel(shape, x, columns, first, width, copies, panel);
          copied = p;
        } else if (p != copied) {
          pack_pixel_panel(source, s.in_channels, pixels, columns, first, width, copies, panel);
          copied = p;
        }
        const int64_t next = first + kPanelWidth;
        if (part == 0 && next < columns && pixels > 1) {
          if (in_place) prefetch_panel(x, s.in_channels, pixels, next, false);
          if (!ep.stream) prefetch_panel(y, s.out_channels, pixels, next, true);
          if (ep.residual && !spread_residual) prefetch_panel(ep.residual, s.out_channels, pixels, next, false);
        }
        const int64_t stored = std::min(width, columns - first);
        // Images of one pixel: the output is a linear layer's, [batch, out_channels], from the
        // panel's first image on.
        const bool one_pixel = pixels == 1;
        StridedOutput out =
            one_pixel ? StridedOutput{y + first * s.out_channels, 1, s.out_channels, stored}
                      : StridedOutput{y, pixels, 1, stored, pixels, pixels, s.out_channels * pixels, first};
        if (spread_residual && width == kPanelWidth && next < columns && !one_pixel) {
          out.next_columns = std::min(kPanelWidth, columns - next);
        }
        csr_spmm(w, b, out, one_pixel ? ep.at(first * s.out_channels) : ep,
                 balanced_row_start(w.crow, w.rows, part, work.parts),
                 balanced_row_start(w.crow, w.rows, part + 1, work.parts));
      }
    }
  });
}

// The packed path's channel blocks (PackedConvLayout::idx_block): a 64-column tile reads in each
// input channel the union of its taps' windows, 64 floats from each tap's offset (126 floats for a
// 3x3 kernel on a 28-wide image), and over all the channels that outgrows L1 (63 KiB for
// ResNet-50's 128-channel 3x3 layers), so each nonzero waited on L2. A block's windows fill half of
// L1, leaving the rest to the row block's sums. One group only: a row's offsets then grow with the
// channel, so a block is a range of them. Only where a row has kMinNonzerosPerBlock nonzeros in a
// block on average: each (row, block) stores and reloads the row's sums.
void set_channel_blocks(const Conv2dShape& s, int64_t nnz, PackedConvLayout& l) {
  constexpr int64_t kMinNonzerosPerBlock = 16;
  l.idx_block = l.idx_blocks = 0;
  if (s.groups != 1 || l.direct) return;
  std::vector<int64_t> starts(s.kh * s.kw);
  for (int64_t tap = 0; tap < int64_t(starts.size()); ++tap) starts[tap] = tap_offset(s, l, tap);
  std::sort(starts.begin(), starts.end());
  int64_t window = 0, covered = std::numeric_limits<int64_t>::min();
  for (const int64_t start : starts) {
    window += start + kPanelWidth - std::max(start, covered);
    covered = start + kPanelWidth;
  }
  const int64_t channels = std::max<int64_t>(1, l1_cache_bytes() / 2 / (window * int64_t(sizeof(float))));
  const int64_t count = (s.in_channels + channels - 1) / channels;
  // In double: the output's channels are bounded by the call's size only.
  if (count < 2 || double(nnz) < double(kMinNonzerosPerBlock) * double(s.out_channels) * double(count)) return;
  l.idx_block = channels * l.phases * l.plane;
  l.idx_blocks = count;
}

}  // namespace

PackedConvLayout packed_conv_layout(const Conv2dShape& s, int64_t nnz, bool packed) {
  PackedConvLayout l{};
  // What the call reads and writes bounds what the packed path may allocate.
  const CheckedInt touched = CheckedInt(s.batch) * s.in_channels * s.height * s.width +
                             CheckedInt(s.batch) * s.out_channels * s.out_h * s.out_w + nnz;
  const CheckedInt budget = CheckedInt(kPackedScratchPerElement) * touched + kPackedScratchSlack;
  const int64_t limit = budget.overflowed() ? std::numeric_limits<int64_t>::max() : budget.value();
  // The phase tables (one entry per stride step) and the column offsets (one per weight column)
  // are built before the packed sizes are known, so they are bounded first.
  const CheckedInt tables =
      CheckedInt(s.stride_h) + s.stride_w + CheckedInt(s.in_channels / s.groups) * s.kh * s.kw;
  PackedConvLayout gather{};
  gather.gather = true;
  if (!tables.at_most(limit)) return gather;
  int64_t stored_rows = 0;
  try {
    l.row_slot = phase_slots(s.kh, s.dil_h, s.stride_h, &stored_rows);
    l.col_slot = phase_slots(s.kw, s.dil_w, s.stride_w, &l.stored_cols);
  } catch (const std::bad_alloc&) {  // tables within the budget may still not fit in memory
    return gather;
  }
  l.phases = stored_rows * l.stored_cols;  // at most kh * kw
  const CheckedInt phase_h = (CheckedInt(s.height) + CheckedInt(2) * s.pad_h + (s.stride_h - 1)) / s.stride_h;
  const CheckedInt phase_w = (CheckedInt(s.width) + CheckedInt(2) * s.pad_w + (s.stride_w - 1)) / s.stride_w;
  const CheckedInt wide = CheckedInt(s.out_h) * phase_w;
  // Padded as a linear layer's panels are (padded_columns): the rule applied to the last tile's columns.
  const int64_t last_tile = wide.value() % kPanelWidth;
  const CheckedInt wide_padded = wide + (padded_columns(last_tile) - last_tile);
  // A tap reads [offset, offset + wide_padded), which may run past the last plane by up to
  // wide_padded floats: the zero tail keeps those reads inside the buffer.
  const CheckedInt packed_len = CheckedInt(s.in_channels) * l.phases * phase_h * phase_w + wide_padded;
  const CheckedInt scratch = tables + CheckedInt(s.batch) * packed_len + nnz;
  // Tap offsets into a packed image are int32.
  if (!packed_len.at_most(std::numeric_limits<int32_t>::max() - 1) || !scratch.at_most(limit)) return gather;
  l.phase_h = phase_h.value();
  l.phase_w = phase_w.value();
  l.plane = l.phase_h * l.phase_w;
  l.wide = wide.value();
  l.wide_padded = wide_padded.value();
  l.packed_len = packed_len.value();
  l.direct = pointwise(s) && s.stride_h == 1 && s.stride_w == 1;
  l.crop = l.phase_w != s.out_w;
  // batch * out_h * out_w fits: the output's elements were bounded above.
  const int64_t columns = PanelLayout{s.batch * s.out_h * s.out_w, s.in_channels}.padded();
  // A panel of an unfolded input: a row per weight column (in_channels * taps), each within the budget.
  const CheckedInt unfolded_rows = CheckedInt(s.in_channels) * s.kh * s.kw;
  const bool unfolds = packed && columns >= kMinUnfoldedColumns && (unfolded_rows * kPanelWidth).at_most(limit) &&
                       double(nnz) >= double(kMinUnfoldedNonzerosPerRow) * double(unfolded_rows.value());
  l.panels = s.groups == 1 && columns >= kPanelWidth && (pointwise(s) || unfolds);
  set_channel_blocks(s, nnz, l);
  return l;
}

ConvScratchSizes conv_scratch_sizes(const Conv2dShape& s, const PackedConvLayout& l, int64_t nnz, int64_t threads) {
  if (l.gather) return {0, 0, 0};
  if (l.panels) {
    return {0, 0, panel_work(panel_shape(s), nnz, threads).slots * s.in_channels * s.kh * s.kw * kPanelWidth};
  }
  return {l.direct ? 0 : s.batch * l.packed_len, nnz, 0};
}

void conv_tap_offsets(const Conv2dShape& s, const PackedConvLayout& l, const int32_t* crow, const int32_t* col,
                      int32_t* offsets, const ParallelFor& pf) {
  if (l.gather || l.panels) return;
  const TapOffsetRows rows{crow, col, s.out_channels / s.groups, s.in_channels / s.groups * l.phases * l.plane,
                           offsets};
#if defined(__x86_64__) && defined(__GNUC__)
  const int64_t taps = s.kh * s.kw;
  if (cpu_isa() == Isa::kX86_64_V4 && taps <= 16 && s.in_channels / s.groups * taps <= kVectorMappedColumns) {
    pf.run(0, s.out_channels, 64, [&](int64_t o0, int64_t o1) { map_rows_avx512(rows, s, l, o0, o1); });
    return;
  }
#endif
  const std::vector<int32_t> column_offsets = conv_column_offsets(s, l);
  pf.run(0, s.out_channels, 64, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      const int32_t base = rows.base(o);
      for (int64_t k = rows.crow[o]; k < rows.crow[o + 1]; ++k) rows.offsets[k] = base + column_offsets[rows.col[k]];
    }
  });
}

bool streams_output(const Conv2dShape& s, const Epilogue& ep) {
  const double output = double(s.batch) * double(s.out_channels) * double(s.out_h * s.out_w);
  const double touched = double(s.batch) * double(s.in_channels) * double(s.height * s.width) +
                         output * (ep.residual ? 2 : 1);
  return touched * sizeof(float) > double(std::min(l3_cache_bytes(), kL3CountedAtMost)) / 2;
}

template <typename V>
void csr_conv2d(const Conv2dShape& s, const PackedConvLayout& l, const CsrView<V>& w,
                const float* x, float* y, Epilogue ep, const ConvScratch& scratch,
                const ParallelFor& pf) {
  ep.stream = ep.stream || streams_output(s, ep);
  if (l.gather) {
    gather_conv2d(s, w, x, y, ep, pf);
    return;
  }
  if (l.panels) {
    conv_panels(s, w, x, y, ep, scratch.panels, pf);
    return;
  }
  const int64_t in_image = s.in_channels * s.height * s.width;
  const int64_t out_image = s.out_channels * s.out_h * s.out_w;
  if (!l.direct) {
    // Split by image and channel: a batch-1 image is packed by every thread too.
    pf.run(0, s.batch * s.in_channels, 16, [&](int64_t u0, int64_t u1) {
      while (u0 < u1) {
        const int64_t n = u0 / s.in_channels, c0 = u0 % s.in_channels;
        const int64_t c1 = std::min(s.in_channels, c0 + (u1 - u0));
        pack_conv_input(s, l, x + n * in_image, scratch.packed + n * l.packed_len, c0, c1);
        u0 += c1 - c0;
      }
    });
  }
  // The SpMM's dense operand is the packed image (or the input itself), its column indices the
  // tap offsets into it. Its output rows are the wide ones, stored cropped (StridedOutput's segments).
  const float* images = l.direct ? x : scratch.packed;
  const int64_t image_stride = l.direct ? in_image : l.packed_len;
  const int64_t width = l.direct ? l.wide : l.wide_padded;
  const int64_t out_plane = s.out_h * s.out_w;
  const CsrView<V> taps{w.crow, scratch.offsets, w.values, w.rows, w.cols};
  parallel_over_rows(pf, w.crow, w.rows, s.batch, int64_t(w.crow[w.rows]) * l.wide,
                     [&](int64_t n, int64_t o0, int64_t o1) {
                       const DenseRows b{images + n * image_stride, 1, width, l.idx_block, l.idx_blocks};
                       const StridedOutput out =
                           l.crop ? StridedOutput{y + n * out_image, out_plane, 1, l.wide, l.phase_w, s.out_w, s.out_w}
                                  : StridedOutput{y + n * out_image, out_plane, 1, l.wide};
                       csr_spmm(taps, b, out, ep.at(n * out_image), o0, o1);
                     });
}

namespace {

// The panels of each slot of a chain: [p * panels / slots, (p + 1) * panels / slots).
int64_t chain_slots(const Conv2dShape& first, int64_t threads) {
  const int64_t panels = PanelLayout{first.batch * first.height * first.width, first.in_channels}.count();
  return std::max<int64_t>(1, std::min(threads, panels));
}

}  // namespace

bool chains_pointwise(const Conv2dShape& first, const Epilogue& ep1, int64_t threads) {
  const bool direct = pointwise(first) && first.stride_h == 1 && first.stride_w == 1 && first.groups == 1;
  const int64_t pixels = first.height * first.width;
  const int64_t panels = PanelLayout{first.batch * pixels, first.in_channels}.count();
  return direct && pixels > 1 && panels >= kChainPanelsPerThread * std::max<int64_t>(threads, 1) &&
         (ep1.stream || streams_output(first, ep1));
}

int64_t pointwise_chain_scratch(const Conv2dShape& first, bool residual, int64_t threads) {
  const int64_t per_slot = (first.in_channels + (residual ? 2 : 1) * first.out_channels) * kPanelWidth;
  return chain_slots(first, threads) * per_slot;
}

template <typename V>
void pointwise_conv_chain(const Conv2dShape& first, const CsrView<V>& w1, Epilogue ep1, float* y1,
                          const CsrView<V>& w2, Epilogue ep2, float* y2, const float* x, float* scratch,
                          const ParallelFor& pf) {
  Conv2dShape second = first;
  second.in_channels = first.out_channels;
  second.out_channels = w2.rows;
  const bool stream1 = ep1.stream || streams_output(first, ep1);
  ep2.stream = ep2.stream || streams_output(second, ep2);
  const int64_t pixels = first.height * first.width, columns = first.batch * pixels;
  const int64_t mid = first.out_channels, image = first.in_channels * pixels;
  const PanelLayout layout{columns, first.in_channels};
  const int64_t panels = layout.count(), slots = chain_slots(first, pf.num_threads);
  const PixelSource input{x, image, pixels, pixels, pixels, 1};
  const PixelSource residual{ep1.residual, mid * pixels, pixels, pixels, pixels, 1};
  const int64_t per_slot = pointwise_chain_scratch(first, ep1.residual != nullptr, 1);
  pf.run(0, slots, 1, [&](int64_t slot_begin, int64_t slot_end) {
    for (int64_t slot = slot_begin; slot < slot_end; ++slot) {
      float* const panel = scratch + slot * per_slot;   // the first layer's input
      float* const middle = panel + first.in_channels * kPanelWidth;  // its output, the second's input
      float* const sums_residual = middle + mid * kPanelWidth;
      std::vector<PanelCopy> copies;
      for (int64_t p = slot * panels / slots; p < (slot + 1) * panels / slots; ++p) {
        const int64_t start = p * kPanelWidth, width = layout.width(p);
        pack_pixel_panel(input, first.in_channels, pixels, columns, start, width, copies, panel);
        // The first layer's output as a panel, its residual copied into one so that the epilogue
        // reads it at the output's index; every column computed, the padding's too (from zeros).
        Epilogue local{ep1.bias, ep1.relu, nullptr, ep1.gelu, false};
        if (ep1.residual) {
          pack_pixel_panel(residual, mid, pixels, columns, start, width, copies, sums_residual);
          local.residual = sums_residual;
        }
        csr_spmm(w1, DenseRows{panel, width, width}, StridedOutput{middle, width, 1, width}, local, 0, w1.rows);
        store_pixel_panel(middle, mid, pixels, columns, start, width, y1, stream1);
        const int64_t stored = std::min(width, columns - start);
        const StridedOutput out{y2, pixels, 1, stored, pixels, pixels, second.out_channels * pixels, start};
        const int64_t next = start + kPanelWidth;
        if (!ep2.stream && next < columns) prefetch_panel(y2, second.out_channels, pixels, next, true);
        csr_spmm(w2, DenseRows{middle, width, width}, out, ep2, 0, w2.rows);
      }
    }
#if defined(__x86_64__)
    if (stream1) asm volatile("sfence" ::: "memory");  // the non-temporal stores of store_pixel_panel
#endif
  });
}

namespace {

// A parallel-for that runs the body on the calling thread: a band's layers run on the thread that
// took the band.
const ParallelFor kSerial{[](int64_t begin, int64_t end, int64_t, RangeFn body) {
                            if (begin < end) body(begin, end);
                          },
                          1};

// A band's 3x3 layer as a convolution of one image: the first layer's output for the band's rows and
// one row either side (zeros beyond the image), so unpadded in height, padded by 1 in width.
Conv2dShape band_conv_shape(const BottleneckShape& b, int64_t rows) {
  return with_output_size({1, b.mid1, rows + 2, b.width, b.mid2, 0, 0, 3, 3, 1, 1, 0, 1, 1, 1, 1});
}

struct BandScratch {
  // Floats per thread: the first layer's output, its packed copy, the 3x3 layer's, and (with a shortcut)
  // the shortcut's, to which the last layer's is added in place.
  int64_t first, packed, second, summed;
  int64_t total() const { return first + packed + second + summed; }
};

BandScratch band_scratch(const BottleneckShape& b, int64_t rows, const PackedConvLayout& l, bool shortcut) {
  return {b.mid1 * (rows + 2) * b.width, l.packed_len, b.mid2 * rows * b.width,
          shortcut ? b.out_channels * rows * b.width : 0};
}

}  // namespace

int64_t bottleneck_band_rows(const BottleneckShape& b, int64_t nnz2, int64_t threads) {
  const int64_t plane = b.height * b.width;
  // Touched by the last layer alone: its input, its residual and its output.
  const double touched = double(b.batch) * double(plane) * double(b.mid2 + 2 * b.out_channels) * sizeof(float);
  if (touched <= double(std::min(l3_cache_bytes(), kL3CountedAtMost)) / 2) return 0;
  const int64_t band_budget = std::min(l2_cache_bytes(), kBandBytesAtMost);
  int64_t best = 0;
  for (int64_t rows = 1; rows <= b.height; ++rows) {
    if (b.height % rows != 0 || b.batch * (b.height / rows) < kBandsPerThread * std::max<int64_t>(threads, 1)) continue;
    if (rows * b.width < kPanelWidth) continue;  // narrower tiles, each a pass over the weight
    const PackedConvLayout l = packed_conv_layout(band_conv_shape(b, rows), nnz2);
    if (l.gather) continue;
    // The band's share of the input and of the output pass through the L2 beside the scratch.
    const int64_t passing = (b.in_channels * (rows + 2) + b.out_channels * rows) * b.width;
    // A shortcut's sums take the output's place there (the output is then copied out of them).
    if ((band_scratch(b, rows, l, false).total() + passing) * int64_t(sizeof(float)) <= band_budget) best = rows;
  }
  return best;
}

BottleneckScratchSizes bottleneck_scratch(const BottleneckShape& b, int64_t band_rows, int64_t nnz2,
                                          int64_t threads, bool shortcut) {
  const PackedConvLayout l = packed_conv_layout(band_conv_shape(b, band_rows), nnz2);
  const int64_t slots = std::max<int64_t>(1, std::min(threads, b.batch * (b.height / band_rows)));
  return {slots * band_scratch(b, band_rows, l, shortcut).total(), nnz2};
}

template <typename V>
void bottleneck_block(const BottleneckShape& b, int64_t band_rows, const CsrView<V>& w1, const Epilogue& ep1,
                      const CsrView<V>& w2, const Epilogue& ep2, const CsrView<V>& w3, Epilogue ep3,
                      const CsrView<V>* shortcut, const Epilogue& shortcut_ep, const float* x, float* y,
                      float* scratch, int32_t* offsets, const ParallelFor& pf) {
  const int64_t height = b.height, width = b.width, rows = band_rows, plane = height * width;
  const Conv2dShape s2 = band_conv_shape(b, rows);
  const PackedConvLayout l2 = packed_conv_layout(s2, w2.crow[w2.rows]);
  conv_tap_offsets(s2, l2, w2.crow, w2.col, offsets, pf);
  const Conv2dShape last{b.batch, b.mid2, height, width, b.out_channels, height, width, 1, 1, 1, 1, 0, 0, 1, 1, 1};
  ep3.stream = ep3.stream || streams_output(last, ep3);
  const BandScratch sizes = band_scratch(b, rows, l2, shortcut != nullptr);
  const int64_t bands = height / rows, units = b.batch * bands;
  const int64_t slots = std::max<int64_t>(1, std::min(pf.num_threads, units));
  pf.run(0, slots, 1, [&](int64_t slot_begin, int64_t slot_end) {
    for (int64_t slot = slot_begin; slot < slot_end; ++slot) {
      float* const first = scratch + slot * sizes.total();
      float* const packed = first + sizes.first;
      float* const second = packed + sizes.packed;
      float* const summed = second + sizes.second;
      const int64_t first_ld = (rows + 2) * width;
      const int64_t unit_begin = slot * units / slots;
      for (int64_t u = unit_begin; u < (slot + 1) * units / slots; ++u) {
        const int64_t n = u / bands, top = u % bands * rows;
        // The first layer's output rows [top - 1, top + rows + 1), those outside the image zero (the
        // 3x3 layer's padding, not the first layer's output for zero input). Below the band above,
        // the two rows they share are kept rather than computed again.
        const bool below = u > unit_begin && top > 0;
        const int64_t lo = below ? top + 1 : std::max<int64_t>(top - 1, 0), hi = std::min(top + rows + 1, height);
        for (int64_t c = 0; c < b.mid1; ++c) {
          float* const channel = first + c * first_ld;
          if (below) std::memmove(channel, channel + rows * width, sizeof(float) * 2 * width);
          if (top == 0) std::fill_n(channel, width, 0.f);
          if (hi < top + rows + 1) std::fill_n(channel + (rows + 1) * width, width, 0.f);
        }
        if (hi > lo) {
          csr_spmm(w1, DenseRows{x + n * b.in_channels * plane + lo * width, plane, (hi - lo) * width},
                   StridedOutput{first + (lo - (top - 1)) * width, first_ld, 1, (hi - lo) * width}, ep1, 0, w1.rows);
        }
        csr_conv2d(s2, l2, w2, first, second, ep2, ConvScratch{packed, offsets, nullptr}, kSerial);
        const int64_t at = n * b.out_channels * plane + top * width, columns = rows * width;
        if (!shortcut) {
          csr_spmm(w3, DenseRows{second, columns, columns}, StridedOutput{y + at, plane, 1, columns}, ep3.at(at), 0,
                   w3.rows);
          continue;
        }
        // The shortcut's band into the scratch, the last layer's added to it there, then copied out: stored
        // into the output's band first, its lines would be read from memory before they are written.
        const StridedOutput band{summed, columns, 1, columns};
        csr_spmm(*shortcut, DenseRows{x + n * b.in_channels * plane + top * width, plane, columns}, band, shortcut_ep,
                 0, shortcut->rows);
        Epilogue in_place = ep3;
        in_place.residual = summed;
        in_place.residual_is_output = true;
        in_place.stream = false;
        csr_spmm(w3, DenseRows{second, columns, columns}, band, in_place, 0, w3.rows);
        for (int64_t o = 0; o < b.out_channels; ++o) {
          copy_floats(y + at + o * plane, summed + o * columns, columns, ep3.stream);
        }
      }
    }
#if defined(__x86_64__)
    if (shortcut && ep3.stream) asm volatile("sfence" ::: "memory");  // copy_floats' non-temporal stores
#endif
  });
}

template void csr_conv2d<float>(const Conv2dShape&, const PackedConvLayout&, const CsrView<float>&,
                                const float*, float*, Epilogue, const ConvScratch&, const ParallelFor&);
template void csr_conv2d<half_t>(const Conv2dShape&, const PackedConvLayout&, const CsrView<half_t>&,
                                 const float*, float*, Epilogue, const ConvScratch&, const ParallelFor&);
template void csr_conv2d<bfloat16_t>(const Conv2dShape&, const PackedConvLayout&,
                                     const CsrView<bfloat16_t>&, const float*, float*, Epilogue,
                                     const ConvScratch&, const ParallelFor&);

#define SPARSE_RT_CHAIN(V)                                                                                       \
  template void pointwise_conv_chain<V>(const Conv2dShape&, const CsrView<V>&, Epilogue, float*, const CsrView<V>&, \
                                        Epilogue, float*, const float*, float*, const ParallelFor&);             \
  template void bottleneck_block<V>(const BottleneckShape&, int64_t, const CsrView<V>&, const Epilogue&,         \
                                    const CsrView<V>&, const Epilogue&, const CsrView<V>&, Epilogue,              \
                                    const CsrView<V>*, const Epilogue&, const float*, float*, float*, int32_t*,   \
                                    const ParallelFor&);
SPARSE_RT_CHAIN(float)
SPARSE_RT_CHAIN(half_t)
SPARSE_RT_CHAIN(bfloat16_t)
#undef SPARSE_RT_CHAIN

}  // namespace sparse_rt::cpu
