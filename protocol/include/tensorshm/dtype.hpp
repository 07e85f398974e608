// Element types as DLPack describes them (code, bits, lanes), with the names
// users type ("float32", "bfloat16", "float8_e4m3fn") and their sizes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tensorshm {

/// DLPack DLDataTypeCode values (dlpack.h v1.1). Explicit, stable.
enum class DTypeCode : std::uint8_t {
  kInt = 0,
  kUInt = 1,
  kFloat = 2,
  kOpaqueHandle = 3,
  kBfloat = 4,
  kComplex = 5,
  kBool = 6,
  kFloat8_e3m4 = 7,
  kFloat8_e4m3 = 8,
  kFloat8_e4m3b11fnuz = 9,
  kFloat8_e4m3fn = 10,
  kFloat8_e4m3fnuz = 11,
  kFloat8_e5m2 = 12,
  kFloat8_e5m2fnuz = 13,
  kFloat8_e8m0fnu = 14,
};

struct DType {
  std::uint8_t code = 0;
  std::uint8_t bits = 0;
  std::uint16_t lanes = 1;
  friend bool operator==(const DType&, const DType&) = default;
};

/// True for the types tensorshm stores: bool, int/uint 8..64, float16/32/64,
/// bfloat16, complex64/128 and the float8 family, each with one lane.
bool dtype_supported(DType t) noexcept;
/// Bytes per element; only meaningful when dtype_supported(t).
inline std::size_t dtype_itemsize(DType t) noexcept { return (std::size_t{t.bits} * t.lanes + 7) / 8; }
/// "float32", "bfloat16", ...; "dtype(code=9,bits=3,lanes=1)" for others.
std::string dtype_name(DType t);
/// Parses the names dtype_name() produces (and numpy spellings such as
/// "f4", "<f4", "uint8", "bool"). Empty when unknown.
std::optional<DType> dtype_from_name(std::string_view name);

namespace dtypes {
inline constexpr DType kBool{6, 8, 1};
inline constexpr DType kInt8{0, 8, 1};
inline constexpr DType kInt16{0, 16, 1};
inline constexpr DType kInt32{0, 32, 1};
inline constexpr DType kInt64{0, 64, 1};
inline constexpr DType kUInt8{1, 8, 1};
inline constexpr DType kUInt16{1, 16, 1};
inline constexpr DType kUInt32{1, 32, 1};
inline constexpr DType kUInt64{1, 64, 1};
inline constexpr DType kFloat16{2, 16, 1};
inline constexpr DType kFloat32{2, 32, 1};
inline constexpr DType kFloat64{2, 64, 1};
inline constexpr DType kBfloat16{4, 16, 1};
inline constexpr DType kComplex64{5, 64, 1};
inline constexpr DType kComplex128{5, 128, 1};
}  // namespace dtypes

}  // namespace tensorshm
