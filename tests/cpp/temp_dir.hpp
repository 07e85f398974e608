// A temporary directory for one test case, removed with everything in it at
// the end of the case (doctest tests only: it REQUIREs that mkdtemp worked).
#pragma once

#include <doctest/doctest.h>

#include <stdlib.h>

#include <filesystem>
#include <string>

namespace tshm_test {

struct TempDir {
  std::string path;
  /// `prefix` names the test in /tmp: "/tmp/<prefix>-XXXXXX".
  explicit TempDir(const std::string& prefix) {
    std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

}  // namespace tshm_test
