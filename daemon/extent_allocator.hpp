// Page-granular best-fit allocator for the extents of one pool segment. Its
// state lives only in the daemon's private memory; the shared segment holds
// nothing a client could corrupt to confuse it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>

namespace tensorshm::daemon {

class ExtentAllocator {
 public:
  /// Manages [begin, begin + size); both multiples of `page`.
  ExtentAllocator(std::uint64_t begin, std::uint64_t size, std::uint64_t page);

  /// Smallest free range that fits `bytes` (rounded up to pages), split; its
  /// offset, or nothing when no free range is large enough.
  std::optional<std::uint64_t> allocate(std::uint64_t bytes);
  /// Returns a range from allocate(); coalesces with free neighbours.
  void free(std::uint64_t offset, std::uint64_t bytes);

  std::uint64_t free_bytes() const noexcept { return free_bytes_; }
  std::uint64_t capacity() const noexcept { return size_; }
  std::uint64_t largest_free() const noexcept;
  std::uint64_t round(std::uint64_t bytes) const noexcept { return (bytes + page_ - 1) / page_ * page_; }

 private:
  void insert(std::uint64_t offset, std::uint64_t len);
  void erase(std::map<std::uint64_t, std::uint64_t>::iterator it);

  std::uint64_t page_;
  std::uint64_t size_;
  std::uint64_t free_bytes_ = 0;
  std::map<std::uint64_t, std::uint64_t> by_offset_;       // offset -> length
  std::multimap<std::uint64_t, std::uint64_t> by_length_;  // length -> offset
};

}  // namespace tensorshm::daemon
