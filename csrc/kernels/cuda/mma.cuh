// Tensor-core building blocks shared by the kernels in this folder (sm_80+ instructions): the
// mma.m16n8k16 product with fp32 accumulation, ldmatrix and cp.async. Each wrapper traps when
// compiled for an older architecture: the launchers select these kernels only where
// tensor_cores_available() says so.
#pragma once

#include "common.cuh"

namespace sparse_rt {
namespace cuda {
namespace detail {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define SPARSE_RT_SM80 1
#else
#define SPARSE_RT_SM80 0
#endif

// d += a * b for one 16x16 (row-major a) by 16x8 (column-major b) tile of TYPE ("f16", "bf16").
#define SPARSE_RT_MMA_16816(TYPE)                                                                 \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TYPE "." TYPE                            \
               ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"                     \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                    \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))

__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4],
                                          const uint32_t (&b)[2], __half) {
#if SPARSE_RT_SM80
  SPARSE_RT_MMA_16816("f16");
#else
  __trap();
#endif
}

__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4],
                                          const uint32_t (&b)[2], __nv_bfloat16) {
#if SPARSE_RT_SM80
  SPARSE_RT_MMA_16816("bf16");
#else
  __trap();
#endif
}
#undef SPARSE_RT_MMA_16816

// Two adjacent 16-bit elements as one register (the launchers check 4-byte alignment).
template <typename T>
__device__ __forceinline__ uint32_t load_pair(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

__device__ __forceinline__ unsigned shared_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Four 8x8 16-bit matrices from shared memory; lanes 8j..8j+7 name the rows of matrix j, and
// register j of lane (g, t) = (lane / 4, lane % 4) holds row g, columns 2t and 2t + 1 of it.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#if SPARSE_RT_SM80
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
#else
  __trap();
#endif
}

// Asynchronous global -> shared copies of BYTES (4 or 16) bytes; src_bytes == 0 writes zeros
// without reading global memory, which is how tiles are padded past the edge of a tensor.
template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst, const void* src, int src_bytes) {
  static_assert(BYTES == 4 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes; we use 4 and 16");
#if SPARSE_RT_SM80
  if constexpr (BYTES == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)),
                 "l"(src), "r"(src_bytes)
                 : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(shared_address(dst)),
                 "l"(src), "r"(src_bytes)
                 : "memory");
  }
#else
  __trap();
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#if SPARSE_RT_SM80
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#else
  __trap();
#endif
}

// Whether the current device runs the sm_80 instructions above. A host attribute query, not a
// stream operation: allowed during graph capture.
inline bool tensor_cores_available() {
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess)
    return false;
  return major >= 8;
}

inline int multiprocessor_count() {
  int device = 0, count = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return 1;
  return count;
}

#undef SPARSE_RT_SM80

}  // namespace detail
}  // namespace cuda
}  // namespace sparse_rt
