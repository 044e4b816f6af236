// Validation of CSR / BSR index arrays before any kernel reads them. Torch-free, so that every
// binding (torch's ops, onnxruntime's) runs the same checks and reports them in the same words.
#pragma once

#include <cstdint>
#include <string>

#include "parallel.h"

namespace sparse_rt::cpu {

// Why crow [rows + 1] and col [nnz] do not index a matrix of `cols` columns ("" when they do):
// crow must start at 0, end at nnz and never decrease; with check_columns every column must lie in
// [0, cols) too (O(nnz): bindings that validated a weight once may skip it). The first violation
// in index order is reported.
std::string find_index_error(const int32_t* crow, int64_t rows, const int32_t* col, int64_t nnz,
                             int64_t cols, bool check_columns, const ParallelFor& pf);

}  // namespace sparse_rt::cpu
