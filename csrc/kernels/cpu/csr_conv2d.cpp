#include "csr_conv2d.h"

#include <algorithm>

#include "isa.h"
#include "scalar_types.h"

namespace sparse_rt::cpu {
namespace {

// Smallest o >= 0 with o*stride + offset >= 0, i.e. the first output position whose input tap
// (o*stride + offset) falls inside the image.
inline int64_t first_valid(int64_t offset, int64_t stride) {
  return offset >= 0 ? 0 : (-offset + stride - 1) / stride;
}

// One past the last output position o (< out) whose input tap o*stride + offset is < extent.
inline int64_t end_valid(int64_t offset, int64_t stride, int64_t extent, int64_t out) {
  if (offset >= extent) return 0;
  return std::min(out, (extent - 1 - offset) / stride + 1);
}

}  // namespace

template <typename V>
SPARSE_RT_MULTIVERSION void csr_conv2d(const CsrView<V>& w, const Conv2dGeometry& g, const float* in, float* out,
                Epilogue ep, int64_t o_begin, int64_t o_end) {
  const int64_t plane = g.out_h * g.out_w, in_plane = g.height * g.width;
  const int64_t taps = g.kh * g.kw;
  const int64_t cin_per_group = g.in_channels / g.groups;
  const int64_t cout_per_group = g.out_channels / g.groups;
  for (int64_t o = o_begin; o < o_end; ++o) {
    float* __restrict acc = out + o * plane;
    const float init = ep.bias ? ep.bias[o] : 0.f;
    std::fill(acc, acc + plane, init);
    const int64_t channel_base = (o / cout_per_group) * cin_per_group;
    for (int64_t k = w.crow[o]; k < w.crow[o + 1]; ++k) {
      const float v = to_float(w.values[k]);
      const int64_t c = w.col[k] / taps, tap = w.col[k] % taps;
      const int64_t oy_off = (tap / g.kw) * g.dil_h - g.pad_h;
      const int64_t ox_off = (tap % g.kw) * g.dil_w - g.pad_w;
      const int64_t oy0 = first_valid(oy_off, g.stride_h);
      const int64_t oy1 = end_valid(oy_off, g.stride_h, g.height, g.out_h);
      const int64_t ox0 = first_valid(ox_off, g.stride_w);
      const int64_t ox1 = end_valid(ox_off, g.stride_w, g.width, g.out_w);
      const float* src = in + (channel_base + c) * in_plane;
      for (int64_t oy = oy0; oy < oy1; ++oy) {
        const float* __restrict row = src + (oy * g.stride_h + oy_off) * g.width + ox_off;
        float* __restrict dst = acc + oy * g.out_w;
        if (g.stride_w == 1) {
          for (int64_t ox = ox0; ox < ox1; ++ox) dst[ox] += v * row[ox];
        } else {
          for (int64_t ox = ox0; ox < ox1; ++ox) dst[ox] += v * row[ox * g.stride_w];
        }
      }
    }
    if (ep.relu) {
      for (int64_t i = 0; i < plane; ++i) acc[i] = std::max(acc[i], 0.f);
    }
  }
}

template void csr_conv2d<float>(const CsrView<float>&, const Conv2dGeometry&, const float*, float*,
                                Epilogue, int64_t, int64_t);
template void csr_conv2d<half_t>(const CsrView<half_t>&, const Conv2dGeometry&, const float*,
                                 float*, Epilogue, int64_t, int64_t);
template void csr_conv2d<bfloat16_t>(const CsrView<bfloat16_t>&, const Conv2dGeometry&,
                                     const float*, float*, Epilogue, int64_t, int64_t);

}  // namespace sparse_rt::cpu
