// Max pooling of a channels-last image into an NCHW one, with no indices: a CNN's stem (ResNet's
// conv, ReLU, 3x3 stride-2 pool), whose dense convolution runs channels_last while the sparse
// convolutions after it read NCHW. PyTorch's CPU max pooling of a channels_last tensor also writes
// the argmax of every output (int64, twice the output's bytes), and the NCHW copy after it is another
// pass; here each window's maximum is taken over a vector of channels and the output is stored
// transposed, a vector of columns per channel.
#pragma once

#include <cstdint>

#include "parallel.h"

namespace sparse_rt::cpu {

struct PoolShape {
  int64_t batch, channels, height, width;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
  int64_t out_h, out_w;  // as max_pool2d computes them (floor mode); every window holds a pixel
};

// y [batch, channels, out_h, out_w] = the maximum of x [batch, height, width, channels] over each
// window (padding never wins; a NaN in a window is its maximum, as in torch.max_pool2d).
void max_pool2d_nhwc_to_nchw(const PoolShape& s, const float* x, float* y, const ParallelFor& pf);

}  // namespace sparse_rt::cpu
