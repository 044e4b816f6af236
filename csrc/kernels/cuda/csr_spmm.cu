// CSR SpMM for linear layers: y[n, r] = act(bias[r] + sum_e val[e] * x[n, col[e]]).
//
// Sputnik-style subwarp tiling: a subwarp of SUBWARP lanes owns one output feature (sparse row)
// and a tile of BN batch rows. The lanes stride over the row's nonzeros, each index/value pair is
// loaded once and reused for the BN gathers from x, and the partial sums are reduced with
// shuffles. The subwarp width follows the average row length, so short rows do not leave most of
// a warp idle; BN = 1 is the batch-1 (GEMV) case, BN = 8 amortizes the index traffic for larger
// batches while the x rows of the tile stay resident in L1/L2.
//
// From a batch of 8 on, fp16/bf16 on sm_80+ can take the tensor cores instead ("load as sparse,
// compute as dense", as in Flash-LLM) where a cost model says they are faster (tensor_cores_pay,
// measured: large layers at batch 64 and up): a block of 4 warps owns 64 weight rows and walks the input
// features in steps of `chunk` columns. Per step each warp expands its 16 rows' entries of those
// columns into a zeroed dense tile in shared memory, the block stages the matching x tile with
// cp.async, and mma.m16n8k16 multiplies the two (ldmatrix feeds both operands). The weight is read
// once from global memory in its compressed form; x once per 64 weight rows.
#include <cstdlib>
#include <cstring>

#include "common.cuh"
#include "launch.h"
#include "mma.cuh"
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

// Tensor-core path. Entries are taken in column order: lane j of a warp keeps the cursor of its
// row j, and per step the warp reads a 32-entry window from each cursor and expands the leading
// entries below the step's end with plain stores. So a row's columns must increase strictly, as
// every sparse_rt format stores them (formats/_checks.py): a row whose taken columns do not
// increase, or whose entries are not all taken by the last step, comes out NaN, as a malformed
// row does (a repeated column would otherwise keep one of its values).
constexpr int kMmaWarps = 4;
constexpr int kMmaRows = 16 * kMmaWarps;      // weight rows per block: one m16 tile per warp
constexpr int kMmaMaxChunk = 128;             // input features per step
constexpr int kMmaStride = kMmaMaxChunk + 8;  // +16 bytes a row: ldmatrix rows hit distinct banks
constexpr int kMmaMaxBatch = 64;              // batch rows per tile: 4 pairs of m16n8 tiles
constexpr int kRowsPerWarp = 16;

