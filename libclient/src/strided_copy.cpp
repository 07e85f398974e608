#include "strided_copy.hpp"

#include <array>
#include <cstring>

#include "tensorshm/protocol.hpp"

namespace tensorshm::detail {

bool is_c_contiguous(std::span<const std::int64_t> shape, std::span<const std::int64_t> strides) {
  if (strides.size() != shape.size()) return false;
  std::int64_t expect = 1;
  for (std::size_t i = shape.size(); i-- > 0;) {
    if (shape[i] == 0) return true;
    if (shape[i] != 1 && strides[i] != expect) return false;
    expect *= shape[i];
  }
  return true;
}

bool is_f_contiguous(std::span<const std::int64_t> shape, std::span<const std::int64_t> strides) {
  if (strides.size() != shape.size()) return false;
  std::int64_t expect = 1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 0) return true;
    if (shape[i] != 1 && strides[i] != expect) return false;
    expect *= shape[i];
  }
  return true;
}

void strided_copy(void* dst, std::span<const std::int64_t> dst_strides, const void* src,
                  std::span<const std::int64_t> src_strides, std::span<const std::int64_t> shape,
                  std::int64_t itemsize) noexcept {
  const std::size_t nd = shape.size();
  if (nd > protocol::kMaxDims || dst_strides.size() != nd || src_strides.size() != nd) return;  // callers check
  for (auto d : shape)
    if (d == 0) return;
  if (nd == 0) {
    std::memcpy(dst, src, static_cast<std::size_t>(itemsize));
    return;
  }
  // The innermost dimension moves as one memcpy when both sides are dense in it.
  const std::size_t last = nd - 1;
  const bool run = dst_strides[last] == 1 && src_strides[last] == 1;
  std::array<std::int64_t, protocol::kMaxDims> idx{};  // check_layout allows at most kMaxDims
  auto* d = static_cast<std::byte*>(dst);
  const auto* s = static_cast<const std::byte*>(src);
  for (;;) {
    std::int64_t doff = 0, soff = 0;
    for (std::size_t i = 0; i < last; ++i) {
      doff += idx[i] * dst_strides[i];
      soff += idx[i] * src_strides[i];
    }
    if (run) {
      std::memcpy(d + doff * itemsize, s + soff * itemsize, static_cast<std::size_t>(shape[last] * itemsize));
    } else {
      for (std::int64_t j = 0; j < shape[last]; ++j)
        std::memcpy(d + (doff + j * dst_strides[last]) * itemsize, s + (soff + j * src_strides[last]) * itemsize,
                    static_cast<std::size_t>(itemsize));
    }
    std::size_t k = last;
    for (;;) {
      if (k == 0) return;
      --k;
      if (++idx[k] < shape[k]) break;
      idx[k] = 0;
    }
  }
}

}  // namespace tensorshm::detail
