// Launch functions for the torch-free CUDA kernels. Every function takes raw device pointers,
// sizes and a stream, enqueues its work without synchronizing (so it is safe under CUDA graph
// capture) and returns cudaGetLastError() after the launch. Values are float, __half or
// __nv_bfloat16 (accumulation is always fp32); indices are int32. Each overload is instantiated
// in the .cu file named in its comment.
//
// crow is not trusted (the bindings cannot check it without a host sync): every kernel checks each
// row's pointers as it reads them and never reads col or val outside [0, nnz); a malformed row
// reads nothing and writes NaN (row_extent.h). Column indices are trusted: the caller checks them
// (validate_compressed_indices, or the layers' validation when they are built or loaded).
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
// `bias` may be null. Writes bias (or zeros) for empty rows and for nnz == 0. fp16/bf16 from n = 8
// may run on tensor cores, which need each row's columns strictly increasing (as sparse_rt's formats
// store them): a row that is not comes out NaN there, like a malformed one.
#define SPARSE_RT_DECLARE_CSR_SPMM(T)                                                             \
  cudaError_t csr_spmm(const T* x, const int32_t* crow, const int32_t* col, const T* val,         \
                       const T* bias, T* y, int64_t n, int64_t m, int64_t k, int64_t nnz,         \
                       bool relu, cudaStream_t stream);
SPARSE_RT_DECLARE_CSR_SPMM(float)
SPARSE_RT_DECLARE_CSR_SPMM(__half)
SPARSE_RT_DECLARE_CSR_SPMM(__nv_bfloat16)
#undef SPARSE_RT_DECLARE_CSR_SPMM

// bsr_spmm.cu: y[n, rb*bh + i] = act(bias + sum_{b in block row rb} sum_j val[b, i, j] *
// x[n, col[b]*bw + j]). crow over block rows [m / bh + 1], col holds block-column indices of
// `nblocks` blocks. m % bh == 0 and k % bw == 0. fp16/bf16 with bh, bw multiples of 16 run on
// tensor cores (mma.sync, compute capability >= 8.0); everything else on CUDA cores.
#define SPARSE_RT_DECLARE_BSR_SPMM(T)                                                             \
  cudaError_t bsr_spmm(const T* x, const int32_t* crow, const int32_t* col, const T* val,         \
                       const T* bias, T* y, int64_t n, int64_t m, int64_t k, int64_t nblocks,     \
                       int64_t bh, int64_t bw, bool relu, cudaStream_t stream);
SPARSE_RT_DECLARE_BSR_SPMM(float)
SPARSE_RT_DECLARE_BSR_SPMM(__half)
SPARSE_RT_DECLARE_BSR_SPMM(__nv_bfloat16)
#undef SPARSE_RT_DECLARE_BSR_SPMM

// sparse_conv2d.cu: the convolution described by `shape` (conv_shape.h), `nnz` entries in col/val.
#define SPARSE_RT_DECLARE_CSR_CONV2D(T)                                                           \
  cudaError_t csr_conv2d(const T* x, const int32_t* crow, const int32_t* col, const T* val,       \
                         const T* bias, T* y, const Conv2dShape& shape, int64_t nnz, bool relu,    \
                         cudaStream_t stream);
SPARSE_RT_DECLARE_CSR_CONV2D(float)
SPARSE_RT_DECLARE_CSR_CONV2D(__half)
SPARSE_RT_DECLARE_CSR_CONV2D(__nv_bfloat16)
#undef SPARSE_RT_DECLARE_CSR_CONV2D

// validate_indices.cu: full check of a compressed index structure with `rows` rows, `nnz` stored
// entries and columns in [0, cols): the CPU op's conditions (crow[0] == 0, crow non-decreasing,
// crow[rows] == nnz, every column in range). `*invalid` (one device int32) is cleared on `stream`,
// then set to 1 if any condition fails; the caller reads it back after the stream and, on a
// failure, finds and words the problem with the CPU check on host copies.
cudaError_t validate_compressed_indices(const int32_t* crow, const int32_t* col, int64_t rows,
                                        int64_t cols, int64_t nnz, int32_t* invalid,
                                        cudaStream_t stream);

}  // namespace cuda
}  // namespace sparse_rt
