// The Python extension module sparse_rt._C. Loading it registers the ops (TORCH_LIBRARY static
// initializers); it also reports how it was built and the x86-64 level its CPU kernels run at.
// pybind11 alone, not <torch/extension.h> (all of torch's C++ API): a third of the compile time.
#include <pybind11/pybind11.h>

#include "../kernels/cpu/csr_conv2d.h"
#include "../kernels/cpu/isa.h"
#include "checks.h"
#include "core_round_trip.h"
#include "cpu/block_cache.h"

PYBIND11_MODULE(_C, m) {
  m.def("build_info", [] {
    pybind11::dict info;
#ifdef SPARSE_RT_WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
#ifdef SPARSE_RT_WITH_ONNXRUNTIME
    // The library exports RegisterCustomOps (csrc/onnxruntime): onnxruntime can load it by path.
    info["onnxruntime_kernels"] = true;
#else
    info["onnxruntime_kernels"] = false;
#endif
    info["compiler"] = __VERSION__;
    // The x86-64 level the CPU kernels run at on this machine (the planner's cost model depends on it).
    switch (sparse_rt::cpu::cpu_isa()) {
      case sparse_rt::cpu::Isa::kX86_64_V4: info["cpu_isa"] = "x86-64-v4"; break;
      case sparse_rt::cpu::Isa::kX86_64_V3: info["cpu_isa"] = "x86-64-v3"; break;
      default: info["cpu_isa"] = "baseline";
    }
    return info;
  });
  m.def("full_index_checks_enabled", &sparse_rt::full_index_checks_enabled);
  m.def("set_full_index_checks", &sparse_rt::set_full_index_checks, pybind11::arg("enabled"));
  m.def("set_thread_full_index_checks", &sparse_rt::set_thread_full_index_checks,
        pybind11::arg("state"));
  m.def("trusted_packings_enabled", &sparse_rt::trusted_packings_enabled);
  m.def("set_trusted_packings", &sparse_rt::set_trusted_packings, pybind11::arg("enabled"));
  m.def("set_thread_trusted_packings", &sparse_rt::set_thread_trusted_packings, pybind11::arg("state"));
  m.def("cpu_block_cache_stats", [] {
    const sparse_rt::BlockCacheStats s = sparse_rt::block_cache_stats();
    pybind11::dict stats;
    stats["in_use_bytes"] = s.in_use_bytes;
    stats["idle_bytes"] = s.idle_bytes;
    stats["limit_bytes"] = s.limit_bytes;
    stats["hits"] = s.hits;
    stats["misses"] = s.misses;
    return stats;
  });
  m.def("set_cpu_block_cache_limit", &sparse_rt::set_block_cache_limit, pybind11::arg("bytes"));
  m.def("empty_cpu_block_cache", &sparse_rt::empty_block_cache);
  m.def("core_round_trip_ns", &sparse_rt::core_round_trip_ns, pybind11::arg("cpu_a"), pybind11::arg("cpu_b"),
        pybind11::arg("rounds"), pybind11::call_guard<pybind11::gil_scoped_release>());
  // Whether (and in bands of how many rows) the bottleneck block kernel runs a block: the ONNX
  // session's fold makes a CsrBottleneck node only where it would (sparse_rt/onnx/fold.py).
  m.def(
      "bottleneck_band_rows",
      [](int64_t batch, int64_t in_channels, int64_t height, int64_t width, int64_t mid1, int64_t mid2,
         int64_t out_channels, int64_t nnz2, int64_t threads) {
        return sparse_rt::cpu::bottleneck_band_rows({batch, in_channels, height, width, mid1, mid2, out_channels},
                                                    nnz2, threads);
      },
      pybind11::arg("batch"), pybind11::arg("in_channels"), pybind11::arg("height"), pybind11::arg("width"),
      pybind11::arg("mid1"), pybind11::arg("mid2"), pybind11::arg("out_channels"), pybind11::arg("nnz2"),
      pybind11::arg("threads"));
}
