// Fixed-width float vectors for the CPU kernels, written once: GCC's vector extensions compile
// them for whichever instruction set the calling kernel is compiled for (isa.h), so one source
// serves AVX-512, AVX2 and the baseline.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include "isa.h"

namespace sparse_rt::cpu {

// 16 or 8 floats as one value: compiled for AVX-512 a vec16 is a zmm register, for AVX2 two ymm,
// otherwise four xmm. Explicit vectors keep the tile in registers; left to itself the
// compiler vectorizes across nonzeros with gathers instead.
typedef float vec16 __attribute__((vector_size(64)));
// Vectors never cross a function boundary (these helpers and the kernels' are always inlined), so
// GCC's note about their calling convention differing between ISA levels does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float vec8 __attribute__((vector_size(32)));

template <typename Vec>
[[gnu::always_inline]] inline Vec load(const float* p) {
  Vec v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

template <typename Vec>
constexpr int kLanesOf = sizeof(Vec) / sizeof(float);

// op folded over v's lanes by halving: log2(lanes) dependent steps rather than one per lane (a
// row's softmax took its maximum and sum lane after lane, a fifth of attention's time). By
// reference: a vector passed by value would cross a function boundary.
template <typename Vec, typename Op>
[[gnu::always_inline]] inline float reduce_lanes(const Vec& v, Op op) {
  float lanes[kLanesOf<Vec>];
  __builtin_memcpy(lanes, &v, sizeof v);
#pragma GCC unroll 5
  for (int half = kLanesOf<Vec> / 2; half > 0; half /= 2) {
#pragma GCC unroll 8
    for (int i = 0; i < half; ++i) lanes[i] = op(lanes[i], lanes[i + half]);
  }
  return lanes[0];
}

// The lane that lane e of a transpose round's output takes from its two inputs (indices from
// `lanes` select the second): lanes with bit `half` clear keep the first input's own lane (low
// output) or take the one `half` above it (high); lanes with it set take the second input's lane
// `half` below (low) or their own (high).
constexpr int transpose_source(int lanes, int half, bool high, int e) {
  return (e & half) ? lanes + e - (high ? 0 : half) : e + (high ? half : 0);
}

template <typename Mask, int... E>
constexpr Mask transpose_mask(int half, bool high, std::integer_sequence<int, E...>) {
  return Mask{transpose_source(sizeof...(E), half, high, E)...};
}

// One round of transpose: swaps the off-diagonal sub-blocks of side kHalf of every 2kHalf block,
// then the next round does those of side kHalf / 2. Masks and indices are constants, so that the
// block stays in registers (with variable ones it goes through the stack).
template <typename Vec, int kHalf>
[[gnu::always_inline]] inline void transpose_round(Vec (&rows)[kLanesOf<Vec>]) {
  // Lane indices of Vec's width (GCC takes no vector_size that depends on a template parameter).
  typedef int32_t mask16 __attribute__((vector_size(64)));
  typedef int32_t mask8 __attribute__((vector_size(32)));
  using Mask = std::conditional_t<kLanesOf<Vec> == 16, mask16, mask8>;
  constexpr auto kLanes = std::make_integer_sequence<int, kLanesOf<Vec>>{};
  constexpr Mask kLow = transpose_mask<Mask>(kHalf, false, kLanes);
  constexpr Mask kHigh = transpose_mask<Mask>(kHalf, true, kLanes);
#pragma GCC unroll 16
  for (int i = 0; i < kLanesOf<Vec>; ++i) {
    if (i & kHalf) continue;
    const Vec a = rows[i], b = rows[i + kHalf];
    rows[i] = __builtin_shuffle(a, b, kLow);
    rows[i + kHalf] = __builtin_shuffle(a, b, kHigh);
  }
  if constexpr (kHalf > 1) transpose_round<Vec, kHalf / 2>(rows);
}

// Transposes the square block held in rows[0..lanes) in place, in log2(lanes) rounds of two-input
// shuffles.
template <typename Vec>
[[gnu::always_inline]] inline void transpose(Vec (&rows)[kLanesOf<Vec>]) {
  transpose_round<Vec, kLanesOf<Vec> / 2>(rows);
}

}  // namespace sparse_rt::cpu

// SPARSE_RT_DISPATCH_ISA for kernels written for a vector type `Wide`, which `call` names: vec16 on
// AVX-512, vec8 below it. A vec16 is one register only with AVX-512; compiled for AVX2, GCC builds
// each broadcast of a vec16 product on the stack, element by element (4x slower than dense on a
// Zen 3), and shuffles of two vec16 through memory.
#if defined(__x86_64__) && defined(__GNUC__)
#define SPARSE_RT_DISPATCH_WIDE(call)                                                \
  switch (::sparse_rt::cpu::cpu_isa()) {                                             \
    case ::sparse_rt::cpu::Isa::kX86_64_V4:                                          \
      return [&]() SPARSE_RT_TARGET_X86_64_V4 {                                      \
        using Wide = ::sparse_rt::cpu::vec16;                                        \
        return call;                                                                 \
      }();                                                                           \
    case ::sparse_rt::cpu::Isa::kX86_64_V3:                                          \
      return [&]() SPARSE_RT_TARGET_X86_64_V3 {                                      \
        using Wide = ::sparse_rt::cpu::vec8;                                         \
        return call;                                                                 \
      }();                                                                           \
    default: {                                                                       \
      using Wide = ::sparse_rt::cpu::vec8;                                           \
      return call;                                                                   \
    }                                                                                \
  }
#else
#define SPARSE_RT_DISPATCH_WIDE(call)  \
  {                                      \
    using Wide = ::sparse_rt::cpu::vec8; \
    return call;                         \
  }
#endif
