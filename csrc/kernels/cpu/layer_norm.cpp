#include "layer_norm.h"

#include <algorithm>
#include <cmath>

#include "isa.h"
#include "vectors.h"

namespace sparse_rt::cpu {
namespace {

// Written for Wide, the vector type SPARSE_RT_DISPATCH_WIDE picks for the running CPU (with a
// vec16 below AVX-512 each `vector - scalar` went through the stack: on a Zen 3, 1.7x slower than
// PyTorch's add and LayerNorm at 128 x 768, 1.5x faster with vec8).
template <typename Wide, int N>
[[gnu::always_inline]] inline float sum_of(const Wide (&partial)[N]) {
  Wide v = partial[0];
  for (int p = 1; p < N; ++p) v += partial[p];
  float s = 0.f;
  for (int i = 0; i < kLanesOf<Wide>; ++i) s += v[i];
  return s;
}

template <typename Wide>
[[gnu::always_inline]] inline void normalize_row(const float* x, const float* residual, const float* weight,
                                                 const float* bias, int64_t cols, float eps, float* y) {
  constexpr int64_t kLanes = kLanesOf<Wide>;
  const int64_t whole = cols / kLanes * kLanes;
  // Each reduction in kChains independent sums, so that an add does not wait on the one before it
  // (Zen 4, 1024 rows of 768, one or two threads: 1.13x against one sum): add(j, sum) adds vector j's
  // share to a sum, and the reduction returns the sums' total over the whole vectors.
  constexpr int kChains = 4;
  const auto reduce = [&](const auto& add) {
    Wide partial[kChains] = {};
    int64_t j = 0;
    for (; j + kChains * kLanes <= whole; j += kChains * kLanes) {
#pragma GCC unroll 4
      for (int c = 0; c < kChains; ++c) add(j + c * kLanes, partial[c]);
    }
    for (; j < whole; j += kLanes) add(j, partial[0]);
    return sum_of(partial);
  };
  float tail = 0.f;
  const float total = reduce([&](int64_t j, Wide& sum) {
    const Wide s = load<Wide>(x + j) + load<Wide>(residual + j);
    __builtin_memcpy(y + j, &s, sizeof s);
    sum += s;
  });
  for (int64_t j = whole; j < cols; ++j) tail += y[j] = x[j] + residual[j];
  const float mean = (total + tail) / float(cols);
  tail = 0.f;
  const float squares = reduce([&](int64_t j, Wide& sum) {
    const Wide d = load<Wide>(y + j) - mean;
    sum += d * d;
  });
  for (int64_t j = whole; j < cols; ++j) tail += (y[j] - mean) * (y[j] - mean);
  const float rstd = 1.f / std::sqrt((squares + tail) / float(cols) + eps);
  for (int64_t j = 0; j < whole; j += kLanes) {
    Wide v = (load<Wide>(y + j) - mean) * rstd;
    if (weight) v *= load<Wide>(weight + j);
    if (bias) v += load<Wide>(bias + j);
    __builtin_memcpy(y + j, &v, sizeof v);
  }
  for (int64_t j = whole; j < cols; ++j) {
    y[j] = (y[j] - mean) * rstd * (weight ? weight[j] : 1.f) + (bias ? bias[j] : 0.f);
  }
}

template <typename Wide>
[[gnu::always_inline]] inline void normalize_range(const float* x, const float* residual, const float* weight,
                                                   const float* bias, int64_t cols, float eps, float* y,
                                                   int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    normalize_row<Wide>(x + r * cols, residual + r * cols, weight, bias, cols, eps, y + r * cols);
  }
}

// Rows [begin, end), compiled for the running CPU.
void normalize_rows(const float* x, const float* residual, const float* weight, const float* bias,
                    int64_t cols, float eps, float* y, int64_t begin, int64_t end) {
  SPARSE_RT_DISPATCH_WIDE(normalize_range<Wide>(x, residual, weight, bias, cols, eps, y, begin, end))
}

}  // namespace

void add_layer_norm(const float* x, const float* residual, const float* weight, const float* bias, int64_t rows,
                    int64_t cols, float eps, float* y, const ParallelFor& pf) {
  // A parallel region costs a few microseconds: a thread takes at least 16K floats.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(cols, 1));
  pf.run(0, rows, grain, [&](int64_t begin, int64_t end) {
    normalize_rows(x, residual, weight, bias, cols, eps, y, begin, end);
  });
}

}  // namespace sparse_rt::cpu
