// How the torch-free kernels run on several threads without owning a thread pool: the caller passes
// its parallel-for (at::parallel_for in the binding, a serial loop over chunks in the C++ tests),
// so the code that splits the work is the same in both.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>

#include "sparse_matrix.h"

namespace sparse_rt::cpu {

// A non-owning reference to a callable void(int64_t begin, int64_t end): unlike std::function it
// never allocates, so handing a body to the caller's parallel-for costs one indirect call per chunk.
class RangeFn {
 public:
  template <typename F>
  RangeFn(const F& f)  // NOLINT(google-explicit-constructor): lambdas convert implicitly
      : object_(&f), call_([](const void* o, int64_t b, int64_t e) { (*static_cast<const F*>(o))(b, e); }) {}
  void operator()(int64_t begin, int64_t end) const { call_(object_, begin, end); }

 private:
  const void* object_;
  void (*call_)(const void*, int64_t, int64_t);
};

struct ParallelFor {
  // Calls body over disjoint chunks covering [begin, end), each at least `grain` long where the
  // range allows, possibly concurrently; returns when all are done.
  void (*run)(int64_t begin, int64_t end, int64_t grain, RangeFn body);
  int64_t num_threads;  // the parallelism `run` offers, for splitting work into that many parts
};

// Below this many multiply-adds a single thread beats the cost of waking the pool.
constexpr int64_t kMinParallelWork = 1 << 13;

// Runs body(set, row_begin, row_end) over `sets` CSR matrices in one parallel region, the rows of
// set i (crow_of(i), rows_of(i) of them, at most max_rows) split into nnz-balanced parts.
template <typename CrowOf, typename RowsOf, typename F>
void parallel_over_row_sets(const ParallelFor& pf, int64_t sets, int64_t max_rows, int64_t work,
                            const CrowOf& crow_of, const RowsOf& rows_of, const F& body) {
  const int64_t parts =
      work < kMinParallelWork ? 1 : std::max<int64_t>(1, std::min<int64_t>(max_rows, pf.num_threads));
  pf.run(0, sets * parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t set = u / parts, part = u % parts;
      body(set, balanced_row_start(crow_of(set), rows_of(set), part, parts),
           balanced_row_start(crow_of(set), rows_of(set), part + 1, parts));
    }
  });
}

// Runs body(outer, row_begin, row_end) over outer x (rows split into nnz-balanced parts).
template <typename F>
void parallel_over_rows(const ParallelFor& pf, const int32_t* crow, int64_t rows, int64_t outer,
                        int64_t work, const F& body) {
  parallel_over_row_sets(
      pf, outer, rows, work, [&](int64_t) { return crow; }, [&](int64_t) { return rows; }, body);
}

constexpr int64_t kNoViolation = std::numeric_limits<int64_t>::max();

// The lowest i in [0, n) with bad(i), or kNoViolation; chunks of `grain` run on pf's threads and a
// chunk stops at its first violation. chunk_is_clean(begin, end), when it returns true, clears a
// whole chunk without looking at each element.
template <typename Bad, typename Clean>
int64_t first_violation(int64_t n, int64_t grain, const ParallelFor& pf, const Bad& bad, const Clean& chunk_is_clean) {
  std::atomic<int64_t> first{kNoViolation};
  pf.run(0, n, grain, [&](int64_t begin, int64_t end) {
    if (chunk_is_clean(begin, end)) return;
    for (int64_t i = begin; i < end && i < first.load(std::memory_order_relaxed); ++i) {
      if (bad(i)) {
        int64_t seen = first.load();
        while (i < seen && !first.compare_exchange_weak(seen, i)) {
        }
        return;
      }
    }
  });
  return first.load();
}

template <typename Bad>
int64_t first_violation(int64_t n, int64_t grain, const ParallelFor& pf, const Bad& bad) {
  return first_violation(n, grain, pf, bad, [](int64_t, int64_t) { return false; });
}

}  // namespace sparse_rt::cpu
