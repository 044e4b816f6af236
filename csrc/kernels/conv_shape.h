// The geometry of one 2-D convolution, shared by the argument checks, the CPU and CUDA kernels and
// their bindings. PyTorch conv2d semantics: NCHW, zero padding, dilation, groups; the weight is a
// CSR matrix over [out_channels, in_channels / groups * kh * kw] with column
// (c_local * kh + ky) * kw + kx. Torch-free and CUDA-free, so every layer can include it.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace sparse_rt {

struct Conv2dShape {
  int64_t batch, in_channels, height, width;  // input
  int64_t out_channels, out_h, out_w;         // output
  int64_t kh, kw;
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w;
  int64_t dil_h, dil_w;
  int64_t groups;
};

// Output length of one axis; 0 when the dilated kernel does not fit in the padded input (the
// span test keeps the integer division away from negative numerators).
SPARSE_RT_HOST_DEVICE inline int64_t conv_output_size(int64_t size, int64_t kernel, int64_t stride,
                                                      int64_t pad, int64_t dilation) {
  const int64_t span = size + 2 * pad - dilation * (kernel - 1);
  return span >= 1 ? (span - 1) / stride + 1 : 0;
}

// Fills out_h and out_w from the rest of the shape.
SPARSE_RT_HOST_DEVICE inline Conv2dShape with_output_size(Conv2dShape s) {
  s.out_h = conv_output_size(s.height, s.kh, s.stride_h, s.pad_h, s.dil_h);
  s.out_w = conv_output_size(s.width, s.kw, s.stride_w, s.pad_w, s.dil_w);
  return s;
}

}  // namespace sparse_rt
