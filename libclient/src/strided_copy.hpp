// Layout helpers for copies between host arrays and objects.
#pragma once

#include <cstdint>
#include <span>

namespace tensorshm::detail {

/// Strides in elements; dimensions of extent 1 (or arrays with a 0 extent) do
/// not constrain their stride, as in numpy.
bool is_c_contiguous(std::span<const std::int64_t> shape, std::span<const std::int64_t> strides);
bool is_f_contiguous(std::span<const std::int64_t> shape, std::span<const std::int64_t> strides);

/// Copies every element of `shape` from src (strides in elements, may be 0) to
/// dst (strides in elements), moving the innermost contiguous runs with memcpy.
/// At most protocol::kMaxDims dimensions.
void strided_copy(void* dst, std::span<const std::int64_t> dst_strides, const void* src,
                  std::span<const std::int64_t> src_strides, std::span<const std::int64_t> shape,
                  std::int64_t itemsize) noexcept;

}  // namespace tensorshm::detail
