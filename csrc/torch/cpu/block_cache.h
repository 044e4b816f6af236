// Large CPU buffers of the ops (outputs and scratch) come from a cache of freed blocks, as torch's
// CUDA caching allocator does for GPU memory and onnxruntime's arena for its sessions. glibc hands a
// freed block of several MiB back to the kernel (munmap, or trimming the heap's top), so the next
// call page-faults it in again and the kernel zeroes every page: on ResNet-50 at batch 8 that was
// about 12,700 faults per forward (README, "The block cache").
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstddef>

namespace sparse_rt {

struct BlockCacheStats {
  size_t in_use_bytes;  // blocks held by live tensors
  size_t idle_bytes;    // freed blocks kept for reuse
  size_t limit_bytes;   // idle memory above this is released (the whole idle set, then the block)
  size_t hits, misses;  // allocations served from the idle set, and from the system
};

// The cache's allocator (a process-wide singleton, never destroyed: tensors may outlive static
// destruction). Requests under kMinCachedBytes go to torch's CPU allocator unchanged.
c10::Allocator* block_cache_allocator();

// at::empty on the CPU, its storage from the block cache.
at::Tensor empty_cached(at::IntArrayRef sizes, const at::TensorOptions& options);

BlockCacheStats block_cache_stats();
void set_block_cache_limit(size_t bytes);
void empty_block_cache();  // releases every idle block

}  // namespace sparse_rt
