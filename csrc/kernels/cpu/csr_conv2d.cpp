#include "csr_conv2d.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace sparse_rt::cpu {

PackedConvLayout packed_conv_layout(const Conv2dGeometry& g) {
  PackedConvLayout l;
  l.phase_h = (g.height + 2 * g.pad_h + g.stride_h - 1) / g.stride_h;
  l.phase_w = (g.width + 2 * g.pad_w + g.stride_w - 1) / g.stride_w;
  l.plane = l.phase_h * l.phase_w;
  l.wide = g.out_h * l.phase_w;
  l.wide_padded = (l.wide + 7) / 8 * 8;
  // A tap reads [offset, offset + wide_padded), which may run past the last plane by up to
  // wide_padded floats: the zero tail keeps those reads inside the buffer.
  l.packed_len = g.in_channels * g.stride_h * g.stride_w * l.plane + l.wide_padded;
  return l;
}

void pack_conv_input(const Conv2dGeometry& g, const PackedConvLayout& l, const float* in,
                     float* packed) {
  std::memset(packed, 0, sizeof(float) * l.packed_len);
  const int64_t sh = g.stride_h, sw = g.stride_w;
  for (int64_t c = 0; c < g.in_channels; ++c) {
    for (int64_t y = 0; y < g.height; ++y) {
      const int64_t py = y + g.pad_h;  // padded row: phase py % sh, phase row py / sh
      const float* src = in + (c * g.height + y) * g.width;
      float* row = packed + (c * sh + py % sh) * sw * l.plane + (py / sh) * l.phase_w;
      if (sw == 1) {
        std::memcpy(row + g.pad_w, src, sizeof(float) * g.width);
        continue;
      }
      // Column x lands in phase (x + pad_w) % sw at (x + pad_w) / sw: walk each phase's columns.
      for (int64_t b = 0; b < sw; ++b) {
        const int64_t x0 = ((b - g.pad_w) % sw + sw) % sw;
        float* dst = row + b * l.plane + (x0 + g.pad_w) / sw;
        for (int64_t x = x0; x < g.width; x += sw) *dst++ = src[x];
      }
    }
  }
}

void conv_tap_offsets(const int32_t* crow, const int32_t* col, const Conv2dGeometry& g,
                      const PackedConvLayout& l, int32_t* offsets) {
  const int64_t taps = g.kh * g.kw;
  const int64_t cin_per_group = g.in_channels / g.groups;
  const int64_t cout_per_group = g.out_channels / g.groups;
  // The offset of a column within its group's channels, computed once per column: the per-nonzero
  // loop then needs no division.
  std::vector<int64_t> column_offset(cin_per_group * taps);
  for (int64_t c = 0; c < cin_per_group; ++c) {
    for (int64_t tap = 0; tap < taps; ++tap) {
      const int64_t ty = (tap / g.kw) * g.dil_h, tx = (tap % g.kw) * g.dil_w;
      const int64_t phase = (c * g.stride_h + ty % g.stride_h) * g.stride_w + tx % g.stride_w;
      column_offset[c * taps + tap] = phase * l.plane + (ty / g.stride_h) * l.phase_w + tx / g.stride_w;
    }
  }
  const int64_t group_stride = cin_per_group * g.stride_h * g.stride_w * l.plane;
  for (int64_t o = 0; o < g.out_channels; ++o) {
    const int64_t base = (o / cout_per_group) * group_stride;
    for (int64_t k = crow[o]; k < crow[o + 1]; ++k) offsets[k] = int32_t(base + column_offset[col[k]]);
  }
}

void crop_wide_output(const Conv2dGeometry& g, const PackedConvLayout& l, const float* wide,
                      float* out, int64_t o_begin, int64_t o_end) {
  for (int64_t o = o_begin; o < o_end; ++o) {
    for (int64_t oy = 0; oy < g.out_h; ++oy) {
      std::memcpy(out + (o * g.out_h + oy) * g.out_w, wide + o * l.wide_padded + oy * l.phase_w,
                  sizeof(float) * g.out_w);
    }
  }
}

}  // namespace sparse_rt::cpu
