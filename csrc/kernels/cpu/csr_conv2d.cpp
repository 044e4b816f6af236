#include "csr_conv2d.h"

#include <algorithm>
#include <cstring>

namespace sparse_rt::cpu {
namespace {

// Marks the phases (tap offset modulo stride) that some tap of one axis reads and numbers them.
std::vector<int32_t> phase_slots(int64_t taps, int64_t dilation, int64_t stride, int64_t* stored) {
  std::vector<int32_t> slot(stride, -1);
  for (int64_t t = 0; t < taps; ++t) slot[(t * dilation) % stride] = 0;
  *stored = 0;
  for (auto& s : slot) {
    if (s == 0) s = int32_t((*stored)++);
  }
  return slot;
}

}  // namespace

PackedConvLayout packed_conv_layout(const Conv2dGeometry& g) {
  PackedConvLayout l;
  l.phase_h = (g.height + 2 * g.pad_h + g.stride_h - 1) / g.stride_h;
  l.phase_w = (g.width + 2 * g.pad_w + g.stride_w - 1) / g.stride_w;
  l.plane = l.phase_h * l.phase_w;
  int64_t stored_rows = 0;
  l.row_slot = phase_slots(g.kh, g.dil_h, g.stride_h, &stored_rows);
  l.col_slot = phase_slots(g.kw, g.dil_w, g.stride_w, &l.stored_cols);
  l.phases = stored_rows * l.stored_cols;
  l.wide = g.out_h * l.phase_w;
  l.wide_padded = (l.wide + 7) / 8 * 8;
  // A tap reads [offset, offset + wide_padded), which may run past the last plane by up to
  // wide_padded floats: the zero tail keeps those reads inside the buffer.
  l.packed_len = g.in_channels * l.phases * l.plane + l.wide_padded;
  return l;
}

void pack_conv_input(const Conv2dGeometry& g, const PackedConvLayout& l, const float* in,
                     float* packed, int64_t c_begin, int64_t c_end) {
  const int64_t sh = g.stride_h, sw = g.stride_w, channel_len = l.phases * l.plane;
  std::memset(packed + c_begin * channel_len, 0, sizeof(float) * (c_end - c_begin) * channel_len);
  if (c_end == g.in_channels) {
    std::memset(packed + g.in_channels * channel_len, 0, sizeof(float) * l.wide_padded);
  }
  for (int64_t c = c_begin; c < c_end; ++c) {
    for (int64_t y = 0; y < g.height; ++y) {
      const int64_t py = y + g.pad_h;  // padded row: phase py % sh, phase row py / sh
      const int32_t row_slot = l.row_slot[py % sh];
      if (row_slot < 0) continue;
      const float* src = in + (c * g.height + y) * g.width;
      float* row = packed + c * channel_len + row_slot * l.stored_cols * l.plane + (py / sh) * l.phase_w;
      if (sw == 1) {
        std::memcpy(row + g.pad_w, src, sizeof(float) * g.width);
        continue;
      }
      // Column x lands in phase (x + pad_w) % sw at (x + pad_w) / sw: walk each stored phase's columns.
      for (int64_t b = 0; b < sw; ++b) {
        if (l.col_slot[b] < 0) continue;
        const int64_t x0 = ((b - g.pad_w) % sw + sw) % sw;
        float* dst = row + l.col_slot[b] * l.plane + (x0 + g.pad_w) / sw;
        for (int64_t x = x0; x < g.width; x += sw) *dst++ = src[x];
      }
    }
  }
}

std::vector<int32_t> conv_column_offsets(const Conv2dGeometry& g, const PackedConvLayout& l) {
  const int64_t taps = g.kh * g.kw, cin_per_group = g.in_channels / g.groups;
  std::vector<int32_t> offsets(cin_per_group * taps);
  for (int64_t c = 0; c < cin_per_group; ++c) {
    for (int64_t tap = 0; tap < taps; ++tap) {
      const int64_t ty = (tap / g.kw) * g.dil_h, tx = (tap % g.kw) * g.dil_w;
      const int64_t phase = l.row_slot[ty % g.stride_h] * l.stored_cols + l.col_slot[tx % g.stride_w];
      offsets[c * taps + tap] = int32_t((c * l.phases + phase) * l.plane + (ty / g.stride_h) * l.phase_w +
                                        tx / g.stride_w);
    }
  }
  return offsets;
}

void conv_tap_offsets(const int32_t* crow, const int32_t* col, const Conv2dGeometry& g,
                      const PackedConvLayout& l, const std::vector<int32_t>& column_offsets,
                      int32_t* offsets, int64_t row_begin, int64_t row_end) {
  const int64_t cout_per_group = g.out_channels / g.groups;
  const int64_t group_stride = g.in_channels / g.groups * l.phases * l.plane;
  for (int64_t o = row_begin; o < row_end; ++o) {
    const int32_t base = int32_t((o / cout_per_group) * group_stride);
    for (int64_t k = crow[o]; k < crow[o + 1]; ++k) offsets[k] = base + column_offsets[col[k]];
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
