// Sparse 2-D convolution as one tiled CSR SpMM (csr_spmm.h) over a packed copy of the input.
//
// The input image is copied zero-padded and split into its stride phases: phase (a, b) holds the
// padded pixels (a + s_h*i, b + s_w*j). In phase coordinates every tap of a strided, dilated kernel
// reads with stride 1, so the output row oy, column ox of tap (ky, kx) reads phase element
// (oy + ky*d_h / s_h, ox + kx*d_w / s_w). Only the phases some tap reads are stored (a 1x1 stride-2
// convolution keeps one of four). Outputs are computed "wide" - each output row as long as a phase
// row (Ws) - so that output position q = oy*Ws + ox maps to packed input position q + offset with
// one offset per nonzero, and the SpMM runs over contiguous rows. The extra columns (ox >= OW) are
// cropped away.
#pragma once

#include <cstdint>
#include <vector>

#include "sparse_matrix.h"

namespace sparse_rt::cpu {

struct Conv2dGeometry {
  int64_t in_channels, height, width;
  int64_t out_channels, out_h, out_w;
  int64_t kh, kw;
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w;
  int64_t dil_h, dil_w;
  int64_t groups;
};

struct PackedConvLayout {
  int64_t phase_h, phase_w;  // size of one stride phase of the padded image (Hs, Ws)
  int64_t plane;             // phase_h * phase_w
  // Slot of each phase row a < s_h (column b < s_w) among the stored ones, -1 where no tap reads it.
  std::vector<int32_t> row_slot, col_slot;
  int64_t stored_cols;       // phase columns stored; phase (a, b) is stored at row_slot[a] * stored_cols + col_slot[b]
  int64_t phases;            // stored phases per channel
  int64_t wide;              // out_h * phase_w: output positions computed per channel
  int64_t wide_padded;       // wide rounded up to a multiple of 8 (the SpMM's vector width)
  int64_t packed_len;        // floats in a packed image, including the zero tail the SpMM may read
};

PackedConvLayout packed_conv_layout(const Conv2dGeometry& g);

// A 1x1, stride-1, unpadded convolution reads the image as it is: packing would only copy it.
inline bool conv_reads_input_directly(const Conv2dGeometry& g) {
  return g.kh == 1 && g.kw == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 && g.pad_w == 0;
}

// Packs channels [c_begin, c_end) of one image ([in_channels, height, width]) into `packed`
// (layout.packed_len floats); disjoint channel ranges may be packed concurrently. The range that
// ends at the last channel also zeroes the tail.
void pack_conv_input(const Conv2dGeometry& g, const PackedConvLayout& layout, const float* in,
                     float* packed, int64_t c_begin, int64_t c_end);

// The packed position read at output position 0 by each weight column (c*kh + ky)*kw + kx, c local
// to a group, relative to the group's first channel.
std::vector<int32_t> conv_column_offsets(const Conv2dGeometry& g, const PackedConvLayout& layout);

// offsets[k] = packed position read by nonzero k at output position 0, for the nonzeros of rows
// [row_begin, row_end). The CSR is over [out_channels, in_channels/groups * kh * kw].
void conv_tap_offsets(const int32_t* crow, const int32_t* col, const Conv2dGeometry& g,
                      const PackedConvLayout& layout, const std::vector<int32_t>& column_offsets,
                      int32_t* offsets, int64_t row_begin, int64_t row_end);

// out[o, oy, ox] = wide[o, oy*phase_w + ox] for channels [o_begin, o_end).
void crop_wide_output(const Conv2dGeometry& g, const PackedConvLayout& layout, const float* wide,
                      float* out, int64_t o_begin, int64_t o_end);

}  // namespace sparse_rt::cpu
