// Sparse 2-D convolution, direct method: out[n, o, p] = act(bias[o] + sum_e val[e] * in[n, c_e, p
// shifted by (ky_e, kx_e)]). A block owns one (image, output channel) pair and a run of output
// pixels; the channel's nonzeros are decoded once per block into shared memory (input plane and
// the padding/dilation-adjusted offsets), then every thread applies them to its pixel. Adjacent
// threads read adjacent input pixels (stride apart), and out-of-image taps read nothing, so any
// stride/padding/dilation/groups geometry is handled by the same bounds test.
#include "common.cuh"
#include "launch.h"
#include "row_extent.h"

namespace sparse_rt {
namespace cuda {
namespace {

using namespace detail;

constexpr int kMaxThreads = 256;

struct Tap {
  int64_t dy;     // ky * dil_h - pad_h: up to 2^62 in magnitude, beyond int32
  int64_t dx;     // kx * dil_w - pad_w
  int32_t plane;  // input channel (global, group offset included)
  float value;
};

template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS, 1024 / THREADS)
    csr_conv2d_kernel(const T* __restrict__ x, const int32_t* __restrict__ crow,
                      const int32_t* __restrict__ col, const T* __restrict__ val,
                      const T* __restrict__ bias, T* __restrict__ y, Conv2dShape s, int64_t nnz,
                      bool relu) {
  static_assert(THREADS % 32 == 0 && THREADS <= kMaxThreads, "whole warps, bounded smem");
  __shared__ Tap taps[THREADS];

  const int64_t out_pixels = s.out_h * s.out_w;
  const int64_t in_pixels = s.height * s.width;
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * THREADS + threadIdx.x;
  // Threads past the plane still help decode taps, so no early return before the barriers.
  const bool active = pixel < out_pixels;
  const int64_t oy = active ? pixel / s.out_w : 0;
  const int64_t ox = active ? pixel % s.out_w : 0;
  const int64_t iy0 = oy * s.stride_h;
  const int64_t ix0 = ox * s.stride_w;
  const int64_t cin_per_group = s.in_channels / s.groups;
  const int64_t cout_per_group = s.out_channels / s.groups;
  const int64_t taps_per_channel = s.kh * s.kw;

  for (int64_t plane = blockIdx.y; plane < s.batch * s.out_channels; plane += gridDim.y) {
    const int64_t image = plane / s.out_channels;
    const int64_t o = plane % s.out_channels;
    const int64_t channel_base = (o / cout_per_group) * cin_per_group;
    const T* __restrict__ xn = x + image * s.in_channels * in_pixels;
    // crow is unchecked: a malformed row reads nothing and sums to NaN (row_extent.h).
    const RowExtent extent = row_extent(crow, s.out_channels, o, nnz);
    const int64_t start = extent.start, end = extent.end;
    float acc = row_sum_init(extent);
    for (int64_t chunk = start; chunk < end; chunk += THREADS) {
      __syncthreads();  // the previous chunk's taps are no longer read
      if (chunk + threadIdx.x < end) {
        const int64_t e = chunk + threadIdx.x;
        const int64_t c = col[e];
        const int64_t within = c % taps_per_channel;
        taps[threadIdx.x] = {(within / s.kw) * s.dil_h - s.pad_h, (within % s.kw) * s.dil_w - s.pad_w,
                             static_cast<int32_t>(channel_base + c / taps_per_channel), to_float(val[e])};
      }
      __syncthreads();
      const int count = static_cast<int>(min(static_cast<int64_t>(THREADS), end - chunk));
      for (int t = 0; t < count; ++t) {
        const Tap tap = taps[t];
        const int64_t iy = iy0 + tap.dy;
        const int64_t ix = ix0 + tap.dx;
        if (active && iy >= 0 && iy < s.height && ix >= 0 && ix < s.width)
          acc += tap.value * to_float(xn[tap.plane * in_pixels + iy * s.width + ix]);
      }
    }
    if (active) y[plane * out_pixels + pixel] = epilogue(acc, bias, o, relu);
  }
}

template <typename T, int THREADS>
cudaError_t launch(const T* x, const int32_t* crow, const int32_t* col, const T* val,
                   const T* bias, T* y, const Conv2dShape& s, int64_t nnz, bool relu,
                   cudaStream_t stream) {
  const dim3 grid(grid_dim(s.out_h * s.out_w, THREADS, kMaxGridX), grid_dim(s.batch * s.out_channels, 1, kMaxGridY));
  csr_conv2d_kernel<T, THREADS><<<grid, THREADS, 0, stream>>>(x, crow, col, val, bias, y, s, nnz, relu);
  return cudaGetLastError();
}

template <typename T>
cudaError_t csr_conv2d_impl(const T* x, const int32_t* crow, const int32_t* col, const T* val,
                            const T* bias, T* y, const Conv2dShape& s, int64_t nnz,
                            bool relu, cudaStream_t stream) {
  if (s.batch == 0 || s.out_channels == 0 || s.out_h * s.out_w == 0) return cudaSuccess;
  // Late ResNet stages have 7x7 or 14x14 output planes: small blocks keep the threads busy.
  if (s.out_h * s.out_w <= 64) return launch<T, 64>(x, crow, col, val, bias, y, s, nnz, relu, stream);
  if (s.out_h * s.out_w <= 128) return launch<T, 128>(x, crow, col, val, bias, y, s, nnz, relu, stream);
  return launch<T, kMaxThreads>(x, crow, col, val, bias, y, s, nnz, relu, stream);
}

}  // namespace

cudaError_t csr_conv2d(const float* x, const int32_t* crow, const int32_t* col, const float* val,
                       const float* bias, float* y, const Conv2dShape& shape, int64_t nnz,
                       bool relu, cudaStream_t stream) {
  return csr_conv2d_impl(x, crow, col, val, bias, y, shape, nnz, relu, stream);
}
cudaError_t csr_conv2d(const __half* x, const int32_t* crow, const int32_t* col, const __half* val,
                       const __half* bias, __half* y, const Conv2dShape& shape, int64_t nnz,
                       bool relu, cudaStream_t stream) {
  return csr_conv2d_impl(x, crow, col, val, bias, y, shape, nnz, relu, stream);
}
cudaError_t csr_conv2d(const __nv_bfloat16* x, const int32_t* crow, const int32_t* col,
                       const __nv_bfloat16* val, const __nv_bfloat16* bias, __nv_bfloat16* y,
                       const Conv2dShape& shape, int64_t nnz, bool relu, cudaStream_t stream) {
  return csr_conv2d_impl(x, crow, col, val, bias, y, shape, nnz, relu, stream);
}

}  // namespace cuda
}  // namespace sparse_rt
