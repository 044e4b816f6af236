// Cache sizes per core as the C library reports them (sysconf), for the kernels' blocking.
#pragma once

#include <cstdint>
#include <limits>

#include <unistd.h>

namespace sparse_rt::cpu {

// sysconf(name), or `unknown` when the C library reports nothing.
inline int64_t cache_bytes(int name, int64_t unknown) {
  const long reported = sysconf(name);
  return reported > 0 ? int64_t(reported) : unknown;
}

inline int64_t l1_cache_bytes() {
#ifdef _SC_LEVEL1_DCACHE_SIZE
  static const int64_t bytes = cache_bytes(_SC_LEVEL1_DCACHE_SIZE, 32 << 10);
  return bytes;
#else
  return 32 << 10;
#endif
}

// Unknown counts as unbounded (no prefetching).
inline int64_t l2_cache_bytes() {
#ifdef _SC_LEVEL2_CACHE_SIZE
  static const int64_t bytes = cache_bytes(_SC_LEVEL2_CACHE_SIZE, std::numeric_limits<int64_t>::max());
  return bytes;
#else
  return std::numeric_limits<int64_t>::max();
#endif
}

}  // namespace sparse_rt::cpu
