#include "checks.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

namespace sparse_rt {
namespace {

bool is_supported_value_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

void check_index_tensor(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kInt, "sparse_rt.", op, ": ", name, " must be int32, got ",
              t.scalar_type(), " (convert with .int())");
  TORCH_CHECK(t.dim() == 1, "sparse_rt.", op, ": ", name, " must be 1-D, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "sparse_rt.", op, ": ", name, " must be contiguous");
}

}  // namespace

SparseWeightInfo check_sparse_weight(const char* op, const at::Tensor& crow, const at::Tensor& col,
                                     const at::Tensor& values, int64_t value_rank) {
  check_index_tensor(op, "crow_indices", crow);
  check_index_tensor(op, "col_indices", col);
  TORCH_CHECK(crow.numel() >= 1, "sparse_rt.", op,
              ": crow_indices must have rows + 1 >= 1 entries, got an empty tensor");
  TORCH_CHECK(is_supported_value_type(values.scalar_type()), "sparse_rt.", op,
              ": values must be float32, float16 or bfloat16, got ", values.scalar_type());
  TORCH_CHECK(values.dim() == value_rank, "sparse_rt.", op, ": values must be ", value_rank,
              "-D, got shape ", values.sizes());
  TORCH_CHECK(values.is_contiguous(), "sparse_rt.", op, ": values must be contiguous");
  TORCH_CHECK(values.size(0) == col.numel(), "sparse_rt.", op, ": values holds ", values.size(0),
              " entries but col_indices holds ", col.numel());
  TORCH_CHECK(crow.device() == values.device() && col.device() == values.device(), "sparse_rt.", op,
              ": crow_indices (", crow.device(), "), col_indices (", col.device(),
              ") and values (", values.device(), ") must be on one device");
  TORCH_CHECK(col.numel() <= std::numeric_limits<int32_t>::max(), "sparse_rt.", op, ": ",
              col.numel(), " stored entries exceed the int32 index range");
  const int64_t bh = value_rank == 3 ? values.size(1) : 1;
  const int64_t bw = value_rank == 3 ? values.size(2) : 1;
  // Below 2^31, (rows + 1) * bh cannot overflow int64.
  TORCH_CHECK(bh > 0 && bw > 0 && bh <= std::numeric_limits<int32_t>::max() &&
                  bw <= std::numeric_limits<int32_t>::max(),
              "sparse_rt.", op, ": block shape must be positive (and below 2^31), got ", bh, "x", bw);
  return {(crow.numel() - 1) * bh, col.numel(), bh, bw};
}

namespace {

bool env_flag(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && std::strcmp(value, "1") == 0;
}

std::atomic<bool> full_index_checks{env_flag("SPARSE_RT_CHECK_INDICES")};
thread_local int thread_full_index_checks = -1;

}  // namespace

bool full_index_checks_enabled() {
  return thread_full_index_checks >= 0 ? thread_full_index_checks == 1
                                       : full_index_checks.load(std::memory_order_relaxed);
}

void set_full_index_checks(bool enabled) { full_index_checks.store(enabled); }

int set_thread_full_index_checks(int state) {
  TORCH_CHECK(state >= -1 && state <= 1, "sparse_rt: thread full-index-check state must be -1, 0 or 1");
  const int previous = thread_full_index_checks;
  thread_full_index_checks = state;
  return previous;
}

void check_sparse_indices(const char* op, const at::Tensor& crow, const at::Tensor& col,
                          int64_t cols) {
  TORCH_CHECK(crow.is_cpu() && col.is_cpu(), "sparse_rt.", op,
              ": check_sparse_indices expects CPU tensors");
  const int32_t* c = crow.data_ptr<int32_t>();
  const int32_t* k = col.data_ptr<int32_t>();
  const int64_t rows = crow.numel() - 1, nnz = col.numel();
  TORCH_CHECK(c[0] == 0, "sparse_rt.", op, ": crow_indices[0] must be 0, got ", c[0]);
  TORCH_CHECK(c[rows] == nnz, "sparse_rt.", op, ": crow_indices[-1] must equal the number of ",
              "stored entries (", nnz, "), got ", c[rows]);
  // Each chunk records its first violation; the lowest one is reported.
  const int64_t none = std::numeric_limits<int64_t>::max();
  std::vector<int64_t> first_bad_row(at::get_num_threads(), none);
  at::parallel_for(0, rows, 1 << 14, [&](int64_t begin, int64_t end) {
    auto& slot = first_bad_row[at::get_thread_num()];
    for (int64_t r = begin; r < end; ++r) {
      if (c[r] > c[r + 1]) {
        slot = std::min(slot, r);
        return;
      }
    }
  });
  const int64_t bad_row = *std::min_element(first_bad_row.begin(), first_bad_row.end());
  TORCH_CHECK(bad_row == none, "sparse_rt.", op, ": crow_indices must be non-decreasing, but ",
              "crow_indices[", bad_row, "]=", c[bad_row], " > crow_indices[", bad_row + 1,
              "]=", c[bad_row + 1]);
  if (!full_index_checks_enabled()) return;
  std::vector<int64_t> first_bad_col(at::get_num_threads(), none);
  at::parallel_for(0, nnz, 1 << 16, [&](int64_t begin, int64_t end) {
    // The largest index read as unsigned (negatives become huge) decides the whole chunk with one
    // vectorized max; the culprit is located only on failure.
    uint32_t largest = 0;
    for (int64_t i = begin; i < end; ++i) largest = std::max(largest, uint32_t(k[i]));
    if (uint64_t(largest) < uint64_t(cols)) return;
    auto& slot = first_bad_col[at::get_thread_num()];
    for (int64_t i = begin; i < end; ++i) {
      if (uint64_t(uint32_t(k[i])) >= uint64_t(cols)) {
        slot = std::min(slot, i);
        return;
      }
    }
  });
  const int64_t bad_col = *std::min_element(first_bad_col.begin(), first_bad_col.end());
  TORCH_CHECK(bad_col == none, "sparse_rt.", op, ": col_indices[", bad_col, "]=", k[bad_col],
              " is out of range [0, ", cols, ")");
}

void check_activation(const char* op, const at::Tensor& input, const at::Tensor& values) {
  TORCH_CHECK(input.device() == values.device(), "sparse_rt.", op, ": input is on ",
              input.device(), " but the weight is on ", values.device());
  TORCH_CHECK(input.scalar_type() == values.scalar_type(), "sparse_rt.", op, ": input dtype ",
              input.scalar_type(), " does not match the weight values dtype ",
              values.scalar_type());
}

void check_bias(const char* op, const c10::optional<at::Tensor>& bias, const at::Tensor& values,
                int64_t rows) {
  if (!bias.has_value()) return;
  const at::Tensor& b = *bias;
  TORCH_CHECK(b.dim() == 1 && b.size(0) == rows, "sparse_rt.", op, ": bias must have shape [",
              rows, "], got ", b.sizes());
  TORCH_CHECK(b.scalar_type() == values.scalar_type(), "sparse_rt.", op, ": bias dtype ",
              b.scalar_type(), " does not match the weight values dtype ", values.scalar_type());
  TORCH_CHECK(b.device() == values.device(), "sparse_rt.", op, ": bias is on ", b.device(),
              " but the weight is on ", values.device());
}

ConvGeometry check_conv_geometry(const at::Tensor& input, int64_t in_channels, int64_t out_channels,
                                 at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const char* op = "csr_conv2d";
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 &&
                  dilation.size() == 2,
              "sparse_rt.", op, ": kernel_size, stride, padding and dilation must have 2 entries");
  TORCH_CHECK(input.dim() == 4, "sparse_rt.", op, ": input must be 4-D [N, C, H, W], got shape ",
              input.sizes());
  TORCH_CHECK(in_channels >= 1, "sparse_rt.", op, ": in_channels must be >= 1, got ", in_channels);
  TORCH_CHECK(input.size(1) == in_channels, "sparse_rt.", op, ": input has ", input.size(1),
              " channels (shape ", input.sizes(), ") but the layer expects ", in_channels);
  TORCH_CHECK(groups >= 1 && in_channels % groups == 0 && out_channels % groups == 0,
              "sparse_rt.", op, ": groups=", groups, " must divide in_channels=", in_channels,
              " and out_channels=", out_channels);
  // The bound keeps every product and sum below int64 overflow.
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(kernel_size[i] >= 1 && stride[i] >= 1 && dilation[i] >= 1 && padding[i] >= 0 &&
                    kernel_size[i] <= kMax && stride[i] <= kMax && dilation[i] <= kMax &&
                    padding[i] <= kMax,
                "sparse_rt.", op, ": need kernel_size, stride, dilation >= 1 and padding >= 0 ",
                "(each below 2^31), got kernel_size=", kernel_size, " stride=", stride,
                " padding=", padding, " dilation=", dilation);
  }
  int64_t weight_cols = 0;
  TORCH_CHECK(!c10::mul_overflows<int64_t>(in_channels / groups, kernel_size[0] * kernel_size[1],
                                            &weight_cols),
              "sparse_rt.", op, ": in_channels/groups*kh*kw overflows int64");
  ConvGeometry g{0, 0, weight_cols};
  for (int i = 0; i < 2; ++i) {
    const int64_t span = input.size(2 + i) + 2 * padding[i] - dilation[i] * (kernel_size[i] - 1);
    TORCH_CHECK(span >= 1, "sparse_rt.", op, ": input ", input.sizes(),
                " is smaller than the dilated kernel after padding");
    (i == 0 ? g.out_h : g.out_w) = (span - 1) / stride[i] + 1;
  }
  return g;
}

}  // namespace sparse_rt
