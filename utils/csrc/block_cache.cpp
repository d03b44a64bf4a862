// A caching allocator for PyTorch's large CPU tensors (the why: utils/block_cache.py).
//
// Requests of at least `min_bytes` are rounded up to whole 2 MiB huge pages and served from
// mappings made here (mmap + madvise(MADV_HUGEPAGE), 2 MiB aligned). A freed block stays mapped;
// free ranges coalesce with their neighbours. A request takes the smallest free range that fits
// (splitting it); when none fits, a new mapping is made and the free ranges, largest first, are
// moved into it with mremap, so that memory freed in pieces of any size is reused without being
// faulted in or zeroed again. Only the part no free range covers is new memory, so mapped bytes
// (live + free) never exceed the high-water mark of live bytes. Smaller requests go to c10's
// default CPU allocator (glibc serves them from its heap well).
//
// C interface (ctypes): asa_cache_install, asa_cache_stats, asa_cache_reset_peaks,
// asa_cache_release.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <pthread.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <algorithm>
#include <iterator>
#include <map>
#include <set>
#include <mutex>
#include <unordered_map>
#include <utility>

namespace {

constexpr size_t kHugePage = size_t(2) << 20;

struct Cache {
  std::mutex mu;
  size_t min_bytes = size_t(4) << 20;
  std::map<uintptr_t, size_t> free_by_addr;              // free ranges, coalesced
  std::set<std::pair<size_t, uintptr_t>> free_by_size;   // the same ranges, for best fit
  std::unordered_map<void*, size_t> live;                // block -> rounded size
  size_t live_bytes = 0, free_bytes = 0, high_water = 0, mapped_peak = 0;
  uint64_t reused = 0, glued = 0, fresh = 0, fresh_bytes = 0, moved_bytes = 0, fallbacks = 0;
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: tensors may be freed during interpreter exit
  return *c;
}

size_t round_up(size_t n) { return (n + kHugePage - 1) / kHugePage * kHugePage; }

uintptr_t map_fresh(size_t size) {
  // over-map by one huge page and trim, so the block starts on a 2 MiB boundary (THP needs it)
  size_t len = size + kHugePage;
  void* raw = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return 0;
  uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  uintptr_t aligned = (start + kHugePage - 1) & ~(uintptr_t(kHugePage) - 1);
  if (aligned > start) munmap(raw, aligned - start);
  uintptr_t end = aligned + size, raw_end = start + len;
  if (raw_end > end) munmap(reinterpret_cast<void*>(end), raw_end - end);
#ifdef MADV_HUGEPAGE
  madvise(reinterpret_cast<void*>(aligned), size, MADV_HUGEPAGE);  // advice: works without THP
#endif
  return aligned;
}

void add_free(Cache& c, uintptr_t addr, size_t size) {
  auto next = c.free_by_addr.lower_bound(addr);
  if (next != c.free_by_addr.end() && addr + size == next->first) {     // merge with the next
    c.free_by_size.erase({next->second, next->first});
    size += next->second;
    next = c.free_by_addr.erase(next);
  }
  if (next != c.free_by_addr.begin()) {                                 // merge with the previous
    auto prev = std::prev(next);
    if (prev->first + prev->second == addr) {
      c.free_by_size.erase({prev->second, prev->first});
      addr = prev->first;
      size += prev->second;
      c.free_by_addr.erase(prev);
    }
  }
  c.free_by_addr[addr] = size;
  c.free_by_size.insert({size, addr});
}

void remove_free(Cache& c, uintptr_t addr, size_t size) {
  c.free_by_addr.erase(addr);
  c.free_by_size.erase({size, addr});
}

// Moves the pages of [src, src+len) to [dst, dst+len) (mremap: page tables move, nothing is
// copied or zeroed). mremap needs its source inside one mapping; coalesced free ranges may span
// several, so on failure the range is moved one huge page at a time (every mapping made here is
// aligned to and a multiple of 2 MiB).
bool move_pages(uintptr_t src, uintptr_t dst, size_t len) {
  auto mv = [](uintptr_t s, uintptr_t d, size_t n) {
    return mremap(reinterpret_cast<void*>(s), n, n, MREMAP_MAYMOVE | MREMAP_FIXED,
                  reinterpret_cast<void*>(d)) != MAP_FAILED;
  };
  if (mv(src, dst, len)) return true;
  for (size_t off = 0; off < len; off += kHugePage)
    if (!mv(src + off, dst + off, kHugePage)) return false;
  return true;
}

// A block of `size` bytes: the smallest free range that fits (split), else a fresh mapping into
// which the free ranges are moved (largest first) so that freed memory is reused whatever its
// size; only the part the free ranges cannot cover is new memory. Caller holds the lock.
uintptr_t take_block(Cache& c, size_t size) {
  auto fit = c.free_by_size.lower_bound({size, 0});
  if (fit != c.free_by_size.end()) {
    size_t have = fit->first;
    uintptr_t addr = fit->second;
    remove_free(c, addr, have);
    if (have > size) add_free(c, addr + size, have - size);
    c.free_bytes -= size;
    ++c.reused;
    return addr;
  }
  uintptr_t block = map_fresh(size);
  if (block == 0) return 0;
  size_t filled = 0;
  while (filled < size && !c.free_by_size.empty()) {
    auto largest = std::prev(c.free_by_size.end());
    size_t have = largest->first;
    uintptr_t addr = largest->second;
    size_t n = std::min(have, size - filled);
    remove_free(c, addr, have);
    if (!move_pages(addr, block + filled, n)) {   // cannot happen for our own mappings
      add_free(c, addr, have);
      break;
    }
    if (have > n) add_free(c, addr + n, have - n);
    c.free_bytes -= n;
    c.moved_bytes += n;
    filled += n;
  }
  if (filled > 0) ++c.glued; else ++c.fresh;
  c.fresh_bytes += size - filled;
  return block;
}

void delete_block(void* ptr) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.live.find(ptr);
  if (it == c.live.end()) return;  // cannot happen: this deleter is only given to our blocks
  size_t size = it->second;
  c.live.erase(it);
  c.live_bytes -= size;
  c.free_bytes += size;
  add_free(c, reinterpret_cast<uintptr_t>(ptr), size);
}

