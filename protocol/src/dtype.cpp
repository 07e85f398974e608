#include "tensorshm/dtype.hpp"

#include <array>
#include <string>

namespace tensorshm {
namespace {

struct Named {
  std::string_view name;
  DType type;
};

// Canonical names first; numpy spellings after (parsed, never printed).
constexpr std::array kNames{
    Named{"bool", {6, 8, 1}},          Named{"int8", {0, 8, 1}},
    Named{"int16", {0, 16, 1}},        Named{"int32", {0, 32, 1}},
    Named{"int64", {0, 64, 1}},        Named{"uint8", {1, 8, 1}},
    Named{"uint16", {1, 16, 1}},       Named{"uint32", {1, 32, 1}},
    Named{"uint64", {1, 64, 1}},       Named{"float16", {2, 16, 1}},
    Named{"float32", {2, 32, 1}},      Named{"float64", {2, 64, 1}},
    Named{"bfloat16", {4, 16, 1}},     Named{"complex64", {5, 64, 1}},
    Named{"complex128", {5, 128, 1}},  Named{"float8_e3m4", {7, 8, 1}},
    Named{"float8_e4m3", {8, 8, 1}},   Named{"float8_e4m3b11fnuz", {9, 8, 1}},
    Named{"float8_e4m3fn", {10, 8, 1}}, Named{"float8_e4m3fnuz", {11, 8, 1}},
    Named{"float8_e5m2", {12, 8, 1}},  Named{"float8_e5m2fnuz", {13, 8, 1}},
    Named{"float8_e8m0fnu", {14, 8, 1}},
    // numpy/torch spellings
    Named{"?", {6, 8, 1}},    Named{"b1", {6, 8, 1}},   Named{"i1", {0, 8, 1}},
    Named{"i2", {0, 16, 1}},  Named{"i4", {0, 32, 1}},  Named{"i8", {0, 64, 1}},
    Named{"u1", {1, 8, 1}},   Named{"u2", {1, 16, 1}},  Named{"u4", {1, 32, 1}},
    Named{"u8", {1, 64, 1}},  Named{"f2", {2, 16, 1}},  Named{"f4", {2, 32, 1}},
    Named{"f8", {2, 64, 1}},  Named{"c8", {5, 64, 1}},  Named{"c16", {5, 128, 1}},
    Named{"half", {2, 16, 1}}, Named{"float", {2, 32, 1}}, Named{"double", {2, 64, 1}},
};
constexpr std::size_t kCanonical = 23;

}  // namespace

bool dtype_supported(DType t) noexcept {
  for (std::size_t i = 0; i < kCanonical; ++i)
    if (kNames[i].type == t) return true;
  return false;
}

std::string dtype_name(DType t) {
  for (std::size_t i = 0; i < kCanonical; ++i)
    if (kNames[i].type == t) return std::string(kNames[i].name);
  return "dtype(code=" + std::to_string(t.code) + ",bits=" + std::to_string(t.bits) +
         ",lanes=" + std::to_string(t.lanes) + ")";
}

std::optional<DType> dtype_from_name(std::string_view name) {
  // numpy byte-order prefixes: native/little only ('|' for single bytes).
  if (!name.empty() && (name.front() == '<' || name.front() == '=' || name.front() == '|'))
    name.remove_prefix(1);
  if (name.starts_with("torch.")) name.remove_prefix(6);
  for (const auto& n : kNames)
    if (n.name == name) return n.type;
  return std::nullopt;
}

}  // namespace tensorshm
