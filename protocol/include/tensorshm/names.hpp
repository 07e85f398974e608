// Object names: what a valid name is. Names are keys in the daemon's registry
// only; they never become file names.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "tensorshm/error.hpp"

namespace tensorshm {

inline constexpr std::size_t kMaxNameBytes = 255;

/// A valid name is 1..255 bytes of printable, non-space ASCII, does not start
/// or end with '/', has no empty component ("a//b") and no ".." anywhere.
/// Returns Errc::invalid_name with a message that quotes the (escaped) name and
/// says which rule it broke.
Status validate_name(std::string_view name);

/// Returns the name with non-printable bytes escaped as \xNN, cut to 80 bytes,
/// for use in error messages and logs.
std::string printable_name(std::string_view name);

}  // namespace tensorshm
