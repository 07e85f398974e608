// See convert.hpp.
#include "convert.hpp"

#include <array>

namespace tensorshm::python {

// ---- errors -----------------------------------------------------------------

constexpr int kErrcCount = static_cast<int>(Errc::internal) + 1;

// One Python exception class per Errc, installed by set_error_classes(). The
// references are deliberately leaked: translators may run during interpreter
// shutdown, after module state would have been torn down.
static std::array<PyObject*, kErrcCount> g_error_classes{};

PyObject* error_class(Errc code) {
  const auto i = static_cast<std::size_t>(code);
  if (i < g_error_classes.size() && g_error_classes[i] != nullptr) return g_error_classes[i];
  if (g_error_classes[static_cast<std::size_t>(Errc::internal)] != nullptr)
    return g_error_classes[static_cast<std::size_t>(Errc::internal)];
  return PyExc_RuntimeError;
}

// Takes {errc name: class}; every name of errc_name() must be present.
void set_error_classes(nb::dict classes) {
  for (int i = 0; i < kErrcCount; ++i) {
    const std::string key(errc_name(static_cast<Errc>(i)));
    if (!classes.contains(key.c_str())) throw nb::key_error(("no exception class for errc '" + key + "'").c_str());
    nb::object cls = classes[key.c_str()];
    if (!PyType_Check(cls.ptr()) || !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(cls.ptr()),
                                                        reinterpret_cast<PyTypeObject*>(PyExc_Exception)))
      throw nb::type_error(("the class for errc '" + key + "' is not an Exception subclass").c_str());
    Py_XDECREF(g_error_classes[static_cast<std::size_t>(i)]);
    g_error_classes[static_cast<std::size_t>(i)] = cls.release().ptr();
  }
}

std::vector<std::string> errc_names() {
  std::vector<std::string> out;
  for (int i = 0; i < kErrcCount; ++i) out.emplace_back(errc_name(static_cast<Errc>(i)));
  return out;
}

// Test hook: raises the exception a libclient failure with this code becomes.
[[noreturn]] void raise_errc(int code, const std::string& message) {
  if (code < 0 || code >= kErrcCount) throw nb::value_error("unknown errc");
  throw Exception(static_cast<Errc>(code), message);
}

// ---- conversions ------------------------------------------------------------

Share share_from_int(int s) {
  if (s < 0 || s > 2) throw Exception(Errc::invalid_argument, "share must be 'owner', 'group' or 'everyone'");
  return static_cast<Share>(s);
}

nb::tuple int_tuple(const std::vector<std::int64_t>& v) {
  nb::list l;
  for (auto x : v) l.append(x);
  return nb::tuple(l);
}

// The fields of tensorshm.ObjectInfo, in its order.
nb::tuple info_tuple(const ObjectInfo& i) {
  return nb::make_tuple(i.name, i.version, dtype_name(i.dtype), int_tuple(i.shape), int_tuple(i.strides), i.nbytes,
                        i.object_id, i.owner_uid, std::string(share_name(i.share)), i.sealed, i.created_unix_ns,
                        i.leases, i.segment_id);
}

DType make_dtype(int code, int bits) {
  DType t{static_cast<std::uint8_t>(code), static_cast<std::uint8_t>(bits), 1};
  if (code < 0 || code > 255 || bits <= 0 || bits > 255 || !dtype_supported(t))
    throw Exception(Errc::unsupported_dtype, "unsupported dtype (DLPack code " + std::to_string(code) + ", " +
                                                 std::to_string(bits) + " bits)");
  return t;
}

// numpy's typestr for the raw bytes of a dtype: bfloat16 and float8 appear as
// unsigned integers of their width (the Python layer views them as ml_dtypes).
static std::string raw_typestr(DType t) {
  const auto item = std::to_string(dtype_itemsize(t));
  const char order = dtype_itemsize(t) == 1 ? '|' : '<';
  switch (static_cast<DTypeCode>(t.code)) {
    case DTypeCode::kBool: return "|b1";
    case DTypeCode::kInt: return order + std::string("i") + item;
    case DTypeCode::kFloat: return order + std::string("f") + item;
    case DTypeCode::kComplex: return order + std::string("c") + item;
    default: return order + std::string("u") + item;
  }
}

// numpy's __array_interface__ (version 3) over memory laid out as `info` says.
nb::dict array_interface(const void* data, const ObjectInfo& info, bool readonly) {
  const auto item = static_cast<std::int64_t>(dtype_itemsize(info.dtype));
  nb::dict d;
  d["version"] = 3;
  d["shape"] = int_tuple(info.shape);
  d["typestr"] = raw_typestr(info.dtype);
  // Empty objects may have no extent: numpy wants a non-null address anyway.
  static const std::uint64_t kEmpty = 0;
  const void* p = data != nullptr ? data : &kEmpty;
  d["data"] = nb::make_tuple(reinterpret_cast<std::uintptr_t>(p), readonly);
  std::vector<std::int64_t> bytes;
  bytes.reserve(info.strides.size());
  for (auto s : info.strides) bytes.push_back(s * item);
  d["strides"] = info.strides.size() == info.shape.size() ? nb::object(int_tuple(bytes)) : nb::none();
  return d;
}

bool is_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

}  // namespace tensorshm::python
