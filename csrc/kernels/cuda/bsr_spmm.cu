// BSR SpMM for linear layers: y[n, rb*bh + i] = act(bias + sum_b sum_j val[b, i, j] * x[n, col[b]*bw + j]).
//
// Tensor-core path (fp16/bf16, bh and bw multiples of 16, sm_80+): in GEMM terms y^T = W x^T, so
// a 16x16 slice of a block is the row-major A operand of mma.m16n8k16 and x, row-major [n, k],
// is already the column-major B operand: every B register is one 32-bit load of two adjacent
// features of one batch row, straight from global memory with rows past n masked to zero. A warp
// owns one 16-row slice of a block row and NT 8-wide batch tiles, so each A fragment is loaded
// once and used NT times. Everything else (fp32, other block sizes, older GPUs, misaligned views)
// takes the CUDA-core path: a thread per output feature, with x loads broadcast across the
// threads of a block row.
#include "common.cuh"
#include "launch.h"
#include "mma.cuh"
#include "row_extent.h"

namespace sparse_rt {
namespace cuda {
namespace {

using namespace detail;

constexpr int kWarpsPerBlock = 4;
constexpr int kSimtThreads = 128;

template <typename T, int NT>
__global__ void __launch_bounds__(kWarpsPerBlock * 32, 4)
    bsr_spmm_mma_kernel(const T* __restrict__ x, const int32_t* __restrict__ crow,
                        const int32_t* __restrict__ col, const T* __restrict__ val,
                        const T* __restrict__ bias, T* __restrict__ y, int64_t n, int64_t m,
                        int64_t k, int64_t nblocks, int bh, int bw, bool relu) {
  static_assert(sizeof(T) == 2, "mma.m16n8k16 takes fp16/bf16 operands");
  static_assert(NT >= 1 && NT <= 8, "batch tiles per warp (4 fp32 accumulators each)");

  const int lane = threadIdx.x % 32;
  const int group = lane / 4;  // fragment row (A, C) / column (B)
  const int quad = lane % 4;   // fragment column pair (A, C) / row pair (B)
  const int slices = bh / 16;
  const int64_t work = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (work >= (m / bh) * slices) return;  // whole warp: mma.sync needs every lane
  const int64_t brow = work / slices;
  const int i0 = static_cast<int>(work % slices) * 16;
  // crow is unchecked: a malformed block row reads nothing and sums to NaN (row_extent.h).
  const RowExtent extent = row_extent(crow, m / bh, brow, nblocks);
  const int64_t start = extent.start, end = extent.end;
  const int64_t block_elems = static_cast<int64_t>(bh) * bw;

  for (int64_t n0 = static_cast<int64_t>(blockIdx.y) * NT * 8; n0 < n;
       n0 += static_cast<int64_t>(gridDim.y) * NT * 8) {
    float acc[NT][4];
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[t][r] = row_sum_init(extent);

    for (int64_t b = start; b < end; ++b) {
      const T* __restrict__ a_base = val + b * block_elems + static_cast<int64_t>(i0 + group) * bw;
      const T* __restrict__ x_base = x + static_cast<int64_t>(col[b]) * bw + 2 * quad;
      for (int kk = 0; kk < bw; kk += 16) {
        const uint32_t a[4] = {load_pair(a_base + kk + 2 * quad),
                               load_pair(a_base + int64_t{8} * bw + kk + 2 * quad),
                               load_pair(a_base + kk + 8 + 2 * quad),
                               load_pair(a_base + int64_t{8} * bw + kk + 8 + 2 * quad)};
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          const int64_t row = n0 + t * 8 + group;
          uint32_t bf[2] = {0u, 0u};
          if (row < n) {
            const T* xr = x_base + row * k + kk;
            bf[0] = load_pair(xr);
            bf[1] = load_pair(xr + 8);
          }
          mma_16816(acc[t], a, bf, T{});
        }
      }
    }

    // C fragment: acc[t][0..1] are features i0+group, batch rows 2*quad+{0,1}; [2..3] feature +8.
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int64_t row = n0 + t * 8 + 2 * quad + (r & 1);
        const int64_t feature = brow * bh + i0 + group + (r >> 1) * 8;
        if (row < n) y[row * m + feature] = epilogue(acc[t][r], bias, feature, relu);
      }
  }
}

template <typename T>
__global__ void __launch_bounds__(kSimtThreads, 8)
    bsr_spmm_simt_kernel(const T* __restrict__ x, const int32_t* __restrict__ crow,
                         const int32_t* __restrict__ col, const T* __restrict__ val,
                         const T* __restrict__ bias, T* __restrict__ y, int64_t n, int64_t m,
                         int64_t k, int64_t nblocks, int bh, int bw, bool relu) {
  const int64_t feature = static_cast<int64_t>(blockIdx.x) * kSimtThreads + threadIdx.x;
  if (feature >= m) return;
  const int64_t brow = feature / bh;
  const int64_t i = feature % bh;
  const RowExtent extent = row_extent(crow, m / bh, brow, nblocks);  // as in the mma kernel
  const int64_t start = extent.start, end = extent.end;
  for (int64_t row = blockIdx.y; row < n; row += gridDim.y) {
    const T* __restrict__ xr = x + row * k;
    float acc = row_sum_init(extent);
    for (int64_t b = start; b < end; ++b) {
      const T* __restrict__ v = val + (b * bh + i) * bw;
      const T* __restrict__ xb = xr + static_cast<int64_t>(col[b]) * bw;
      for (int j = 0; j < bw; ++j) acc += to_float(v[j]) * to_float(xb[j]);
    }
    y[row * m + feature] = epilogue(acc, bias, feature, relu);
  }
}

template <typename T>
cudaError_t launch_simt(const T* x, const int32_t* crow, const int32_t* col, const T* val,
                        const T* bias, T* y, int64_t n, int64_t m, int64_t k, int64_t nblocks,
                        int64_t bh, int64_t bw, bool relu, cudaStream_t stream) {
  const dim3 grid(grid_dim(m, kSimtThreads, kMaxGridX), grid_dim(n, 1, kMaxGridY));
  bsr_spmm_simt_kernel<T><<<grid, kSimtThreads, 0, stream>>>(
      x, crow, col, val, bias, y, n, m, k, nblocks, static_cast<int>(bh), static_cast<int>(bw), relu);
  return cudaGetLastError();
}

template <typename T, int NT>
cudaError_t launch_mma(const T* x, const int32_t* crow, const int32_t* col, const T* val,
                       const T* bias, T* y, int64_t n, int64_t m, int64_t k, int64_t nblocks,
                       int64_t bh, int64_t bw, bool relu, cudaStream_t stream) {
  const int64_t warps = (m / bh) * (bh / 16);
  const dim3 grid(grid_dim(warps, kWarpsPerBlock, kMaxGridX), grid_dim(n, NT * 8, kMaxGridY));
  bsr_spmm_mma_kernel<T, NT><<<grid, kWarpsPerBlock * 32, 0, stream>>>(
      x, crow, col, val, bias, y, n, m, k, nblocks, static_cast<int>(bh), static_cast<int>(bw), relu);
  return cudaGetLastError();
}

template <typename T>
bool tensor_cores_apply(const T* x, const T* val, int64_t k, int64_t bh, int64_t bw) {
  if (sizeof(T) != 2 || bh % 16 != 0 || bw % 16 != 0) return false;
  // Fragments are 32-bit loads: both bases 4-byte aligned, and k, bw even (true for bw % 16 == 0).
  if (!is_aligned(x, 4) || !is_aligned(val, 4) || k % 2 != 0) return false;
  return tensor_cores_available();
}

template <typename T>
cudaError_t bsr_spmm_impl(const T* x, const int32_t* crow, const int32_t* col, const T* val,
                          const T* bias, T* y, int64_t n, int64_t m, int64_t k, int64_t nblocks,
                          int64_t bh, int64_t bw, bool relu, cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  if constexpr (sizeof(T) == 2) {
    if (tensor_cores_apply(x, val, k, bh, bw)) {
      if (n <= 8) return launch_mma<T, 1>(x, crow, col, val, bias, y, n, m, k, nblocks, bh, bw, relu, stream);
      if (n <= 16) return launch_mma<T, 2>(x, crow, col, val, bias, y, n, m, k, nblocks, bh, bw, relu, stream);
      if (n <= 32) return launch_mma<T, 4>(x, crow, col, val, bias, y, n, m, k, nblocks, bh, bw, relu, stream);
      return launch_mma<T, 8>(x, crow, col, val, bias, y, n, m, k, nblocks, bh, bw, relu, stream);
    }
  }
  return launch_simt(x, crow, col, val, bias, y, n, m, k, nblocks, bh, bw, relu, stream);
}

}  // namespace

