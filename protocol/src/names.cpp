#include "tensorshm/names.hpp"

#include <cstdio>
#include <string>

namespace tensorshm {

std::string printable_name(std::string_view name) {
  std::string out;
  for (unsigned char c : name.substr(0, 80)) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  if (name.size() > 80) out += "...";
  return out;
}

Status validate_name(std::string_view name) {
  auto bad = [&](const char* why) {
    return Error{Errc::invalid_name,
                 "invalid object name '" + printable_name(name) + "': " + why};
  };
  if (name.empty()) return bad("the name is empty");
  if (name.size() > kMaxNameBytes)
    return bad(("it is " + std::to_string(name.size()) + " bytes long; the limit is 255").c_str());
  for (unsigned char c : name)
    if (c <= 0x20 || c >= 0x7f)
      return bad("only printable ASCII without spaces is allowed");
  if (name.find("..") != std::string_view::npos) return bad("it contains '..'");
  if (name.front() == '/' || name.back() == '/') return bad("it starts or ends with '/'");
  if (name.find("//") != std::string_view::npos) return bad("it has an empty path component ('//')");
  return ok_status();
}

}  // namespace tensorshm
