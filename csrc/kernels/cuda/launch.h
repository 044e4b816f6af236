// Launch functions for the torch-free CUDA kernels. Every function takes raw device pointers,
// sizes and a stream, enqueues its work without synchronizing (so it is safe under CUDA graph
// capture) and returns cudaGetLastError() after the launch. Values are float, __half or
// __nv_bfloat16 (accumulation is always fp32); indices are int32. Each overload is instantiated
// in the .cu file named in its comment.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../conv_shape.h"

namespace sparse_rt {
namespace cuda {

// csr_spmm.cu: y[n, r] = act(bias[r] + sum_{e in row r} val[e] * x[n, col[e]]).
// x row-major [n, k], y row-major [n, m], W CSR [m, k] with crow[m + 1], col/val[nnz].
// `bias` may be null. Writes bias (or zeros) for empty rows and for nnz == 0.
#define SPARSE_RT_DECLARE_CSR_SPMM(T)                                                             \
  cudaError_t csr_spmm(const T* x, const int32_t* crow, const int32_t* col, const T* val,         \
                       const T* bias, T* y, int64_t n, int64_t m, int64_t k, int64_t nnz,         \
                       bool relu, cudaStream_t stream);
SPARSE_RT_DECLARE_CSR_SPMM(float)
SPARSE_RT_DECLARE_CSR_SPMM(__half)
SPARSE_RT_DECLARE_CSR_SPMM(__nv_bfloat16)
#undef SPARSE_RT_DECLARE_CSR_SPMM

// bsr_spmm.cu: y[n, rb*bh + i] = act(bias + sum_{b in block row rb} sum_j val[b, i, j] *
// x[n, col[b]*bw + j]). crow over block rows [m / bh + 1], col holds block-column indices.
// m % bh == 0 and k % bw == 0. fp16/bf16 with bh, bw multiples of 16 run on tensor cores
// (mma.sync, compute capability >= 8.0); everything else on CUDA cores.
#define SPARSE_RT_DECLARE_BSR_SPMM(T)                                                             \
  cudaError_t bsr_spmm(const T* x, const int32_t* crow, const int32_t* col, const T* val,         \
                       const T* bias, T* y, int64_t n, int64_t m, int64_t k, int64_t bh,          \
                       int64_t bw, bool relu, cudaStream_t stream);
SPARSE_RT_DECLARE_BSR_SPMM(float)
SPARSE_RT_DECLARE_BSR_SPMM(__half)
SPARSE_RT_DECLARE_BSR_SPMM(__nv_bfloat16)
#undef SPARSE_RT_DECLARE_BSR_SPMM

// sparse_conv2d.cu: the convolution described by `shape` (conv_shape.h).
#define SPARSE_RT_DECLARE_CSR_CONV2D(T)                                                           \
  cudaError_t csr_conv2d(const T* x, const int32_t* crow, const int32_t* col, const T* val,       \
                         const T* bias, T* y, const Conv2dShape& shape, bool relu,                 \
                         cudaStream_t stream);
SPARSE_RT_DECLARE_CSR_CONV2D(float)
SPARSE_RT_DECLARE_CSR_CONV2D(__half)
SPARSE_RT_DECLARE_CSR_CONV2D(__nv_bfloat16)
#undef SPARSE_RT_DECLARE_CSR_CONV2D

// validate_indices.cu: full check of a compressed index structure with `rows` rows, `nnz` stored
// entries and columns in [0, cols). Writes status[0] = one IndexError code (0 when valid) and
// status[1] = the offending position (row or entry). `status` points to two device int32s; it is
// cleared on `stream` before the check, so the caller only reads it back after the stream.
enum IndexError : int32_t {
  kIndicesOk = 0,
  kCrowFirstNotZero = 1,     // crow[0] != 0
  kCrowDecreasing = 2,       // crow[i + 1] < crow[i], status[1] = i
  kCrowLastNotNnz = 3,       // crow[rows] != nnz
  kColOutOfRange = 4,        // col[e] < 0 or >= cols, status[1] = e
};
cudaError_t validate_compressed_indices(const int32_t* crow, const int32_t* col, int64_t rows,
                                        int64_t cols, int64_t nnz, int32_t* status,
                                        cudaStream_t stream);

}  // namespace cuda
}  // namespace sparse_rt
