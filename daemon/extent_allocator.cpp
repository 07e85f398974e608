#include "extent_allocator.hpp"

#include <cassert>

namespace tensorshm::daemon {

ExtentAllocator::ExtentAllocator(std::uint64_t begin, std::uint64_t size, std::uint64_t page)
    : page_(page), size_(size) {
  if (size > 0) insert(begin, size);
}

void ExtentAllocator::insert(std::uint64_t offset, std::uint64_t len) {
  by_offset_.emplace(offset, len);
  by_length_.emplace(len, offset);
  free_bytes_ += len;
}

void ExtentAllocator::erase(std::map<std::uint64_t, std::uint64_t>::iterator it) {
  auto [lo, hi] = by_length_.equal_range(it->second);
  for (auto l = lo; l != hi; ++l)
    if (l->second == it->first) {
      by_length_.erase(l);
      break;
    }
  free_bytes_ -= it->second;
  by_offset_.erase(it);
}

std::optional<std::uint64_t> ExtentAllocator::allocate(std::uint64_t bytes) {
  const std::uint64_t len = round(bytes == 0 ? 1 : bytes);
  auto fit = by_length_.lower_bound(len);
  if (fit == by_length_.end()) return std::nullopt;
  const std::uint64_t offset = fit->second;
  const std::uint64_t have = fit->first;
  erase(by_offset_.find(offset));
  if (have > len) insert(offset + len, have - len);
  return offset;
}

void ExtentAllocator::free(std::uint64_t offset, std::uint64_t bytes) {
  std::uint64_t len = round(bytes == 0 ? 1 : bytes);
  auto next = by_offset_.lower_bound(offset);
  if (next != by_offset_.end() && offset + len == next->first) {
    len += next->second;
    erase(next);
  }
  auto after = by_offset_.lower_bound(offset);
  if (after != by_offset_.begin()) {
    auto prev = std::prev(after);
    assert(prev->first + prev->second <= offset && "double free of an extent");
    if (prev->first + prev->second == offset) {
      offset = prev->first;
      len += prev->second;
      erase(prev);
    }
  }
  insert(offset, len);
}

std::uint64_t ExtentAllocator::largest_free() const noexcept {
  return by_length_.empty() ? 0 : by_length_.rbegin()->first;
}

}  // namespace tensorshm::daemon
