#include "block_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace sparse_rt {
namespace {

constexpr size_t kMinCachedBytes = size_t(1) << 20;
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kDefaultLimit = size_t(1) << 30;

// Requests are rounded up to a size class with at most 1/8 slack, so that sizes that differ a
// little (another batch, another sequence length) share blocks.
size_t size_class(size_t bytes) {
  size_t top = 1;
  while (top <= bytes / 2) top *= 2;  // the largest power of two <= bytes
  const size_t granule = std::max<size_t>(top / 8, 64 << 10);
  return (bytes + granule - 1) / granule * granule;
}

struct Block {
  void* data;
  size_t bytes;
};

class BlockCache final : public c10::Allocator {
 public:
  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache();  // never destroyed: see block_cache.h
    return *cache;
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinCachedBytes) return c10::GetCPUAllocator()->allocate(n);
    Block* block = take(size_class(n));
    return {block->data, block, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }

  BlockCacheStats stats() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return {in_use_, idle_, limit_, hits_, misses_};
  }

  void set_limit(size_t bytes) {
    const std::lock_guard<std::mutex> lock(mutex_);
    limit_ = bytes;
    if (idle_ > limit_) release_idle();
  }

  void empty() {
    const std::lock_guard<std::mutex> lock(mutex_);
    release_idle();
  }

 private:
  Block* take(size_t bytes) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      auto it = idle_blocks_.find(bytes);
      if (it != idle_blocks_.end() && !it->second.empty()) {
        Block* block = it->second.back();
        it->second.pop_back();
        idle_ -= bytes;
        in_use_ += bytes;
        ++hits_;
        return block;
      }
      ++misses_;
    }
    void* data = system_alloc(bytes);
    if (data == nullptr) {  // the idle blocks may be what stands in the way
      empty();
      data = system_alloc(bytes);
    }
    TORCH_CHECK_WITH(OutOfMemoryError, data != nullptr, "sparse_rt: out of memory allocating ", bytes, " bytes");
    const std::lock_guard<std::mutex> lock(mutex_);
    in_use_ += bytes;
    return new Block{data, bytes};
  }

  static void* system_alloc(size_t bytes) {
    // Huge-page aligned, and marked for transparent huge pages (the kernel's default here is
    // madvise): one fault per 2 MiB on first touch, and fewer TLB misses in the kernels.
    const size_t alignment = bytes >= kHugePage ? kHugePage : 64;
    void* data = nullptr;
    if (posix_memalign(&data, alignment, bytes) != 0) return nullptr;
#ifdef MADV_HUGEPAGE
    if (bytes >= kHugePage) madvise(data, bytes, MADV_HUGEPAGE);
#endif
    return data;
  }

  static void release(void* context) {
    auto* block = static_cast<Block*>(context);
    instance().give_back(block);
  }

  void give_back(Block* block) {
    const std::lock_guard<std::mutex> lock(mutex_);
    in_use_ -= block->bytes;
    if (idle_ + block->bytes > limit_) release_idle();
    if (block->bytes > limit_) {
      std::free(block->data);
      delete block;
      return;
    }
    idle_blocks_[block->bytes].push_back(block);
    idle_ += block->bytes;
  }

  // Caller holds mutex_.
  void release_idle() {
    for (auto& [bytes, blocks] : idle_blocks_) {
      for (Block* block : blocks) {
        std::free(block->data);
        delete block;
      }
    }
    idle_blocks_.clear();
    idle_ = 0;
  }

 private:
  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<Block*>> idle_blocks_;
  size_t in_use_ = 0, idle_ = 0, limit_ = kDefaultLimit, hits_ = 0, misses_ = 0;
};

}  // namespace

c10::Allocator* block_cache_allocator() { return &BlockCache::instance(); }

at::Tensor empty_cached(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_INTERNAL_ASSERT(options.device().is_cpu());
  return at::detail::empty_generic(sizes, block_cache_allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), c10::MemoryFormat::Contiguous);
}

BlockCacheStats block_cache_stats() { return BlockCache::instance().stats(); }
void set_block_cache_limit(size_t bytes) { BlockCache::instance().set_limit(bytes); }
void empty_block_cache() { BlockCache::instance().empty(); }

}  // namespace sparse_rt