template <typename T>
__global__ void __launch_bounds__(kMmaWarps * 32, 4)
    csr_spmm_mma_kernel(const T* __restrict__ x, const int32_t* __restrict__ crow,
                        const int32_t* __restrict__ col, const T* __restrict__ val,
                        const T* __restrict__ bias, T* __restrict__ y, int64_t n, int64_t m,
                        int64_t k, int64_t nnz, bool relu, int chunk, int batch_tile, bool x_vec16) {
  static_assert(sizeof(T) == 2, "mma.m16n8k16 takes fp16/bf16 operands");
  __shared__ __align__(16) T w_tile[kMmaRows][kMmaStride];
  __shared__ __align__(16) T x_tile[kMmaMaxBatch][kMmaStride];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, quad = lane % 4;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kMmaRows + warp * kRowsPerWarp;
  T(*const w_rows)[kMmaStride] = w_tile + warp * kRowsPerWarp;

  // Lane j < 16 follows row r0 + j (crow is unchecked: row_extent.h).
  RowExtent extent{0, 0, true};
  if (lane < kRowsPerWarp && r0 + lane < m) extent = row_extent(crow, m, r0 + lane, nnz);

  for (int64_t n0 = static_cast<int64_t>(blockIdx.y) * batch_tile; n0 < n;
       n0 += static_cast<int64_t>(gridDim.y) * batch_tile) {
    const int live = static_cast<int>(min(static_cast<int64_t>(batch_tile), n - n0));
    const int pairs = (live + 15) / 16;  // 16-row slices of the x tile in use
    int64_t cursor = extent.start;
    int32_t last_col = -1;  // the row's last column taken
    bool bad = !extent.valid;
    float acc[kMmaMaxBatch / 16][2][4] = {};

    int32_t window_col[kRowsPerWarp];
    T window_val[kRowsPerWarp];
    // Entries cursor + lane of row j, or a column past every step where the row has ended.
    auto load_window = [&](int j, int32_t& c, T& v) {
      const int64_t e = __shfl_sync(0xffffffffu, cursor, j) + lane;
      const bool in_row = e < __shfl_sync(0xffffffffu, extent.end, j);
      c = in_row ? col[e] : INT32_MAX;
      v = in_row ? val[e] : from_float<T>(0.f);
    };
#pragma unroll
    for (int j = 0; j < kRowsPerWarp; ++j) load_window(j, window_col[j], window_val[j]);

    for (int64_t kc = 0; kc < k; kc += chunk) {
      // Stage x[n0 : n0 + 16 * pairs, kc : kc + chunk], zeros past n and k.
      const int units = x_vec16 ? chunk / 8 : chunk / 2;  // copies per x row
      for (int u = threadIdx.x; u < pairs * 16 * units; u += kMmaWarps * 32) {
        const int row = u / units, c = (u % units) * (x_vec16 ? 8 : 2);
        const bool inside = n0 + row < n && kc + c < k;
        const T* src = inside ? x + (n0 + row) * k + kc + c : x;
        if (x_vec16)
          cp_async<16>(&x_tile[row][c], src, inside ? 16 : 0);
        else
          cp_async<4>(&x_tile[row][c], src, inside ? 4 : 0);
      }

      // Expand this warp's rows' entries with columns in [kc, kc + chunk).
      for (int i = lane; i < kRowsPerWarp * chunk / 8; i += 32)
        *reinterpret_cast<int4*>(&w_rows[i / (chunk / 8)][(i % (chunk / 8)) * 8]) = int4{0, 0, 0, 0};
      __syncwarp();
      const int64_t kend = kc + chunk;
      // Takes the leading window entries of this step; returns how many (32: maybe more follow).
      auto take = [&](int j, int32_t c, T v) {
        const unsigned mask = __ballot_sync(0xffffffffu, c >= kc && c < kend);
        const int count = mask == 0xffffffffu ? 32 : __ffs(~mask) - 1;
        const int32_t before = __shfl_up_sync(0xffffffffu, c, 1);
        const int32_t row_last = __shfl_sync(0xffffffffu, last_col, j);
        const bool rising = c > (lane == 0 ? row_last : before);
        if (lane < count) w_rows[j][c - kc] = v;
        const bool disorder = __any_sync(0xffffffffu, lane < count && !rising);
        const int32_t last = __shfl_sync(0xffffffffu, c, count > 0 ? count - 1 : 0);
        if (lane == j) {
          cursor += count;
          bad = bad || disorder;
          if (count > 0) last_col = last;
        }
        return count;
      };
      // The 16 rows' windows are independent, so their shuffles overlap; the rare rows with more
      // than a window's worth of entries in this step follow one by one.
      unsigned more = 0;
#pragma unroll
      for (int j = 0; j < kRowsPerWarp; ++j)
        if (take(j, window_col[j], window_val[j]) == 32) more |= 1u << j;
      while (more != 0) {
        const int j = __ffs(more) - 1;
        int32_t c;
        T v;
        load_window(j, c, v);
        if (take(j, c, v) < 32) more &= more - 1;
      }
      // The next step's windows load while this step multiplies.
      if (kend < k) {
#pragma unroll
        for (int j = 0; j < kRowsPerWarp; ++j) load_window(j, window_col[j], window_val[j]);
      }
      cp_async_wait_all();
      __syncthreads();

      for (int s = 0; s < chunk / 16; ++s) {
        uint32_t a[4];
        ldmatrix_x4(a, &w_rows[lane % 16][s * 16 + (lane / 16) * 8]);
#pragma unroll
        for (int p = 0; p < kMmaMaxBatch / 16; ++p) {
          if (p < pairs) {
            uint32_t b[4];
            ldmatrix_x4(b, &x_tile[p * 16 + lane % 8 + (lane / 16) * 8][s * 16 + (lane / 8) % 2 * 8]);
            const uint32_t lo[2] = {b[0], b[1]}, hi[2] = {b[2], b[3]};
            mma_16816(acc[p][0], a, lo, T{});
            mma_16816(acc[p][1], a, hi, T{});
          }
        }
      }
      __syncthreads();  // before the next step overwrites x_tile
    }
    // Entries left after the last step came after a larger column.
    if (lane < kRowsPerWarp && cursor != extent.end) bad = true;

    // C fragment: acc[p][h][0..1] are row r0 + group, batch rows 2 * quad + {0, 1} of the
    // 8-row tile (p, h); [2..3] row r0 + group + 8.
    const bool bad_lo = __shfl_sync(0xffffffffu, bad, group);
    const bool bad_hi = __shfl_sync(0xffffffffu, bad, group + 8);
#pragma unroll
    for (int p = 0; p < kMmaMaxBatch / 16; ++p)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int64_t row = r0 + group + (r >> 1) * 8;
          const int64_t b = n0 + p * 16 + h * 8 + 2 * quad + (r & 1);
          const bool row_bad = r >> 1 ? bad_hi : bad_lo;
          const float sum = row_bad ? std::numeric_limits<float>::quiet_NaN() : acc[p][h][r];
          if (p < pairs && row < m && b < n) y[b * m + row] = epilogue(sum, bias, row, relu);
        }
  }
}

