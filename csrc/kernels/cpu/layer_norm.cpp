#include "layer_norm.h"

#include <algorithm>
#include <cmath>

#include "isa.h"
#include "vectors.h"

namespace sparse_rt::cpu {
namespace {

constexpr int64_t kLanes = 16;

[[gnu::always_inline]] inline float sum_of(const vec16& v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

[[gnu::always_inline]] inline void normalize_row(const float* x, const float* residual, const float* weight,
                                                 const float* bias, int64_t cols, float eps, float* y) {
  const int64_t whole = cols / kLanes * kLanes;
  vec16 partial = {};
  float tail = 0.f;
  for (int64_t j = 0; j < whole; j += kLanes) {
    const vec16 s = load<vec16>(x + j) + load<vec16>(residual + j);
    __builtin_memcpy(y + j, &s, sizeof s);
    partial += s;
  }
  for (int64_t j = whole; j < cols; ++j) tail += y[j] = x[j] + residual[j];
  const float mean = (sum_of(partial) + tail) / float(cols);
  partial = vec16{};
  tail = 0.f;
  for (int64_t j = 0; j < whole; j += kLanes) {
    const vec16 d = load<vec16>(y + j) - mean;
    partial += d * d;
  }
  for (int64_t j = whole; j < cols; ++j) tail += (y[j] - mean) * (y[j] - mean);
  const float rstd = 1.f / std::sqrt((sum_of(partial) + tail) / float(cols) + eps);
  for (int64_t j = 0; j < whole; j += kLanes) {
    vec16 v = (load<vec16>(y + j) - mean) * rstd;
    if (weight) v *= load<vec16>(weight + j);
    if (bias) v += load<vec16>(bias + j);
    __builtin_memcpy(y + j, &v, sizeof v);
  }
  for (int64_t j = whole; j < cols; ++j) {
    y[j] = (y[j] - mean) * rstd * (weight ? weight[j] : 1.f) + (bias ? bias[j] : 0.f);
  }
}

[[gnu::always_inline]] inline void normalize_range(const float* x, const float* residual, const float* weight,
                                                   const float* bias, int64_t cols, float eps, float* y,
                                                   int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    normalize_row(x + r * cols, residual + r * cols, weight, bias, cols, eps, y + r * cols);
  }
}

// Rows [begin, end), compiled for the running CPU.
void normalize_rows(const float* x, const float* residual, const float* weight, const float* bias,
                    int64_t cols, float eps, float* y, int64_t begin, int64_t end) {
  SPARSE_RT_DISPATCH_ISA(normalize_range(x, residual, weight, bias, cols, eps, y, begin, end))
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
