// Device helpers shared by the kernels in this folder. Conversions go through the explicit
// intrinsics because torch extensions compile with __CUDA_NO_HALF_CONVERSIONS__ and friends.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace sparse_rt {
namespace cuda {
namespace detail {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Fused epilogue: bias, then ReLU. `acc < 0` (not fmaxf) so that NaN propagates as in torch.relu.
template <typename T>
__device__ __forceinline__ T epilogue(float acc, const T* __restrict__ bias, int64_t row,
                                      bool relu) {
  if (bias != nullptr) acc += to_float(bias[row]);
  if (relu && acc < 0.f) acc = 0.f;
  return from_float<T>(acc);
}

// N consecutive elements loaded with one vector instruction; the address must be aligned to
// sizeof(Vec), which the launchers check before choosing a vectorized instantiation.
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

inline bool is_aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

inline unsigned grid_dim(int64_t work, int64_t per_block, int64_t cap) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return static_cast<unsigned>(blocks < cap ? blocks : cap);
}

constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxGridX = 2147483647;

}  // namespace detail
}  // namespace cuda
}  // namespace sparse_rt
