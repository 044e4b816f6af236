#include "csr_conv2d.h"

#include <algorithm>
#include <cstring>

#include "csr_spmm.h"
#include "scalar_types.h"

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

void pack_conv_input(const Conv2dShape& s, const PackedConvLayout& l, const float* in,
                     float* packed, int64_t c_begin, int64_t c_end) {
  const int64_t sh = s.stride_h, sw = s.stride_w, channel_len = l.phases * l.plane;
  std::memset(packed + c_begin * channel_len, 0, sizeof(float) * (c_end - c_begin) * channel_len);
  if (c_end == s.in_channels) {
    std::memset(packed + s.in_channels * channel_len, 0, sizeof(float) * l.wide_padded);
  }
  for (int64_t c = c_begin; c < c_end; ++c) {
    for (int64_t y = 0; y < s.height; ++y) {
      const int64_t py = y + s.pad_h;  // padded row: phase py % sh, phase row py / sh
      const int32_t row_slot = l.row_slot[py % sh];
      if (row_slot < 0) continue;
      const float* src = in + (c * s.height + y) * s.width;
      float* row = packed + c * channel_len + row_slot * l.stored_cols * l.plane + (py / sh) * l.phase_w;
      if (sw == 1) {
        std::memcpy(row + s.pad_w, src, sizeof(float) * s.width);
        continue;
      }
      // Column x lands in phase (x + pad_w) % sw at (x + pad_w) / sw: walk each stored phase's columns.
      for (int64_t b = 0; b < sw; ++b) {
        if (l.col_slot[b] < 0) continue;
        const int64_t x0 = ((b - s.pad_w) % sw + sw) % sw;
        float* dst = row + l.col_slot[b] * l.plane + (x0 + s.pad_w) / sw;
        for (int64_t x = x0; x < s.width; x += sw) *dst++ = src[x];
      }
    }
  }
}

std::vector<int32_t> conv_column_offsets(const Conv2dShape& s, const PackedConvLayout& l) {
  const int64_t taps = s.kh * s.kw, cin_per_group = s.in_channels / s.groups;
  std::vector<int32_t> offsets(cin_per_group * taps);
  for (int64_t c = 0; c < cin_per_group; ++c) {
    for (int64_t tap = 0; tap < taps; ++tap) {
      const int64_t ty = (tap / s.kw) * s.dil_h, tx = (tap % s.kw) * s.dil_w;
      const int64_t phase = l.row_slot[ty % s.stride_h] * l.stored_cols + l.col_slot[tx % s.stride_w];
      offsets[c * taps + tap] = int32_t((c * l.phases + phase) * l.plane + (ty / s.stride_h) * l.phase_w +
                                        tx / s.stride_w);
    }
  }
  return offsets;
}

void conv_tap_offsets(const int32_t* crow, const int32_t* col, const Conv2dShape& s,
                      const PackedConvLayout& l, const std::vector<int32_t>& column_offsets,
                      int32_t* offsets, int64_t row_begin, int64_t row_end) {
  const int64_t cout_per_group = s.out_channels / s.groups;
  const int64_t group_stride = s.in_channels / s.groups * l.phases * l.plane;
  for (int64_t o = row_begin; o < row_end; ++o) {
    const int32_t base = int32_t((o / cout_per_group) * group_stride);
    for (int64_t k = crow[o]; k < crow[o + 1]; ++k) offsets[k] = base + column_offsets[col[k]];
  }
}

void crop_wide_output(const Conv2dShape& s, const PackedConvLayout& l, const float* wide,
                      float* out, int64_t o_begin, int64_t o_end) {
  for (int64_t o = o_begin; o < o_end; ++o) {
    for (int64_t oy = 0; oy < s.out_h; ++oy) {
      std::memcpy(out + (o * s.out_h + oy) * s.out_w, wide + o * l.wide_padded + oy * l.phase_w,
                  sizeof(float) * s.out_w);
    }
  }
}

}  // namespace

