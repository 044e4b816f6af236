// The entries [start, end) of one row of a CSR (or block row of a BSR) weight, as the CUDA kernels
// read them. crow_indices reaches a CUDA kernel unchecked: checking it on the host would copy it
// back and synchronize, which CUDA graph capture forbids. So every kernel checks the pointers of
// the row it reads, in O(1): a row is well-formed when crow[0] == 0, crow[rows] == nnz and
// 0 <= crow[r] <= crow[r + 1] <= nnz. Over all rows that is exactly the CPU op's row-pointer check,
// so a crow the CPU op refuses leaves at least one row malformed. A malformed row reads no entry
// (no crow makes a kernel read past col_indices or values) and its outputs are NaN, which the bias
// and ReLU epilogue keeps, so the fault shows in the output of the very call (graph replays
// included) instead of as plausible numbers.
// CUDA-free and torch-free, so the C++ kernel tests check it on the host.
#pragma once

#include <cstdint>
#include <limits>

#include "../host_device.h"

namespace sparse_rt {

struct RowExtent {
  int64_t start;  // within [0, nnz], and start <= end, whatever crow holds
  int64_t end;
  bool valid;     // false: the row's pointers are malformed and [start, end) is empty
};

// `crow` has rows + 1 entries (the op's argument checks guarantee it), `row` is in [0, rows).
SPARSE_RT_HOST_DEVICE inline RowExtent row_extent(const int32_t* crow, int64_t rows, int64_t row,
                                                  int64_t nnz) {
  const int64_t start = crow[row];
  const int64_t end = crow[row + 1];
  const bool valid = crow[0] == 0 && crow[rows] == nnz && 0 <= start && start <= end && end <= nnz;
  return valid ? RowExtent{start, end, true} : RowExtent{0, 0, false};
}

// What a row's sums start from: 0, or NaN for a malformed row.
SPARSE_RT_HOST_DEVICE inline float row_sum_init(const RowExtent& extent) {
  return extent.valid ? 0.f : std::numeric_limits<float>::quiet_NaN();
}

}  // namespace sparse_rt
