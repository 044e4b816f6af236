// Argument checks shared by every backend's binding. Each check names the op, the tensor and the
// problem, so a user who calls an op directly with a malformed weight gets a clear error instead of
// an out-of-bounds access inside a kernel.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace sparse_rt {

// The sizes implied by a CSR (or BSR) weight once its tensors have passed the structural checks.
struct SparseWeightInfo {
  int64_t rows;      // output features / channels (for BSR: block rows * block height)
  int64_t nnz;       // stored entries (for BSR: stored blocks)
  int64_t block_h;   // 1 for CSR
  int64_t block_w;   // 1 for CSR
};

// Structural checks on (crow, col, values) that cost O(1): ranks, dtypes, devices, contiguity and
// the agreement of their lengths. `value_rank` is 1 for CSR and 3 for BSR ([nblocks, bh, bw]).
SparseWeightInfo check_sparse_weight(const char* op, const at::Tensor& crow, const at::Tensor& col,
                                     const at::Tensor& values, int64_t value_rank);

// Whether direct op calls validate every column index (O(nnz)). Off by default: sparse_rt's
// modules validate their weights in Python when built or loaded, so the hot path pays only for the
// O(rows) row-pointer check. Opt in process-wide with SPARSE_RT_CHECK_INDICES=1 or
// sparse_rt.ops.set_full_index_checks(True); a thread's own setting (-1: follow the process-wide
// one, 0: off, 1: on), used by sparse_rt.ops.full_index_checks(), overrides it for that thread so
// that concurrent callers cannot turn each other's checks off.
bool full_index_checks_enabled();
void set_full_index_checks(bool enabled);
int set_thread_full_index_checks(int state);  // returns the thread's previous state

// Index validation of CPU tensors before a kernel reads them: crow starts at 0, is non-decreasing
// and ends at nnz (always); every column index lies in [0, cols) (when full checks are enabled).
void check_sparse_indices(const char* op, const at::Tensor& crow, const at::Tensor& col, int64_t cols);

// The activation must share the weight's device and floating dtype.
void check_activation(const char* op, const at::Tensor& input, const at::Tensor& values);

// Bias, when given: 1-D, `rows` long, same dtype and device as the values.
void check_bias(const char* op, const c10::optional<at::Tensor>& bias, const at::Tensor& values,
                int64_t rows);

struct ConvGeometry {
  int64_t out_h, out_w;
  int64_t weight_cols;  // in_channels / groups * kh * kw: the columns of the CSR weight
};

// Convolution geometry, checked before any of it is used: two entries per list, positive
// kernel/stride/dilation and non-negative padding (each below 2^31), groups dividing both channel
// counts, no overflow, a non-empty output.
ConvGeometry check_conv_geometry(const at::Tensor& input, int64_t in_channels, int64_t out_channels,
                                 at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

}  // namespace sparse_rt
