// How far apart two CPUs are, as a benchmark sees it: the time a cache line written on one takes to
// reach the other and come back. Hosts that lend vCPUs may place two of them on one core complex at
// one time and far apart at another (this project's Zen 4 host: 60-80 ns near, 330-380 ns far), and
// a multi-threaded kernel that reads what another core wrote runs slower in the far placement; the
// result files record it beside the load (sparse_rt.machine.core_round_trip_ns).
#pragma once

#include <cstdint>

namespace sparse_rt {

// The mean round trip in nanoseconds over `rounds` exchanges (fewer where they take more than 100 ms)
// between a thread pinned to `cpu_a` and one pinned to `cpu_b`, or a negative value where the threads
// cannot be pinned (not Linux, or a CPU this process may not run on).
double core_round_trip_ns(int cpu_a, int cpu_b, int64_t rounds);

}  // namespace sparse_rt