// How the tensor-core kernel splits a problem: input features per step, batch rows per block.
struct MmaPlan {
  int chunk;
  int batch_tile;
  int64_t blocks;
};

MmaPlan plan_mma(int64_t n, int64_t m, int64_t k, int64_t nnz, int multiprocessors) {
  // About 24 entries of a row per step on average, so one 32-entry window usually holds them.
  const int64_t per_row = nnz / m + 1;
  int chunk = kMmaMaxChunk;
  while (chunk > 32 && chunk * per_row > 24 * k) chunk /= 2;
  // The widest batch tile that still gives every multiprocessor two blocks.
  const int64_t row_blocks = (m + kMmaRows - 1) / kMmaRows;
  int batch_tile = kMmaMaxBatch;
  while (batch_tile > 16 && row_blocks * ((n + batch_tile - 1) / batch_tile) < 2 * multiprocessors)
    batch_tile /= 2;
  return {chunk, batch_tile, row_blocks * ((n + batch_tile - 1) / batch_tile)};
}

// Whether the tensor cores beat the subwarp kernel, by a cost model fitted on an H200
// (benchmarks/results/): the subwarp kernel's time grows with the products nnz * n (about 1 us per
// 10^6 on the large layers of cuda-2026-12-04.json, more on small ones); the tensor-core kernel's
// with the steps a block walks times the waves of blocks (4 per multiprocessor), whatever the
// density: 4.0-5.2 us per step and wave in cuda-2026-12-04-csr-mma-first.json (a version of this
// kernel whose rows' shuffles did not yet overlap), so 4.4; the kernel here took 3.8-5.6 in
// cuda-2026-12-04-csr-mma.json (a partial last wave counted whole). Required lead: 1.25x.
bool tensor_cores_pay(const MmaPlan& plan, int64_t n, int64_t k, int64_t nnz, int multiprocessors) {
  const int64_t slots = 4 * static_cast<int64_t>(multiprocessors);
  const double steps = static_cast<double>((k + plan.chunk - 1) / plan.chunk);
  const double mma_us = 4.4 * steps * static_cast<double>((plan.blocks + slots - 1) / slots);
  const double subwarp_us = 1e-6 * static_cast<double>(nnz) * static_cast<double>(n);
  return 1.25 * mma_us < subwarp_us;
}

// SPARSE_RT_CSR_CUDA_KERNEL=subwarp or tensor_cores overrides the cost model where both kernels
// apply (tests run each kernel this way; benchmarks compare them); unset or any other value: auto.
enum class KernelChoice { kAuto, kSubwarp, kTensorCores };

KernelChoice kernel_choice() {
  const char* choice = std::getenv("SPARSE_RT_CSR_CUDA_KERNEL");
  if (choice != nullptr && std::strcmp(choice, "subwarp") == 0) return KernelChoice::kSubwarp;
  if (choice != nullptr && std::strcmp(choice, "tensor_cores") == 0) return KernelChoice::kTensorCores;
  return KernelChoice::kAuto;
}

template <typename T>
cudaError_t launch_mma(const T* x, const int32_t* crow, const int32_t* col, const T* val,
                       const T* bias, T* y, int64_t n, int64_t m, int64_t k, int64_t nnz,
                       bool relu, const MmaPlan& plan, cudaStream_t stream) {
  const bool x_vec16 = k % 8 == 0 && is_aligned(x, 16);
  const dim3 grid(grid_dim(m, kMmaRows, kMaxGridX), grid_dim(n, plan.batch_tile, kMaxGridY));
  csr_spmm_mma_kernel<T><<<grid, kMmaWarps * 32, 0, stream>>>(
      x, crow, col, val, bias, y, n, m, k, nnz, relu, plan.chunk, plan.batch_tile, x_vec16);
  return cudaGetLastError();
}

template <typename T>
cudaError_t csr_spmm_impl(const T* x, const int32_t* crow, const int32_t* col, const T* val,
                          const T* bias, T* y, int64_t n, int64_t m, int64_t k, int64_t nnz,
                          bool relu, cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  if constexpr (sizeof(T) == 2) {
    // x tiles are copied 4 bytes at a time at least: an aligned base and an even row length.
    if (n >= 8 && k % 2 == 0 && is_aligned(x, 4) && tensor_cores_available()) {
      const int multiprocessors = multiprocessor_count();
      const MmaPlan plan = plan_mma(n, m, k, nnz, multiprocessors);
      const KernelChoice choice = kernel_choice();
      if (choice == KernelChoice::kTensorCores ||
          (choice == KernelChoice::kAuto && tensor_cores_pay(plan, n, k, nnz, multiprocessors)))
        return launch_mma(x, crow, col, val, bias, y, n, m, k, nnz, relu, plan, stream);
    }
  }
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
