// The epilogue (bias, residual, activation) of sums stored as vectors, shared by the SpMM's tile
// stores and the convolution's crop of its wide rows. Always inlined, so that each ISA version of a
// caller (SPARSE_RT_DISPATCH_WIDE) compiles it for its own vector width.
#pragma once

#include <cstdint>

#include "sparse_matrix.h"
#include "vectors.h"

namespace sparse_rt::cpu {

// Stores at `out` the epilogue of a vector of sums that already hold their bias: + residual (when
// given, read at `residual`), then ep's activation; the same order of operations as Epilogue::apply.
template <typename Vec>
[[gnu::always_inline]] inline void store_finished(const Vec& sums, const float* residual, const Epilogue& ep,
                                                  float* out) {
  Vec v = sums;
  if (residual) v += load<Vec>(residual);
  v = ep.activate(v);
#if defined(__x86_64__)
  // Only a whole line: a partial one written this way costs a read of the line by the memory.
  // Inline assembly rather than the intrinsic, which GCC would refuse to inline into this function
  // before it is itself inlined into an AVX-512 kernel (the only one whose Wide is 64 bytes).
  if constexpr (sizeof(Vec) == 64) {
    if (ep.stream && (reinterpret_cast<uintptr_t>(out) & 63) == 0) {
      asm volatile("vmovntps %1, %0" : "=m"(*reinterpret_cast<Vec*>(out)) : "v"(v));
      return;
    }
  }
#endif
  __builtin_memcpy(out, &v, sizeof v);
}

// out[j] for j from `j` while a whole Vec fits before `end`: the epilogue on sums[j] + bias.
// Returns the first j not stored.
template <typename Vec>
[[gnu::always_inline]] inline int64_t store_vectors(const float* sums, float bias, const float* residual,
                                                    const Epilogue& ep, float* out, int64_t j, int64_t end) {
  constexpr int64_t kLanes = kLanesOf<Vec>;
  for (; j + kLanes <= end; j += kLanes) {
    store_finished<Vec>(load<Vec>(sums + j) + bias, residual ? residual + j : nullptr, ep, out + j);
  }
  return j;
}

// out[j] for j < count, contiguous sums to contiguous outputs: Wide vectors, then 8-float ones,
// then the last few as one 8-float vector ending at the last (it stores again up to seven outputs
// with the values they have: `out` must not overlap `sums` or `residual`), or, in a row shorter
// than 8, one at a time. Stores of single floats that miss the cache fill the store queue long
// before memory is busy, and GCC vectorized the loop over the last few under masks, evaluating
// every activation: with the last 6 of each row of 14 stored that way, a 3x3 convolution of 256
// channels on 14x14 images (batch 8, 90% sparse) ran 1.2x slower on a Zen 4.
template <typename Wide>
[[gnu::always_inline]] inline void store_finished_row(const float* sums, float bias, const float* residual,
                                                      const Epilogue& ep, float* out, int64_t count) {
  int64_t j = store_vectors<Wide>(sums, bias, residual, ep, out, 0, count);
  if constexpr (kLanesOf<Wide> > 8) j = store_vectors<vec8>(sums, bias, residual, ep, out, j, count);
  if (j == count) return;
  if (count >= 8) {
    store_vectors<vec8>(sums, bias, residual, ep, out, count - 8, count);
    return;
  }
  for (; j < count; ++j) out[j] = ep.activate(sums[j] + bias + (residual ? residual[j] : 0.f));
}

}  // namespace sparse_rt::cpu