struct BlockCacheAllocator final : public c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    Cache& c = cache();
    if (n < c.min_bytes) return c10::GetDefaultCPUAllocator()->allocate(n);
    size_t size = round_up(n);
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(c.mu);
      p = reinterpret_cast<void*>(take_block(c, size));
      if (p == nullptr) {
        ++c.fallbacks;
      } else {
        c.live.emplace(p, size);
        c.live_bytes += size;
        if (c.live_bytes > c.high_water) c.high_water = c.live_bytes;
        size_t mapped = c.live_bytes + c.free_bytes;
        if (mapped > c.mapped_peak) c.mapped_peak = mapped;
      }
    }
    // out of memory: the default allocator raises PyTorch's usual error if it fails too
    if (p == nullptr) return c10::GetDefaultCPUAllocator()->allocate(n);
    return {p, p, &delete_block, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &delete_block; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

BlockCacheAllocator* g_allocator = nullptr;

// fork() (DataLoader workers) must not inherit a lock held by another thread
void before_fork() { cache().mu.lock(); }
void after_fork() { cache().mu.unlock(); }

}  // namespace

extern "C" {

// Makes this PyTorch's CPU allocator (priority above the default one) for requests of at least
// `min_bytes`. Returns 1 when PyTorch now uses it.
int asa_cache_install(uint64_t min_bytes) {
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    c.min_bytes = min_bytes < 1 ? 1 : static_cast<size_t>(min_bytes);
  }
  if (g_allocator == nullptr) {
    g_allocator = new BlockCacheAllocator();
    pthread_atfork(&before_fork, &after_fork, &after_fork);
  }
  c10::SetCPUAllocator(g_allocator, /*priority=*/1);
  return c10::GetCPUAllocator() == g_allocator ? 1 : 0;
}

// Fills out[0..10]: live, free, high_water (of live), mapped_peak (bytes); reused, glued, fresh
// (requests served by a free range, by moving free ranges into a new mapping, by new memory
// only); fresh_bytes, moved_bytes; fallbacks (mapping failed); installed (0/1).
void asa_cache_stats(uint64_t* out) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  out[0] = c.live_bytes;
  out[1] = c.free_bytes;
  out[2] = c.high_water;
  out[3] = c.mapped_peak;
  out[4] = c.reused;
  out[5] = c.glued;
  out[6] = c.fresh;
  out[7] = c.fresh_bytes;
  out[8] = c.moved_bytes;
  out[9] = c.fallbacks;
  out[10] = (g_allocator != nullptr && c10::GetCPUAllocator() == g_allocator) ? 1 : 0;
}

// Restarts the peak counters (high_water, mapped_peak) from the current state.
void asa_cache_reset_peaks() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.high_water = c.live_bytes;
  c.mapped_peak = c.live_bytes + c.free_bytes;
}

// Unmaps every free range (live tensors are untouched); returns the bytes given back.
uint64_t asa_cache_release() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  size_t released = c.free_bytes;
  for (const auto& r : c.free_by_addr) munmap(reinterpret_cast<void*>(r.first), r.second);
  c.free_by_addr.clear();
  c.free_by_size.clear();
  c.free_bytes = 0;
  return released;
}

}  // extern "C"
