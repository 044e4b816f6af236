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

// GELU in its exact form, x * Phi(x) with Phi the standard normal CDF: Phi(x) = erfc(-x / sqrt2) / 2,
// erfc(z) for z >= 0 by Abramowitz & Stegun 7.1.26 (t = 1 / (1 + p z), a polynomial in t times
// e^(-z^2); absolute error below 1.5e-7), and Phi(x) = 1 - erfc(z) / 2 for x >= 0. The error in
// GELU(x) stays below 3e-7 * |x| plus float rounding (test_cpu_kernels checks it); the left tail is
// computed from erfc itself rather than as 1 + erf(x / sqrt2), which would cancel. e^(-z^2) is
// taken no lower than e^-87, where Phi is below float's smallest normal anyway.
template <typename T>
[[gnu::always_inline]] inline T gelu(T x) {
  constexpr float kRsqrt2 = 0.70710678118654752f, kP = 0.3275911f;
  const T z = (x < 0.f ? -x : x) * kRsqrt2;
  const T t = 1.f / (z * kP + 1.f);
  T poly = splat<T>(1.061405429f);
  for (const float a : {-1.453152027f, 1.421413741f, -0.284496736f, 0.254829592f}) poly = poly * t + a;
  T z2 = z * z;
  z2 = z2 > 87.f ? splat<T>(87.f) : z2;
  const T half_erfc = 0.5f * (poly * t) * exp_nonpositive<T>(-z2);
  return x * (x < 0.f ? half_erfc : 1.f - half_erfc);
}

// GELU in its tanh form (torch's approximate='tanh'): x (1 + tanh(u)) / 2 with
// u = sqrt(2 / pi) (x + 0.044715 x^3), written as x * sigmoid(2u) so that only e^(-2|u|) <= 1 is
// needed: x / (1 + e) for u >= 0, x e / (1 + e) below. e is taken no lower than e^-87, where the
// result is below float's smallest normal times |x| anyway.
template <typename T>
[[gnu::always_inline]] inline T gelu_tanh(T x) {
  constexpr float kTwiceSqrt2OverPi = 1.5957691216057308f, kCubic = 0.044715f;
  const T two_u = kTwiceSqrt2OverPi * (x + kCubic * x * x * x);
  T y = two_u < 0.f ? two_u : -two_u;
  y = y < -87.f ? splat<T>(-87.f) : y;
  const T e = exp_nonpositive<T>(y);
  return x * (two_u < 0.f ? e : splat<T>(1.f)) / (1.f + e);
}

}  // namespace sparse_rt::cpu
