#include <torch/library.h>

#include "../../kernels/cpu/max_pool.h"
#include "../checks.h"
#include "cpu_common.h"

namespace sparse_rt {
namespace {

at::Tensor max_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding) {
  const PoolProblem p = prepare_max_pool2d(input, kernel_size, stride, padding);
  at::Tensor out = allocate("max_pool2d", "output", {p.batch, p.channels, p.out_h, p.out_w},
                            input.options().dtype(at::kFloat));
  if (out.numel() > 0) {
    const at::Tensor x = input.to(at::kFloat).contiguous(at::MemoryFormat::ChannelsLast);
    cpu::max_pool2d_nhwc_to_nchw({p.batch, p.channels, p.height, p.width, p.kernel_h, p.kernel_w, p.stride_h,
                                  p.stride_w, p.pad_h, p.pad_w, p.out_h, p.out_w},
                                 x.const_data_ptr<float>(), out.mutable_data_ptr<float>(), torch_parallel_for());
  }
  return out.to(input.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(sparse_rt, CPU, m) { m.impl("max_pool2d", &max_pool2d_cpu); }

}  // namespace sparse_rt
