#include "csr_linear.h"

#include <algorithm>

#include "isa.h"
#include "scalar_types.h"

namespace sparse_rt::cpu {
namespace {

// Four independent partial sums break the floating-point dependency chain of the dot product.
template <typename V>
inline float sparse_dot(const int32_t* __restrict col, const V* __restrict val, int64_t begin,
                        int64_t end, const float* __restrict x) {
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
  int64_t k = begin;
  for (; k + 4 <= end; k += 4) {
    s0 += to_float(val[k]) * x[col[k]];
    s1 += to_float(val[k + 1]) * x[col[k + 1]];
    s2 += to_float(val[k + 2]) * x[col[k + 2]];
    s3 += to_float(val[k + 3]) * x[col[k + 3]];
  }
  for (; k < end; ++k) s0 += to_float(val[k]) * x[col[k]];
  return (s0 + s1) + (s2 + s3);
}

// The batch is processed in tiles of this many columns, held in an fp32 accumulator on the stack.
constexpr int64_t kBatchTile = 64;

}  // namespace

template <typename V>
void csr_linear_gather(const CsrView<V>& w, const float* x, int64_t batch, float* y, Epilogue ep,
                       int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t begin = w.crow[r], end = w.crow[r + 1];
    for (int64_t n = 0; n < batch; ++n) {
      y[n * w.rows + r] = ep.apply(sparse_dot(w.col, w.values, begin, end, x + n * w.cols), r);
    }
  }
}

template <typename V>
SPARSE_RT_MULTIVERSION void csr_linear_broadcast(const CsrView<V>& w, const float* xt, int64_t batch, float* y,
                          Epilogue ep, int64_t row_begin, int64_t row_end) {
  float acc[kBatchTile];
  for (int64_t n0 = 0; n0 < batch; n0 += kBatchTile) {
    const int64_t nb = std::min(kBatchTile, batch - n0);
    for (int64_t r = row_begin; r < row_end; ++r) {
      std::fill(acc, acc + nb, 0.f);
      for (int64_t k = w.crow[r]; k < w.crow[r + 1]; ++k) {
        const float v = to_float(w.values[k]);
        const float* __restrict xk = xt + int64_t(w.col[k]) * batch + n0;
        for (int64_t j = 0; j < nb; ++j) acc[j] += v * xk[j];
      }
      for (int64_t j = 0; j < nb; ++j) y[(n0 + j) * w.rows + r] = ep.apply(acc[j], r);
    }
  }
}

#define SPARSE_RT_INSTANTIATE(V)                                                              \
  template void csr_linear_gather<V>(const CsrView<V>&, const float*, int64_t, float*, Epilogue, \
                                     int64_t, int64_t);                                        \
  template void csr_linear_broadcast<V>(const CsrView<V>&, const float*, int64_t, float*,       \
                                        Epilogue, int64_t, int64_t);
SPARSE_RT_INSTANTIATE(float)
SPARSE_RT_INSTANTIATE(half_t)
SPARSE_RT_INSTANTIATE(bfloat16_t)
#undef SPARSE_RT_INSTANTIATE

}  // namespace sparse_rt::cpu
