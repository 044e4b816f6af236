// Direct sparse 2-D convolution: every nonzero w[o, c, ky, kx] adds w * (input channel c, shifted by
// (ky, kx) and strided) to output plane o. No im2col buffer; for stride 1 the inner loop is a
// contiguous axpy over an output row. The weight is CSR over [out_channels, in_channels/groups*kh*kw]
// with column (c_local*kh + ky)*kw + kx, i.e. the row-major flattening of the dense weight.
#pragma once

#include <cstdint>

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

// One image: in is fp32 [in_channels, height, width], out is fp32 [out_channels, out_h, out_w].
// Writes output channels [o_begin, o_end).
template <typename V>
void csr_conv2d(const CsrView<V>& w, const Conv2dGeometry& g, const float* in, float* out,
                Epilogue ep, int64_t o_begin, int64_t o_end);

}  // namespace sparse_rt::cpu
