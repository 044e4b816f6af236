// CSR SpMM for linear layers: y[n, r] = act(bias[r] + sum_e val[e] * x[n, col[e]]).
//
// Sputnik-style subwarp tiling: a subwarp of SUBWARP lanes owns one output feature (sparse row)
// and a tile of BN batch rows. The lanes stride over the row's nonzeros, each index/value pair is
// loaded once and reused for the BN gathers from x, and the partial sums are reduced with
// shuffles. The subwarp width follows the average row length, so short rows do not leave most of
// a warp idle; BN = 1 is the batch-1 (GEMV) case, BN = 8 amortizes the index traffic for larger
// batches while the x rows of the tile stay resident in L1/L2.
#include "common.cuh"
#include "launch.h"
#include "row_extent.h"
#include "vector_span.h"

namespace sparse_rt {
namespace cuda {
namespace {

using namespace detail;

constexpr int kThreads = 128;
// Explicit occupancy target: without it ptxas 13 trades spills for occupancy on its own.
constexpr int kMinBlocksPerSm = 4;

template <typename T, int SUBWARP, int BN, int VEC>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    csr_spmm_kernel(const T* __restrict__ x, const int32_t* __restrict__ crow,
                    const int32_t* __restrict__ col, const T* __restrict__ val,
                    const T* __restrict__ bias, T* __restrict__ y, int64_t n, int64_t m, int64_t k,
                    int64_t nnz, bool relu) {
  static_assert(SUBWARP == 8 || SUBWARP == 16 || SUBWARP == 32, "subwarp must divide a warp");
  static_assert(kThreads % 32 == 0, "whole warps per block");
  static_assert(BN >= 1 && BN <= SUBWARP, "lane j writes batch row j of the tile");
  static_assert(VEC == 1 || VEC == 4, "index loads are int32 or int4");

  const int lane = threadIdx.x % SUBWARP;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / SUBWARP) +
                      threadIdx.x / SUBWARP;
  // A whole subwarp leaves together, and the shuffles below name only this subwarp's lanes.
  if (row >= m) return;
  const unsigned mask =
      SUBWARP == 32 ? 0xffffffffu
                    : ((1u << SUBWARP) - 1u) << ((threadIdx.x % 32) & ~(SUBWARP - 1));

  // crow is unchecked: a malformed row reads nothing and sums to NaN (row_extent.h).
  const RowExtent extent = row_extent(crow, m, row, nnz);
  const int64_t start = extent.start, end = extent.end;
  // Scalar head, vector body, scalar tail (the whole row when VEC == 1): vector_span.h.
  const VectorSpan span = vector_span<VEC>(start, end);
  const int64_t head_end = span.head_end, body_end = span.body_end;

