// CUDA implementation of sparse_rt::scaled_dot_product_attention (schema in
// csrc/torch/registration.cpp): PyTorch's own fused attention kernels, its output written into the
// op's layout ([batch, queries, heads, head_dim] in memory), so that both devices return the same strides.
#include <ATen/ops/scaled_dot_product_attention.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"

namespace sparse_rt {
namespace {

at::Tensor scaled_dot_product_attention_cuda(const at::Tensor& query, const at::Tensor& key,
                                              const at::Tensor& value, double scale) {
  const AttentionProblem p = prepare_attention(query, key, value);
  const c10::cuda::CUDAGuard guard(query.device());
  const char* op = "scaled_dot_product_attention";
  at::Tensor out = allocate(op, "output", {p.batch, p.queries, p.heads, p.head_dim}, query.options()).transpose(1, 2);
  if (out.numel() > 0) out.copy_(at::scaled_dot_product_attention(query, key, value, {}, 0.0, false, scale));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_rt, CUDA, m) {
  m.impl("scaled_dot_product_attention", &scaled_dot_product_attention_cuda);
}

}  // namespace sparse_rt
