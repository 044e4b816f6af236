// Cache sizes as the C library (L1, L2: per core) and Linux (L3: shared) report them, for the
// kernels' blocking.
#pragma once

#include <cstdint>
#include <fstream>
#include <limits>
#include <string>

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

// The L3 that the first CPU shares, as Linux's sysfs describes it (glibc's sysconf reports the whole
// package's on AMD: 320 MiB on a Zen 4 whose cores share 32 MiB), or unbounded when it does not
// (no streaming stores then).
inline int64_t l3_cache_bytes() {
  static const int64_t bytes = [] {
    for (int index = 0; index < 8; ++index) {
      const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
      std::ifstream level(dir + "level"), size(dir + "size");
      int level_number = 0;
      int64_t kib = 0;
      std::string unit;
      if (level >> level_number && level_number == 3 && size >> kib >> unit && kib > 0 && unit == "K") {
        return kib << 10;
      }
    }
    return std::numeric_limits<int64_t>::max();
  }();
  return bytes;
}

}  // namespace sparse_rt::cpu
