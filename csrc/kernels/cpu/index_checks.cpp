#include "index_checks.h"

#include <algorithm>

namespace sparse_rt::cpu {

std::string find_index_error(const int32_t* crow, int64_t rows, const int32_t* col, int64_t nnz,
                             int64_t cols, bool check_columns, const ParallelFor& pf) {
  if (crow[0] != 0) return "crow_indices[0] must be 0, got " + std::to_string(crow[0]);
  if (crow[rows] != nnz) {
    return "crow_indices[-1] must equal the number of stored entries (" + std::to_string(nnz) +
           "), got " + std::to_string(crow[rows]);
  }
  const int64_t bad_row = first_violation(rows, 1 << 14, pf, [&](int64_t r) { return crow[r] > crow[r + 1]; });
  if (bad_row != kNoViolation) {
    return "crow_indices must be non-decreasing, but crow_indices[" + std::to_string(bad_row) +
           "]=" + std::to_string(crow[bad_row]) + " > crow_indices[" + std::to_string(bad_row + 1) +
           "]=" + std::to_string(crow[bad_row + 1]);
  }
  if (!check_columns) return "";
  // Read as unsigned, a negative index is huge: one vectorized max clears a chunk, and the
  // culprit is looked for only where it fails.
  const auto out_of_range = [&](int64_t i) { return uint64_t(uint32_t(col[i])) >= uint64_t(cols); };
  const int64_t bad_col = first_violation(nnz, 1 << 16, pf, out_of_range, [&](int64_t begin, int64_t end) {
    uint32_t largest = 0;
    for (int64_t i = begin; i < end; ++i) largest = std::max(largest, uint32_t(col[i]));
    return uint64_t(largest) < uint64_t(cols);
  });
  if (bad_col != kNoViolation) {
    return "col_indices[" + std::to_string(bad_col) + "]=" + std::to_string(col[bad_col]) +
           " is out of range [0, " + std::to_string(cols) + ")";
  }
  return "";
}

}  // namespace sparse_rt::cpu
