#include "core_round_trip.h"

#include <atomic>
#include <chrono>
#include <thread>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

namespace sparse_rt {
namespace {

bool pin_to(int cpu) {
#if defined(__linux__)
  if (cpu < 0 || cpu >= CPU_SETSIZE) return false;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
#else
  (void)cpu;
  return false;
#endif
}

}  // namespace

double core_round_trip_ns(int cpu_a, int cpu_b, int64_t rounds) {
  if (rounds <= 0) return -1;
  // The line both threads spin on, alone in its cache line. The counter goes up by one per pass:
  // odd when thread a has passed it, even when b has passed it back. -1 tells both to stop (a
  // thread that could not be pinned, or a done at its budget).
  alignas(64) std::atomic<int64_t> line{0};
  std::atomic<int> pinned{0};
  double elapsed_ns = -1;  // per round
  std::thread b([&] {
    if (!pin_to(cpu_b)) {
      line.store(-1);
      return;
    }
    pinned.fetch_add(1);
    for (int64_t i = 0; i < rounds; ++i) {
      int64_t seen;
      while ((seen = line.load(std::memory_order_acquire)) != 2 * i + 1) {
        if (seen < 0) return;
      }
      line.store(2 * i + 2, std::memory_order_release);
    }
  });
  std::thread a([&] {
    const bool ok = pin_to(cpu_a);
    pinned.fetch_add(ok ? 1 : 0);
    // Both pinned (or one failed) before the clock starts.
    while (ok && pinned.load() < 2 && line.load() >= 0) {
    }
    if (!ok || line.load() < 0) {
      line.store(-1);
      return;
    }
    // At most kBudget however slow the exchanges (a CPU shared with a busy thread): the mean over
    // the rounds done by then.
    constexpr auto kBudget = std::chrono::milliseconds(100);
    const auto start = std::chrono::steady_clock::now();
    int64_t done = 0;
    while (done < rounds) {
      line.store(2 * done + 1, std::memory_order_release);
      while (line.load(std::memory_order_acquire) != 2 * done + 2) {
      }
      ++done;
      if (done % 16 == 0 && std::chrono::steady_clock::now() - start > kBudget) break;
    }
    elapsed_ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count() /
                 double(done);
    line.store(-1);
  });
  a.join();
  b.join();
  return elapsed_ns;
}

}  // namespace sparse_rt
