// Kernels with contiguous inner loops are compiled for several x86-64 ISA levels and the best one
// for the running CPU is chosen when the library loads (function multiversioning), so one portable
// build still runs AVX-512 / AVX2 code. Gather-bound kernels don't use it: on the CPUs we measured,
// vector gathers were slower than scalar loads.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define SPARSE_RT_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SPARSE_RT_MULTIVERSION
#endif