cudaError_t bsr_spmm(const float* x, const int32_t* crow, const int32_t* col, const float* val,
                     const float* bias, float* y, int64_t n, int64_t m, int64_t k,
                     int64_t nblocks, int64_t bh, int64_t bw, bool relu, cudaStream_t stream) {
  return bsr_spmm_impl(x, crow, col, val, bias, y, n, m, k, nblocks, bh, bw, relu, stream);
}
cudaError_t bsr_spmm(const __half* x, const int32_t* crow, const int32_t* col, const __half* val,
                     const __half* bias, __half* y, int64_t n, int64_t m, int64_t k,
                     int64_t nblocks, int64_t bh, int64_t bw, bool relu, cudaStream_t stream) {
  return bsr_spmm_impl(x, crow, col, val, bias, y, n, m, k, nblocks, bh, bw, relu, stream);
}
cudaError_t bsr_spmm(const __nv_bfloat16* x, const int32_t* crow, const int32_t* col,
                     const __nv_bfloat16* val, const __nv_bfloat16* bias, __nv_bfloat16* y,
                     int64_t n, int64_t m, int64_t k, int64_t nblocks, int64_t bh, int64_t bw,
                     bool relu, cudaStream_t stream) {
  return bsr_spmm_impl(x, crow, col, val, bias, y, n, m, k, nblocks, bh, bw, relu, stream);
}

}  // namespace cuda
}  // namespace sparse_rt
