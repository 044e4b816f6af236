#include "bsr_linear.h"

#include <algorithm>

#include "isa.h"
#include "scalar_types.h"

namespace sparse_rt::cpu {

namespace {

template <typename V>
[[gnu::always_inline]] inline void bsr_rows(const BsrView<V>& w, const float* x, int64_t batch,
                                            float* y, const Epilogue& ep, int64_t brow_begin,
                                            int64_t brow_end) {
  const int64_t bh = w.bh, bw = w.bw;
  const int64_t cols = w.block_cols * bw, rows = w.block_rows * bh;
  float acc[kMaxBlockHeight];
  for (int64_t br = brow_begin; br < brow_end; ++br) {
    for (int64_t n = 0; n < batch; ++n) {
      std::fill(acc, acc + bh, 0.f);
      const float* xn = x + n * cols;
      for (int64_t k = w.crow[br]; k < w.crow[br + 1]; ++k) {
        const V* tile = w.values + k * bh * bw;
        const float* __restrict xs = xn + int64_t(w.col[k]) * bw;
        for (int64_t i = 0; i < bh; ++i) {
          float s = 0.f;
          for (int64_t j = 0; j < bw; ++j) s += to_float(tile[i * bw + j]) * xs[j];
          acc[i] += s;
        }
      }
      for (int64_t i = 0; i < bh; ++i) {
        const int64_t r = br * bh + i;
        y[n * rows + r] = ep.apply(acc[i], r, n * rows + r);
      }
    }
  }
}

}  // namespace

template <typename V>
void bsr_linear(const BsrView<V>& w, const float* x, int64_t batch, float* y, Epilogue ep,
                int64_t brow_begin, int64_t brow_end) {
  SPARSE_RT_DISPATCH_ISA(bsr_rows(w, x, batch, y, ep, brow_begin, brow_end))
}

template void bsr_linear<float>(const BsrView<float>&, const float*, int64_t, float*, Epilogue,
                                int64_t, int64_t);
template void bsr_linear<half_t>(const BsrView<half_t>&, const float*, int64_t, float*, Epilogue,
                                 int64_t, int64_t);
template void bsr_linear<bfloat16_t>(const BsrView<bfloat16_t>&, const float*, int64_t, float*,
                                     Epilogue, int64_t, int64_t);

}  // namespace sparse_rt::cpu
