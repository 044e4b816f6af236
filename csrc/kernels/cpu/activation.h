// Activations the kernels' epilogues apply to their sums, written once for a float and for a
// vector of floats (vectors.h), so that every path of a kernel (scalar tails, vector stores) gives
// the same value for the same sum.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "vectors.h"

namespace sparse_rt::cpu {

// The int32 lanes matching T's float lanes.
template <typename T>
struct IntLanes {
  using type = int32_t;
};
template <>
struct IntLanes<vec8> {
  typedef int32_t type __attribute__((vector_size(32)));
};
template <>
struct IntLanes<vec16> {
  typedef int32_t type __attribute__((vector_size(64)));
};

template <typename T>
[[gnu::always_inline]] inline T splat(float v) {
  return T{} + v;
}

// e^y for y in [-87, 0]: y = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts, so that n ln2 is
// exact), e^r by its Taylor series to r^7 (relative error below 2e-8), 2^n built in the exponent
// bits.
template <typename T>
[[gnu::always_inline]] inline T exp_nonpositive(T y) {
  using Int = typename IntLanes<T>::type;
  constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693145751953125f, kLn2Lo = 1.42860682030941723e-6f;
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const T n = (y * kLog2e + kRound) - kRound;
  const T r = (y - n * kLn2Hi) - n * kLn2Lo;
  T p = splat<T>(1.f / 5040);
  for (const float c : {1.f / 720, 1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = p * r + c;
  Int bits;
  if constexpr (std::is_same_v<T, float>) {
    bits = (int32_t(n) + 127) << 23;
  } else {
    bits = (__builtin_convertvector(n, Int) + 127) << 23;
  }
  T scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// GELU in its exact form, x * Phi(x) with Phi the standard normal CDF: Phi(x) = 1/2 + x P(x^2) / Q(x^2)
// for |x| <= 5.5, a rational minimax fit (tools/fit_gelu.py; P of degree 6, Q of degree 4) whose
// float evaluation stays within 3e-7 * |x| plus float rounding of GELU (test_cpu_kernels checks it).
// Beyond 5.5 Phi is 1 (x clamped: Phi(5.5) rounds to 1) or, left of -5.5, 0: GELU(x) is then
// below 1.1e-7 in magnitude, and 0 keeps -inf's result NaN like torch's. Eighteen operations and
// one division: the erfc of Abramowitz & Stegun 7.1.26 used before (a division, an exp and their
// glue) took twice as long and its long dependency chain stalled the SpMM's epilogue.
template <typename T>
[[gnu::always_inline]] inline T gelu(T x) {
  constexpr float kClamp = 5.5f;
  const T clamped = x < -kClamp ? splat<T>(-kClamp) : (x > kClamp ? splat<T>(kClamp) : x);
  const T t = clamped * clamped;
  T p = splat<T>(1.1171553959687941e-10f);
  for (const float c : {-2.191811532270549e-08f, 3.18388606501685e-06f, 0.0001664340525167063f,
                        0.004487859085202217f, 0.03557169437408447f, 0.398942232131958f}) {
    p = p * t + c;
  }
  T q = splat<T>(6.085557834012434e-05f);
  for (const float c : {0.0018100593006238341f, 0.028890453279018402f, 0.2558305561542511f, 1.f}) q = q * t + c;
  const T phi = 0.5f + clamped * (p / q);
  return x * (x < -kClamp ? T{} : phi);
}

// GELU in its tanh form (torch's approximate='tanh'): x (1 + tanh(u)) / 2 with
// u = sqrt(2 / pi) (x + 0.044715 x^3), written as x * sigmoid(2u) so that only e^(-2|u|) <= 1 is
// needed: x / (1 + e) for u >= 0, x e / (1 + e) below. Below e^-87 (float's smallest normal) e is
// 0, so that the far left gives 0 (NaN at -inf) as torch's does, not x e^-87.
template <typename T>
[[gnu::always_inline]] inline T gelu_tanh(T x) {
  constexpr float kTwiceSqrt2OverPi = 1.5957691216057308f, kCubic = 0.044715f;
  const T two_u = kTwiceSqrt2OverPi * (x + kCubic * x * x * x);
  const T y = two_u < 0.f ? two_u : -two_u;
  const T e = y < -87.f ? T{} : exp_nonpositive<T>(y < -87.f ? splat<T>(-87.f) : y);
  return x * (two_u < 0.f ? e : splat<T>(1.f)) / (1.f + e);
}

}  // namespace sparse_rt::cpu
