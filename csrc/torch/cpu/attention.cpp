#include <ATen/ops/_softmax.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <torch/library.h>

#include "../../kernels/cpu/attention.h"
#include "../../kernels/cpu/isa.h"
#include "../checks.h"
#include "cpu_common.h"

namespace sparse_rt {
namespace {

// fp32 with head_dim contiguous, the kernel's operand; 16-bit inputs are widened once.
at::Tensor as_fp32_rows(const at::Tensor& t) {
  const at::Tensor f = t.to(at::kFloat);
  return f.stride(3) == 1 ? f : f.contiguous();
}

// Without AVX2, up to this many keys the written-out form (one batched matmul for the scores,
// softmax in place, one for the output) beats PyTorch's flash kernel; beyond it flash wins (measured
// on a Zen 3 with 2 threads, 12 heads of 64: 1.30x / 1.44x faster at 64 / 128 keys, level at 256,
// 0.49x at 1024).
constexpr int64_t kWrittenOutMaxKeys = 128;

// With AVX2 but not AVX-512, up to this many keys the kernel beats PyTorch's flash kernel (Zen 3,
// 2 threads, 12 heads of 64: 1.3x at 128 keys, 1.03x at 512, 0.77x at 1024): its whole rows of
// scores and the head's keys and values outgrow L2 beyond that.
constexpr int64_t kAvx2KernelMaxKeys = 512;

// softmax(scale * q k^T) v for fp32 [batch, heads, n, d] tensors, as [batch, heads, queries, d].
at::Tensor written_out_attention(const AttentionProblem& p, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v, double scale) {
  const int64_t heads = p.batch * p.heads;
  // beta = 0: the uninitialized scores are not read.
  at::Tensor scores = at::empty({heads, p.queries, p.keys}, q.options());
  scores.baddbmm_(q.reshape({heads, p.queries, p.head_dim}), k.reshape({heads, p.keys, p.head_dim}).transpose(1, 2),
                  0.0, scale);
  at::_softmax_out(scores, scores, -1, false);
  return at::bmm(scores, v.reshape({heads, p.keys, p.head_dim})).view({p.batch, p.heads, p.queries, p.head_dim});
}

template <typename T>
cpu::HeadsView<T> heads_view(T* data, const at::Tensor& t) {
  return {data, t.stride(0), t.stride(1), t.stride(2)};
}

at::Tensor scaled_dot_product_attention_cpu(const at::Tensor& query, const at::Tensor& key,
                                             const at::Tensor& value, double scale) {
  const AttentionProblem p = prepare_attention(query, key, value);
  // [batch, queries, heads, head_dim] in memory, returned as its [batch, heads, queries, head_dim] view.
  const char* op = "scaled_dot_product_attention";
  at::Tensor out = allocate(op, "output", {p.batch, p.queries, p.heads, p.head_dim}, query.options().dtype(at::kFloat))
                       .transpose(1, 2);
  if (out.numel() > 0) {
    const at::Tensor q = as_fp32_rows(query), k = as_fp32_rows(key), v = as_fp32_rows(value);
    const cpu::Isa isa = cpu::cpu_isa();
    if (isa == cpu::Isa::kBaseline || (isa == cpu::Isa::kX86_64_V3 && p.keys > kAvx2KernelMaxKeys)) {
      out.copy_(isa == cpu::Isa::kBaseline && p.keys <= kWrittenOutMaxKeys
                    ? written_out_attention(p, q, k, v, scale)
                    : at::scaled_dot_product_attention(q, k, v, {}, 0.0, false, scale));
      return out.to(query.scalar_type());
    }
    cpu::scaled_dot_product_attention(
        {p.batch, p.heads, p.queries, p.keys, p.head_dim}, heads_view(q.const_data_ptr<float>(), q),
        heads_view(k.const_data_ptr<float>(), k), heads_view(v.const_data_ptr<float>(), v),
        static_cast<float>(scale), heads_view(out.mutable_data_ptr<float>(), out), torch_parallel_for());
  }
  return out.to(query.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_rt, CPU, m) {
  m.impl("scaled_dot_product_attention", &scaled_dot_product_attention_cpu);
}

}  // namespace sparse_rt
