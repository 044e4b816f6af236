// 16-bit float storage types for the torch-free kernels. They have the same layout as at::Half and
// at::BFloat16 (a uint16_t), so the binding can reinterpret tensor pointers as these types. Kernels
// only ever read them (weights); arithmetic happens in fp32.
#pragma once

#include <cstdint>
#include <cstring>

namespace sparse_rt::cpu {

struct half_t {
  uint16_t bits;
};
struct bfloat16_t {
  uint16_t bits;
};

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float to_float(float v) { return v; }

inline float to_float(bfloat16_t v) { return bits_to_float(uint32_t(v.bits) << 16); }

// IEEE half -> float without branches on the common path: normal numbers are rebased by an
// exponent offset and a scale; subnormals are produced exactly by a magic-number subtraction.
inline float to_float(half_t v) {
  const uint32_t w = uint32_t(v.bits) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = bits_to_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = bits_to_float((two_w >> 17) | (126u << 23)) - 0.5f;
  const float magnitude = two_w < (1u << 27) ? denormalized : normalized;
  uint32_t m;
  std::memcpy(&m, &magnitude, sizeof m);
  return bits_to_float(sign | m);
}

}  // namespace sparse_rt::cpu
