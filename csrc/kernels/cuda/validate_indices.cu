// Full validation of CSR/BSR index arrays on the device, for the opt-in check
// (SPARSE_RT_CHECK_INDICES=1): one thread per row boundary and per stored entry; any thread that
// finds a problem raises the flag (the binding then locates and words it on the host).
#include "common.cuh"
#include "launch.h"

namespace sparse_rt {
namespace cuda {
namespace {

using namespace detail;

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads, 2048 / kThreads)
    validate_kernel(const int32_t* __restrict__ crow, const int32_t* __restrict__ col,
                    int64_t rows, int64_t cols, int64_t nnz, int32_t* invalid) {
  const int64_t total = max(rows + 1, nnz);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const bool bad = (i == 0 && crow[0] != 0) || (i < rows && crow[i + 1] < crow[i]) ||
                     (i == rows && crow[rows] != nnz) || (i < nnz && (col[i] < 0 || col[i] >= cols));
    if (bad) *invalid = 1;  // every writer stores the same value: no atomic needed
  }
}

}  // namespace

cudaError_t validate_compressed_indices(const int32_t* crow, const int32_t* col, int64_t rows,
                                        int64_t cols, int64_t nnz, int32_t* invalid,
                                        cudaStream_t stream) {
  const cudaError_t cleared = cudaMemsetAsync(invalid, 0, sizeof(int32_t), stream);
  if (cleared != cudaSuccess) return cleared;
  // A grid-stride loop: a few waves of blocks cover any size.
  validate_kernel<<<grid_dim(max(rows + 1, nnz), kThreads, 1024), kThreads, 0, stream>>>(
      crow, col, rows, cols, nnz, invalid);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace sparse_rt
