// Instruction-set selection, one mechanism for every CPU kernel: the running CPU's x86-64 level is
// detected once (cpu_isa), and each kernel calls the version compiled for it. Function
// multiversioning cannot cover all kernels: target_clones only recompiles portable code (the
// gather kernel's AVX2 intrinsics do not compile in its baseline clone), and GCC rejects
// target-attribute overloads of function templates, which every kernel is (one per value type).
#pragma once

namespace sparse_rt::cpu {

enum class Isa { kBaseline, kX86_64_V3, kX86_64_V4 };  // v3: AVX2 + FMA + F16C; v4: AVX-512

inline Isa cpu_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return Isa::kX86_64_V4;
    if (__builtin_cpu_supports("x86-64-v3")) return Isa::kX86_64_V3;
    return Isa::kBaseline;
  }();
  return isa;
#else
  return Isa::kBaseline;
#endif
}

}  // namespace sparse_rt::cpu

#if defined(__x86_64__) && defined(__GNUC__)
#define SPARSE_RT_TARGET_X86_64_V3 __attribute__((target("arch=x86-64-v3")))
#define SPARSE_RT_TARGET_X86_64_V4 __attribute__((target("arch=x86-64-v4")))

// `return call;` with `call` compiled for the running CPU's level: `call` must reach its loops
// through [[gnu::always_inline]] functions only, so that each lambda below compiles them anew for
// its target (a vec16 is then one zmm register, two ymm or four xmm).
#define SPARSE_RT_DISPATCH_ISA(call)                                                 \
  switch (::sparse_rt::cpu::cpu_isa()) {                                             \
    case ::sparse_rt::cpu::Isa::kX86_64_V4:                                          \
      return [&]() SPARSE_RT_TARGET_X86_64_V4 { return call; }();                    \
    case ::sparse_rt::cpu::Isa::kX86_64_V3:                                          \
      return [&]() SPARSE_RT_TARGET_X86_64_V3 { return call; }();                    \
    default:                                                                         \
      return call;                                                                   \
  }
#else
#define SPARSE_RT_DISPATCH_ISA(call) return call;
#endif