PackedConvLayout packed_conv_layout(const Conv2dShape& s) {
  PackedConvLayout l;
  l.phase_h = (s.height + 2 * s.pad_h + s.stride_h - 1) / s.stride_h;
  l.phase_w = (s.width + 2 * s.pad_w + s.stride_w - 1) / s.stride_w;
  l.plane = l.phase_h * l.phase_w;
  int64_t stored_rows = 0;
  l.row_slot = phase_slots(s.kh, s.dil_h, s.stride_h, &stored_rows);
  l.col_slot = phase_slots(s.kw, s.dil_w, s.stride_w, &l.stored_cols);
  l.phases = stored_rows * l.stored_cols;
  l.wide = s.out_h * l.phase_w;
  l.wide_padded = (l.wide + 7) / 8 * 8;
  // A tap reads [offset, offset + wide_padded), which may run past the last plane by up to
  // wide_padded floats: the zero tail keeps those reads inside the buffer.
  l.packed_len = s.in_channels * l.phases * l.plane + l.wide_padded;
  l.direct = s.kh == 1 && s.kw == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 && s.pad_w == 0;
  l.crop = l.phase_w != s.out_w;
  return l;
}

ConvScratchSizes conv_scratch_sizes(const Conv2dShape& s, const PackedConvLayout& l, int64_t nnz) {
  return {l.direct ? 0 : s.batch * l.packed_len, nnz, l.crop ? s.batch * s.out_channels * l.wide_padded : 0};
}

template <typename V>
void csr_conv2d(const Conv2dShape& s, const PackedConvLayout& l, const CsrView<V>& w,
                const float* x, float* y, Epilogue ep, const ConvScratch& scratch,
                const ParallelFor& pf) {
  const int64_t in_image = s.in_channels * s.height * s.width;
  const int64_t out_image = s.out_channels * s.out_h * s.out_w;
  const std::vector<int32_t> column_offsets = conv_column_offsets(s, l);
  pf.run(0, s.out_channels, 64, [&](int64_t o0, int64_t o1) {
    conv_tap_offsets(w.crow, w.col, s, l, column_offsets, scratch.offsets, o0, o1);
  });
  if (!l.direct) {
    // Split by image and channel: a batch-1 image is packed by every thread too.
    pf.run(0, s.batch * s.in_channels, 16, [&](int64_t u0, int64_t u1) {
      while (u0 < u1) {
        const int64_t n = u0 / s.in_channels, c0 = u0 % s.in_channels;
        const int64_t c1 = std::min(s.in_channels, c0 + (u1 - u0));
        pack_conv_input(s, l, x + n * in_image, scratch.packed + n * l.packed_len, c0, c1);
        u0 += c1 - c0;
      }
    });
  }
  // The SpMM's dense operand is the packed image (or the input itself), its column indices the
  // tap offsets into it.
  const float* images = l.direct ? x : scratch.packed;
  const int64_t image_stride = l.direct ? in_image : l.packed_len;
  const int64_t width = l.direct ? l.wide : l.wide_padded;
  const CsrView<V> taps{w.crow, scratch.offsets, w.values, w.rows, w.cols};
  parallel_over_rows(pf, w.crow, w.rows, s.batch, int64_t(w.crow[w.rows]) * l.wide,
                     [&](int64_t n, int64_t o0, int64_t o1) {
                       const DenseRows b{images + n * image_stride, 1, width};
                       if (l.crop) {
                         float* wide = scratch.wide + n * w.rows * l.wide_padded;
                         csr_spmm(taps, b, {wide, l.wide_padded, 1, l.wide}, ep, o0, o1);
                         crop_wide_output(s, l, wide, y + n * out_image, o0, o1);
                       } else {
                         csr_spmm(taps, b, {y + n * out_image, l.wide, 1, l.wide}, ep, o0, o1);
                       }
                     });
}

template void csr_conv2d<float>(const Conv2dShape&, const PackedConvLayout&, const CsrView<float>&,
                                const float*, float*, Epilogue, const ConvScratch&, const ParallelFor&);
template void csr_conv2d<half_t>(const Conv2dShape&, const PackedConvLayout&, const CsrView<half_t>&,
                                 const float*, float*, Epilogue, const ConvScratch&, const ParallelFor&);
template void csr_conv2d<bfloat16_t>(const Conv2dShape&, const PackedConvLayout&,
                                     const CsrView<bfloat16_t>&, const float*, float*, Epilogue,
                                     const ConvScratch&, const ParallelFor&);

}  // namespace sparse_rt::cpu
