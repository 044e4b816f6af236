#include "max_pool.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "vectors.h"

namespace sparse_rt::cpu {
namespace {

// max(m, v) where a NaN wins, as in torch.max_pool2d, for floats.
inline float nan_max(float m, float v) { return v > m || v != v ? v : m; }

// The same on vectors: the maxima (no NaN ever enters them) and, apart, which lanes met a NaN, made
// NaN at the end. One select per tap: GCC lowers a select on two comparisons OR-ed together lane by
// lane for 16-float vectors (16 scalar compares per tap).
template <typename Vec>
struct NanMax {
  typedef int32_t Lanes __attribute__((vector_size(sizeof(Vec))));
  Vec max = Vec{} - std::numeric_limits<float>::infinity();
  Lanes nan = {};

  [[gnu::always_inline]] void add(Vec v) {
    max = v > max ? v : max;
    nan |= v != v;
  }
  // NaN in the lanes that met one: all exponent bits and the quiet bit set.
  [[gnu::always_inline]] Vec result() const {
    Lanes bits;
    __builtin_memcpy(&bits, &max, sizeof bits);
    bits |= nan & 0x7fc00000;
    Vec out;
    __builtin_memcpy(&out, &bits, sizeof out);
    return out;
  }
};

// The window of output (oy, ox) clipped to the image: rows [y0, y1), columns [x0, x1).
struct Window {
  int64_t y0, y1, x0, x1;
};
inline Window window(const PoolShape& s, int64_t oy, int64_t ox) {
  const int64_t y = oy * s.stride_h - s.pad_h, x = ox * s.stride_w - s.pad_w;
  return {std::max<int64_t>(y, 0), std::min(y + s.kernel_h, s.height), std::max<int64_t>(x, 0),
          std::min(x + s.kernel_w, s.width)};
}

// Output row oy of image n: Wide-square blocks of (columns, channels), each transposed in registers and
// stored a channel at a time; channels past the last whole vector one at a time.
template <typename Wide>
[[gnu::always_inline]] inline void pool_row(const PoolShape& s, const float* x, float* y, int64_t n, int64_t oy) {
  constexpr int64_t kLanes = kLanesOf<Wide>;
  const float* image = x + n * s.height * s.width * s.channels;
  const auto out_at = [&](int64_t c, int64_t ox) { return y + ((n * s.channels + c) * s.out_h + oy) * s.out_w + ox; };
  const int64_t whole_channels = s.channels / kLanes * kLanes;
  // The input rows that the next output row reads and this one does not ([ahead_begin, ahead_end)),
  // prefetched a share per block of columns and channels, so that the prefetches overlap the maxima.
  // An image that has left the cache (ResNet-50's stem at batch 8: 26 MB) otherwise came in at the
  // pace of the loads that miss: that pool alone took 1.1-1.7x as long (AMD EPYC Zen 4, 2 threads).
  const int64_t row_floats = s.width * s.channels;
  // Clamped to the image, so that the pointer below never points past the input.
  const int64_t ahead_begin = std::clamp<int64_t>(oy * s.stride_h - s.pad_h + s.kernel_h, 0, s.height);
  const int64_t ahead_end = std::min((oy + 1) * s.stride_h - s.pad_h + s.kernel_h, s.height);
  const float* const ahead = image + ahead_begin * row_floats;
  constexpr int64_t kLineFloats = 64 / int64_t(sizeof(float));
  const int64_t ahead_lines =
      oy + 1 < s.out_h && ahead_end > ahead_begin ? ((ahead_end - ahead_begin) * row_floats + kLineFloats - 1) / kLineFloats : 0;
  const int64_t steps = (s.out_w + kLanes - 1) / kLanes * std::max<int64_t>(whole_channels / kLanes, 1);
  const int64_t lines_per_step = (ahead_lines + steps - 1) / steps;
  int64_t prefetched = 0;
  // Columns outermost: a window's pixels are read whole (every channel block of a pixel in turn), in
  // the order they lie in memory; channel blocks outermost read every 4th line of a 64-channel image
  // per pass, 1.3x slower than PyTorch at batch 8 where the image comes from memory.
  for (int64_t ox0 = 0; ox0 < s.out_w; ox0 += kLanes) {
    const int64_t columns = std::min(kLanes, s.out_w - ox0);
    for (int64_t c0 = 0; c0 < whole_channels; c0 += kLanes) {
      for (const int64_t stop = std::min(ahead_lines, prefetched + lines_per_step); prefetched < stop; ++prefetched) {
        __builtin_prefetch(ahead + prefetched * kLineFloats);
      }
      // Row i of the tile: the maxima of column ox0 + i's window over channels [c0, c0 + kLanes); rows
      // past the last column are zeros, transposed with the rest but never stored.
      alignas(64) float tile[kLanes * kLanes];
      std::fill(tile + columns * kLanes, tile + kLanes * kLanes, 0.f);
      for (int64_t i = 0; i < columns; ++i) {
        const Window w = window(s, oy, ox0 + i);
        NanMax<Wide> m;
        for (int64_t iy = w.y0; iy < w.y1; ++iy) {
          const float* row = image + iy * s.width * s.channels + c0;
          for (int64_t ix = w.x0; ix < w.x1; ++ix) m.add(load<Wide>(row + ix * s.channels));
        }
        const Wide maxima = m.result();
        __builtin_memcpy(tile + i * kLanes, &maxima, sizeof maxima);
      }
      Wide block[kLanes];
#pragma GCC unroll 16
      for (int64_t i = 0; i < kLanes; ++i) block[i] = load<Wide>(tile + i * kLanes);
      transpose(block);
      // A whole row as one vector store; a copy of variable size is a call into the C library.
      if (columns == kLanes) {
#pragma GCC unroll 16
        for (int64_t j = 0; j < kLanes; ++j) __builtin_memcpy(out_at(c0 + j, ox0), &block[j], sizeof block[j]);
      } else {
#pragma GCC unroll 16
        for (int64_t j = 0; j < kLanes; ++j) std::memcpy(out_at(c0 + j, ox0), &block[j], sizeof(float) * columns);
      }
    }
  }
  for (int64_t c = whole_channels; c < s.channels; ++c) {
    for (int64_t ox = 0; ox < s.out_w; ++ox) {
      const Window w = window(s, oy, ox);
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t iy = w.y0; iy < w.y1; ++iy) {
        for (int64_t ix = w.x0; ix < w.x1; ++ix) m = nan_max(m, image[(iy * s.width + ix) * s.channels + c]);
      }
      *out_at(c, ox) = m;
    }
  }
}

template <typename Wide>
[[gnu::always_inline]] inline void pool_rows_of(const PoolShape& s, const float* x, float* y, int64_t begin,
                                                int64_t end) {
  for (int64_t row = begin; row < end; ++row) pool_row<Wide>(s, x, y, row / s.out_h, row % s.out_h);
}

void pool_rows(const PoolShape& s, const float* x, float* y, int64_t begin, int64_t end) {
  SPARSE_RT_DISPATCH_WIDE(pool_rows_of<Wide>(s, x, y, begin, end))
}

}  // namespace

void max_pool2d_nhwc_to_nchw(const PoolShape& s, const float* x, float* y, const ParallelFor& pf) {
  // Rows of at least kMinParallelWork window reads per chunk.
  const int64_t reads_per_row = s.out_w * s.channels * s.kernel_h * s.kernel_w;
  const int64_t grain = std::max<int64_t>(1, kMinParallelWork / std::max<int64_t>(reads_per_row, 1));
  pf.run(0, s.batch * s.out_h, grain, [&](int64_t begin, int64_t end) { pool_rows(s, x, y, begin, end); });
}

}  // namespace sparse_rt::cpu