  const int64_t tiles = (n + BN - 1) / BN;
  for (int64_t tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
    const int64_t n0 = tile * BN;
    const int64_t valid = min(static_cast<int64_t>(BN), n - n0);
    const T* __restrict__ xt = x + n0 * k;
    float acc[BN];
#pragma unroll
    for (int j = 0; j < BN; ++j) acc[j] = row_sum_init(extent);

    auto accumulate = [&](int32_t c, float v) {
#pragma unroll
      for (int j = 0; j < BN; ++j)
        if (j < valid) acc[j] += v * to_float(xt[j * k + c]);
    };

    if (VEC > 1) {
      if (start + lane < head_end) accumulate(col[start + lane], to_float(val[start + lane]));
      for (int64_t e = head_end + lane * VEC; e < body_end; e += SUBWARP * VEC) {
        const int4 c4 = *reinterpret_cast<const int4*>(col + e);
        const Vec<T, VEC> v4 = *reinterpret_cast<const Vec<T, VEC>*>(val + e);
        accumulate(c4.x, to_float(v4.v[0]));
        accumulate(c4.y, to_float(v4.v[1]));
        accumulate(c4.z, to_float(v4.v[2]));
        accumulate(c4.w, to_float(v4.v[3]));
      }
    }
    for (int64_t e = body_end + lane; e < end; e += SUBWARP) accumulate(col[e], to_float(val[e]));

#pragma unroll
    for (int j = 0; j < BN; ++j) {
#pragma unroll
      for (int offset = SUBWARP / 2; offset > 0; offset /= 2)
        acc[j] += __shfl_xor_sync(mask, acc[j], offset, SUBWARP);
    }
    // Lane j stores batch row j; the static index keeps acc[] in registers.
#pragma unroll
    for (int j = 0; j < BN; ++j)
      if (lane == j && j < valid) y[(n0 + j) * m + row] = epilogue(acc[j], bias, row, relu);
  }
}

template <typename T, int SUBWARP, int BN>
cudaError_t launch(const T* x, const int32_t* crow, const int32_t* col, const T* val,
                   const T* bias, T* y, int64_t n, int64_t m, int64_t k, int64_t nnz,
                   bool vec, bool relu, cudaStream_t stream) {
  const dim3 grid(grid_dim(m, kThreads / SUBWARP, kMaxGridX), grid_dim(n, BN, kMaxGridY));
  if (vec)
    csr_spmm_kernel<T, SUBWARP, BN, 4>
        <<<grid, kThreads, 0, stream>>>(x, crow, col, val, bias, y, n, m, k, nnz, relu);
  else
    csr_spmm_kernel<T, SUBWARP, BN, 1>
        <<<grid, kThreads, 0, stream>>>(x, crow, col, val, bias, y, n, m, k, nnz, relu);
  return cudaGetLastError();
}

template <typename T, int SUBWARP>
cudaError_t launch_batch_tile(const T* x, const int32_t* crow, const int32_t* col, const T* val,
                              const T* bias, T* y, int64_t n, int64_t m, int64_t k,
                              int64_t nnz, bool vec, bool relu, cudaStream_t stream) {
  if (n == 1) return launch<T, SUBWARP, 1>(x, crow, col, val, bias, y, n, m, k, nnz, vec, relu, stream);
  if (n == 2) return launch<T, SUBWARP, 2>(x, crow, col, val, bias, y, n, m, k, nnz, vec, relu, stream);
  if (n <= 4) return launch<T, SUBWARP, 4>(x, crow, col, val, bias, y, n, m, k, nnz, vec, relu, stream);
  return launch<T, SUBWARP, 8>(x, crow, col, val, bias, y, n, m, k, nnz, vec, relu, stream);
}

template <typename T>
cudaError_t csr_spmm_impl(const T* x, const int32_t* crow, const int32_t* col, const T* val,
                          const T* bias, T* y, int64_t n, int64_t m, int64_t k, int64_t nnz,
                          bool relu, cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  // int4 index loads and 4-element value loads; views with odd offsets take the scalar path.
  const bool vec = is_aligned(col, sizeof(int4)) && is_aligned(val, 4 * sizeof(T));
  // At least two vector iterations per lane: wide subwarps only for long rows.
  const int64_t avg = nnz / m;
  if (avg >= 256) return launch_batch_tile<T, 32>(x, crow, col, val, bias, y, n, m, k, nnz, vec, relu, stream);
  if (avg >= 64) return launch_batch_tile<T, 16>(x, crow, col, val, bias, y, n, m, k, nnz, vec, relu, stream);
  return launch_batch_tile<T, 8>(x, crow, col, val, bias, y, n, m, k, nnz, vec, relu, stream);
}

}  // namespace

cudaError_t csr_spmm(const float* x, const int32_t* crow, const int32_t* col, const float* val,
                     const float* bias, float* y, int64_t n, int64_t m, int64_t k, int64_t nnz,
                     bool relu, cudaStream_t stream) {
  return csr_spmm_impl(x, crow, col, val, bias, y, n, m, k, nnz, relu, stream);
}
cudaError_t csr_spmm(const __half* x, const int32_t* crow, const int32_t* col, const __half* val,
                     const __half* bias, __half* y, int64_t n, int64_t m, int64_t k, int64_t nnz,
                     bool relu, cudaStream_t stream) {
  return csr_spmm_impl(x, crow, col, val, bias, y, n, m, k, nnz, relu, stream);
}
cudaError_t csr_spmm(const __nv_bfloat16* x, const int32_t* crow, const int32_t* col,
                     const __nv_bfloat16* val, const __nv_bfloat16* bias, __nv_bfloat16* y,
                     int64_t n, int64_t m, int64_t k, int64_t nnz, bool relu,
                     cudaStream_t stream) {
  return csr_spmm_impl(x, crow, col, val, bias, y, n, m, k, nnz, relu, stream);
}

}  // namespace cuda
}  // namespace sparse_rt
