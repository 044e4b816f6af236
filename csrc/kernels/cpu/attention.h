// Scaled dot-product attention on fp32 CPU tensors, without mask or dropout:
//
//   out[b, h, i, :] = sum_j softmax_j(scale * q[b, h, i, :] . k[b, h, j, :]) v[b, h, j, :]
//
// the dense remainder of a sparse transformer layer (BERT-base at 95% sparsity spent a quarter of
// its CPU time in PyTorch's flash attention). Each (batch, head) is one unit of work: its keys are
// scaled and transposed into a thread-local buffer padded to whole vectors, its values read in place
// (copied and padded where a head's rows are not whole vectors), then the queries are taken
// kQueryBlock at a time: their scores against all keys are computed in
// registers, the softmax is taken over each whole row at once (no running rescaling: a row of
// scores is small), and the probabilities times the values give the output rows, divided by the
// row's sum on the way out. The sums are in fp32 in a different order from PyTorch's, so outputs
// agree with F.scaled_dot_product_attention to rounding, not bit for bit.
#pragma once

#include <cstdint>

#include "parallel.h"

namespace sparse_rt::cpu {

// A [batch, heads, tokens, head_dim] operand: element (b, h, t, d) at
// data[b * batch_stride + h * head_stride + t * token_stride + d] (head_dim contiguous).
template <typename T>
struct HeadsView {
  T* data;
  int64_t batch_stride, head_stride, token_stride;
  T* row(int64_t b, int64_t h, int64_t t) const {
    return data + b * batch_stride + h * head_stride + t * token_stride;
  }
};

struct AttentionShape {
  int64_t batch, heads, queries, keys, head_dim;
};

constexpr int64_t kQueryBlock = 8;

// keys >= 1 (a softmax over no keys is undefined; the binding rejects it).
void scaled_dot_product_attention(const AttentionShape& shape, HeadsView<const float> q,
                                  HeadsView<const float> k, HeadsView<const float> v, float scale,
                                  HeadsView<float> out, const ParallelFor& pf);

}  // namespace sparse_rt::cpu
