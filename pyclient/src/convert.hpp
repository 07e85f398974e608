// Conversions between libtensorshm and Python for the extension (module.cpp):
// the exception classes per Errc, ObjectInfo as a tuple, dtypes, numpy's
// __array_interface__, and running code without the GIL.
#pragma once
#include <nanobind/nanobind.h>
// The type casters every translation unit of the extension sees alike: a
// std::string cast where <nanobind/stl/string.h> is missing fails at run time
// (std::bad_cast), not at compile time.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tensorshm/client.hpp"
#include "tensorshm/dtype.hpp"
#include "tensorshm/error.hpp"

namespace tensorshm::python {

namespace nb = nanobind;

/// The Python exception class registered for `code` (RuntimeError before any is).
PyObject* error_class(Errc code);
/// Takes {errc name: class}; every name of errc_name() must be present.
void set_error_classes(nb::dict classes);
std::vector<std::string> errc_names();
/// Test hook: raises the exception a libclient failure with this code becomes.
[[noreturn]] void raise_errc(int code, const std::string& message);

Share share_from_int(int s);
nb::tuple int_tuple(const std::vector<std::int64_t>& v);
/// The fields of tensorshm.ObjectInfo, in its order.
nb::tuple info_tuple(const ObjectInfo& i);
DType make_dtype(int code, int bits);
/// numpy's __array_interface__ (version 3) over memory laid out as `info` says.
nb::dict array_interface(const void* data, const ObjectInfo& info, bool readonly);
bool is_finalizing();

// make_dict("a", 1, "b", x): a dict of alternating keys and values.
inline void fill_dict(nb::dict&) {}
template <class V, class... Rest>
void fill_dict(nb::dict& d, const char* key, V&& value, Rest&&... rest) {
  d[key] = nb::cast(std::forward<V>(value));
  fill_dict(d, std::forward<Rest>(rest)...);
}
template <class... KV>
nb::dict make_dict(KV&&... kv) {
  nb::dict d;
  fill_dict(d, std::forward<KV>(kv)...);
  return d;
}

// Runs f with the GIL released when this thread holds it (destructors run from
// the garbage collector, or from a consumer's DLPack deleter on any thread).
// While the interpreter shuts down, f runs as it is.
template <class F>
void without_gil(F&& f) {
  if (is_finalizing() || !PyGILState_Check()) {
    f();
    return;
  }
  nb::gil_scoped_release nogil;
  f();
}


}  // namespace tensorshm::python
