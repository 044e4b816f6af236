// Full validation of CSR/BSR index arrays on the device, for the opt-in check
// (SPARSE_RT_CHECK_INDICES=1): one thread per row boundary and per stored entry; the first thread
// to find a problem records its code and position.
#include "common.cuh"
#include "launch.h"

namespace sparse_rt {
namespace cuda {
namespace {

using namespace detail;

constexpr int kThreads = 256;

__device__ __forceinline__ void report(int32_t* status, IndexError code, int64_t where) {
  if (atomicCAS(status, kIndicesOk, code) == kIndicesOk)
    status[1] = static_cast<int32_t>(where < INT32_MAX ? where : INT32_MAX);
}

__global__ void __launch_bounds__(kThreads, 2048 / kThreads)
    validate_kernel(const int32_t* __restrict__ crow, const int32_t* __restrict__ col,
                    int64_t rows, int64_t cols, int64_t nnz, int32_t* status) {
  const int64_t total = max(rows + 1, nnz);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    if (i == 0 && crow[0] != 0) report(status, kCrowFirstNotZero, 0);
    if (i < rows && crow[i + 1] < crow[i]) report(status, kCrowDecreasing, i);
    if (i == rows && crow[rows] != nnz) report(status, kCrowLastNotNnz, rows);
    if (i < nnz && (col[i] < 0 || col[i] >= cols)) report(status, kColOutOfRange, i);
  }
}

}  // namespace

cudaError_t validate_compressed_indices(const int32_t* crow, const int32_t* col, int64_t rows,
                                        int64_t cols, int64_t nnz, int32_t* status,
                                        cudaStream_t stream) {
  const cudaError_t cleared = cudaMemsetAsync(status, 0, 2 * sizeof(int32_t), stream);
  if (cleared != cudaSuccess) return cleared;
  // A grid-stride loop: a few waves of blocks cover any size.
  validate_kernel<<<grid_dim(max(rows + 1, nnz), kThreads, 1024), kThreads, 0, stream>>>(
      crow, col, rows, cols, nnz, status);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace sparse_rt
