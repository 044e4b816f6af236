// Fixed-width float vectors for the CPU kernels, written once: GCC's vector extensions compile
// them for whichever instruction set the calling kernel is compiled for (isa.h), so one source
// serves AVX-512, AVX2 and the baseline.
#pragma once

#include <cstdint>

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

// Transposes the 16x16 block held in rows[0..16) in place: four rounds of two-input shuffles,
// each swapping the off-diagonal sub-blocks of half the previous round's size.
[[gnu::always_inline]] inline void transpose16(vec16 (&rows)[16]) {
  typedef int32_t mask16 __attribute__((vector_size(64)));
  constexpr mask16 kLow[4] = {
      {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
      {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
      {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
      {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30}};
  constexpr mask16 kHigh[4] = {
      {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
      {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
      {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
      {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}};
  // Unrolled whole, so that the block stays in registers (left as loops it goes through the stack).
#pragma GCC unroll 4
  for (int round = 0, h = 8; round < 4; ++round, h /= 2) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
      if (i & h) continue;
      const vec16 a = rows[i], b = rows[i + h];
      rows[i] = __builtin_shuffle(a, b, kLow[round]);
      rows[i + h] = __builtin_shuffle(a, b, kHigh[round]);
    }
  }
}

}  // namespace sparse_rt::cpu
