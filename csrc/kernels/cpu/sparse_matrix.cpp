#include "sparse_matrix.h"

#include <algorithm>

namespace sparse_rt::cpu {

int64_t balanced_row_start(const int32_t* crow, int64_t rows, int64_t part, int64_t parts) {
  if (part <= 0) return 0;
  if (part >= parts) return rows;
  const int64_t target = int64_t(crow[rows]) * part / parts;
  // First row whose start offset reaches the target share of nonzeros.
  return std::lower_bound(crow, crow + rows, target) - crow;
}

}  // namespace sparse_rt::cpu
