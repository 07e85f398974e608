// tensorshm._tensorshm: the nanobind layer between libtensorshm and the Python
// package. It stays low level on purpose: layouts cross it as plain integers
// (DLPack dtype code and bits, shape, strides in elements, data addresses) and
// the Python layer (tensorshm/_client.py) decides how to read numpy, torch and
// __cuda_array_interface__ objects. What only C++ can do lives here:
//
//  * the GIL is released around every call that may block (socket round trips,
//    waits, copies, lease releases in destructors); long waits are cut into
//    slices so that Ctrl-C interrupts them;
//  * tensorshm::Exception becomes the Python exception class registered for its
//    Errc (the classes live in tensorshm/_errors.py and are handed over once at
//    import, see set_error_classes);
//  * a Lease owns a tensorshm::Object (the read lease) and is the base object of
//    every ndarray over it, exporting the mapping through __array_interface__
//    (read-only) and DLPack; a Buffer does the same for an open create.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tensorshm/client.hpp"
#include "tensorshm/cuda.hpp"
#include "tensorshm/dtype.hpp"
#include "tensorshm/error.hpp"
#include "tensorshm/paths.hpp"

#include "convert.hpp"
#include "dlpack_export.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace tensorshm::python {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

// ---- Lease: a read lease and the base object of arrays over it ----------------

struct Lease {
  Object object;
  Lease() = default;
  explicit Lease(Object o) : object(std::move(o)) {}
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  // Releasing sends a message on the Client's connection, whose lock another
  // thread may hold during a long wait: never make the interpreter wait with it.
  ~Lease() { release(); }
  void release() {
    if (object.valid()) without_gil([&] { object.release(); });
  }
  const Object& held() const {
    if (!object.valid()) throw Exception(Errc::not_open, "this tensorshm object was released");
    return object;
  }
};

// A DLPack capsule over the lease's memory that shares the lease, so that
// consumers hold it for as long as they hold the data. as_int exports the raw
// bits as a signed integer of the same width, for consumers that know the type
// but not its DLPack code (torch 1.x and bool, float8, wide unsigned types).
nb::object dlpack_capsule(const Lease& self, bool versioned, bool as_int) {
  const Object& o = self.held();
  DLPackSource src;
  src.data = o.data();
  src.dtype = o.dtype();
  src.shape = o.shape();
  src.strides = o.strides();
  src.keep = o.keep_alive();
  if (as_int) {
    if (src.dtype.bits > 64)
      throw Exception(Errc::unsupported_dtype, "no integer type is as wide as " + dtype_name(src.dtype));
    src.dtype.code = static_cast<std::uint8_t>(DTypeCode::kInt);
  }
  PyObject* capsule = make_dlpack_capsule(std::move(src), versioned);
  if (capsule == nullptr) throw nb::python_error();
  return nb::steal(capsule);
}

// ---- Buffer: an open create ------------------------------------------------

struct PyBuffer {
  Buffer buffer;
  ObjectInfo info;                    // kept after seal/abort
  void* data = nullptr;               // kept after seal/abort
  std::shared_ptr<const void> keep;   // the writable mapping: arrays may outlive the Buffer
  ~PyBuffer() { abort(); }
  void abort() {
    if (buffer.open()) without_gil([&] { buffer.abort(); });
  }
  nb::tuple seal() {
    ObjectInfo sealed;
    {
      nb::gil_scoped_release nogil;
      sealed = buffer.seal();
    }
    return info_tuple(sealed);
  }
};

// ---- Client -------------------------------------------------------------------

// Waits longer than this are cut into slices of this length, with a check for
// pending signals (KeyboardInterrupt) between them.
constexpr milliseconds kWaitSlice{200};

// The point timeout_ms after start, or time_point::max() (never) when
// timeout_ms < 0 or the sum would not fit in the clock's representation:
// adding the milliseconds directly overflows its int64 nanoseconds
// (undefined behaviour, in practice a deadline in the past).
Clock::time_point deadline_after(Clock::time_point start, std::int64_t timeout_ms) {
  if (timeout_ms < 0) return Clock::time_point::max();
  // steady_clock counts from boot; max() with the epoch keeps the subtraction in range regardless.
  const auto room = std::chrono::duration_cast<milliseconds>(Clock::time_point::max() -
                                                             std::max(start, Clock::time_point{}));
  if (timeout_ms >= room.count()) return Clock::time_point::max();
  return start + milliseconds(timeout_ms);
}

// Calls f(timeout) with the GIL released, in slices when the wait is long.
// timeout_ms < 0, or one too large for a steady_clock deadline, waits forever.
template <class F>
auto sliced_wait(std::int64_t timeout_ms, F&& f) {
  if (timeout_ms >= 0 && milliseconds(timeout_ms) <= kWaitSlice) {
    nb::gil_scoped_release nogil;
    return f(milliseconds(timeout_ms));
  }
  const auto deadline = deadline_after(Clock::now(), timeout_ms);
  for (;;) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    const auto slice = std::max(milliseconds(1), std::min(left, kWaitSlice));
    try {
      nb::gil_scoped_release nogil;
      return f(slice);
    } catch (const Exception& e) {
      if (e.code() != Errc::timeout) throw;
      if (Clock::now() >= deadline) {
        std::string msg = e.what();
        if (auto cut = msg.find("; gave up after waiting"); cut != std::string::npos) msg.resize(cut);
        throw Exception(Errc::timeout, msg + "; gave up after waiting " + std::to_string(timeout_ms) + " ms");
      }
    }
    if (PyErr_CheckSignals() != 0) throw nb::python_error();
  }
}

class PyClient {
 public:
  // copy_threads < 0: unset (TENSORSHM_COPY_THREADS, else the usable CPUs).
  PyClient(const std::string& socket_path, const std::string& client_name, int copy_threads) {
    Client::Options o;
    o.socket_path = socket_path;
    o.client_name = client_name;
    if (copy_threads >= 0) o.copy_threads = static_cast<unsigned>(copy_threads);
    nb::gil_scoped_release nogil;
    client_ = std::make_shared<Client>(Client::connect(std::move(o)));
  }

  void close() { client_.reset(); }
  bool closed() const { return client_ == nullptr; }

  // The Client for one call; holding the shared_ptr keeps it alive while the
  // GIL is released even if another thread closes this PyClient meanwhile.
  std::shared_ptr<Client> client() const {
    if (!client_) throw Exception(Errc::not_open, "this tensorshm client is closed");
    return client_;
  }

  nb::dict daemon_info() const {
    auto c = client();
    const DaemonInfo& i = c->daemon_info();
    nb::list segs;
    for (const auto& s : i.segments)
      segs.append(make_dict("id", s.id, "name", s.name, "size", s.size, "dedicated", s.dedicated));
    return make_dict("socket_path", i.socket_path, "daemon_version", i.daemon_version, "instance", i.instance,
                     "protocol_version", i.protocol_version, "page_size", i.page_size, "cuda_devices",
                     i.cuda_devices, "segments", segs);
  }

  // timeout_ms < 0 waits for ever: the longest wait the wire carries (the
  // daemon caps it at about 31 years).
  static CreateOptions create_options(std::vector<std::int64_t> strides, std::int64_t timeout_ms, int share) {
    CreateOptions o;
    o.strides = std::move(strides);
    o.timeout = timeout_ms < 0 ? milliseconds::max() : milliseconds(timeout_ms);
    o.share = share_from_int(share);
    return o;
  }

  std::unique_ptr<PyBuffer> create(const std::string& name, int code, int bits, std::vector<std::int64_t> shape,
                                   std::vector<std::int64_t> strides, std::int64_t timeout_ms, int share) {
    auto c = client();
    const DType t = make_dtype(code, bits);
    auto out = std::make_unique<PyBuffer>();
    CreateOptions opts = create_options(std::move(strides), 0, share);
    out->buffer = sliced_wait(timeout_ms, [&](milliseconds slice) {
      opts.timeout = slice;
      return c->create(name, t, shape, opts);
    });
    out->info = out->buffer.info();
    out->data = out->buffer.data();
    out->keep = out->buffer.keep_alive();
    return out;
  }

  nb::tuple put_host(const std::string& name, std::uintptr_t data, int code, int bits,
                     std::vector<std::int64_t> shape, std::vector<std::int64_t> strides, std::int64_t timeout_ms,
                     int share) {
    auto c = client();
    HostView v;
    v.data = reinterpret_cast<const void*>(data);
    v.dtype = make_dtype(code, bits);
    v.shape = std::move(shape);
    v.strides = std::move(strides);
    CreateOptions opts = create_options({}, 0, share);
    const ObjectInfo info = sliced_wait(timeout_ms, [&](milliseconds slice) {
      opts.timeout = slice;
      return c->put(name, v, opts);
    });
    return info_tuple(info);
  }

  std::unique_ptr<Lease> get(const std::string& name, std::uint64_t newer_than, std::int64_t timeout_ms) {
    auto c = client();
    GetOptions opts;
    opts.newer_than = newer_than;
    auto lease = std::make_unique<Lease>();
    lease->object = sliced_wait(timeout_ms, [&](milliseconds slice) {
      opts.timeout = slice;
      return c->get(name, opts);
    });
    return lease;
  }

  nb::list list(const std::string& prefix, std::uint32_t limit) {
    auto c = client();
    std::vector<ObjectInfo> v;
    {
      nb::gil_scoped_release nogil;
      v = c->list(prefix, limit);
    }
    nb::list out;
    for (const auto& i : v) out.append(info_tuple(i));
    return out;
  }

  nb::tuple stat(const std::string& name) {
    auto c = client();
    ObjectInfo i;
    {
      nb::gil_scoped_release nogil;
      i = c->stat(name);
    }
    return info_tuple(i);
  }

  void remove(const std::string& name) {
    auto c = client();
    nb::gil_scoped_release nogil;
    c->remove(name);
  }

  // The daemon's counters, asked without the GIL.
  Stats fetch_stats() {
    auto c = client();
    nb::gil_scoped_release nogil;
    return c->stats();
  }

  nb::dict stats() {
    const Stats s = fetch_stats();
    return make_dict("pool_bytes", s.pool_bytes, "pool_used_bytes", s.pool_used_bytes, "dedicated_bytes",
                     s.dedicated_bytes, "segments", s.segments, "objects", s.objects, "versions", s.versions,
                     "open_creates", s.open_creates, "leases", s.leases, "clients", s.clients, "puts", s.puts,
                     "gets", s.gets, "copies", s.copies, "bytes_copied", s.bytes_copied, "cuda_devices",
                     s.cuda_devices, "uptime_s", s.uptime_s, "quarantined_bytes", s.quarantined_bytes);
  }

  std::string stats_prometheus() { return prometheus_text(fetch_stats()); }

  double ping() {
    auto c = client();
    nb::gil_scoped_release nogil;
    return std::chrono::duration<double>(c->ping()).count();
  }

 private:
  std::shared_ptr<Client> client_;
};

// ---- GPU producers ------------------------------------------------------------

void require_cuda() {
  if (!cuda_supported())
    throw Exception(Errc::no_gpu,
                    "this tensorshm was built without CUDA support, so it cannot read GPU memory; copy the "
                    "tensor to the host first (t.cpu()), or rebuild the package where nvcc is available "
                    "(TENSORSHM_CUDA=ON pip install ./pyclient)");
}

// A pending GPU put. Holds the producer's object (`keep`) until the daemon has
// copied it, and waits for that (GIL released) when dropped unfinished.
struct PyCudaFuture {
  std::optional<CudaPutFuture> future;
  std::optional<ObjectInfo> result;
  nb::object keep;
  nb::ndarray<nb::ro> array;
  ~PyCudaFuture() {
    if (future) without_gil([&] { future.reset(); });
  }
  bool ready() {
    if (result || !future) return true;
    return future->ready();
  }
  nb::tuple get() {
    if (!result) {
      if (!future) throw Exception(Errc::not_open, "this put future has no result");
      {
        nb::gil_scoped_release nogil;
        result = future->get();
      }
      future.reset();
      keep = nb::object();
      array = nb::ndarray<nb::ro>();
    }
    return info_tuple(*result);
  }
};

nb::tuple bind_put_cuda(PyClient& self, const std::string& name, std::uintptr_t device_ptr, int code, int bits,
                   std::vector<std::int64_t> shape, std::vector<std::int64_t> strides, std::uintptr_t stream,
                   std::int64_t timeout_ms, int share) {
  require_cuda();
  auto c = self.client();
  const DType t = make_dtype(code, bits);
  const CreateOptions opts = PyClient::create_options({}, timeout_ms, share);
  ObjectInfo info;
  {
    nb::gil_scoped_release nogil;
    info = tensorshm::put_cuda(*c, name, reinterpret_cast<const void*>(device_ptr), t, shape, strides,
                               reinterpret_cast<void*>(stream), opts);
  }
  return info_tuple(info);
}

std::unique_ptr<PyCudaFuture> bind_put_cuda_async(PyClient& self, const std::string& name, std::uintptr_t device_ptr,
                                             int code, int bits, std::vector<std::int64_t> shape,
                                             std::vector<std::int64_t> strides, std::uintptr_t stream,
                                             std::int64_t timeout_ms, int share, nb::object keep) {
  require_cuda();
  auto c = self.client();
  const DType t = make_dtype(code, bits);
  const CreateOptions opts = PyClient::create_options({}, timeout_ms, share);
  auto out = std::make_unique<PyCudaFuture>();
  out->keep = std::move(keep);
  {
    nb::gil_scoped_release nogil;
    out->future.emplace(tensorshm::put_cuda_async(*c, name, reinterpret_cast<const void*>(device_ptr), t, shape,
                                                  strides, reinterpret_cast<void*>(stream), opts));
  }
  return out;
}

void bind_forget_cuda(PyClient& self, std::uintptr_t device_ptr) {
  require_cuda();
  auto c = self.client();
  nb::gil_scoped_release nogil;
  tensorshm::forget_cuda(*c, reinterpret_cast<const void*>(device_ptr));
}

// Any __dlpack__ producer: host memory (CPU, pinned or managed) is copied by
// the client, device memory by the daemon, ordered after the legacy default
// stream (DLPack producers synchronize with it when no stream is passed).
nb::object put_dlpack(PyClient& self, const std::string& name, nb::ndarray<nb::ro> a, std::int64_t timeout_ms,
                      int share, bool wait) {
  if (a.dtype().lanes != 1)
    throw Exception(Errc::unsupported_dtype, "vector dtypes (DLPack lanes > 1) cannot be stored");
  std::vector<std::int64_t> shape, strides;
  for (std::size_t i = 0; i < a.ndim(); ++i) {
    shape.push_back(a.shape(i));
    strides.push_back(a.stride(i));
  }
  const auto ptr = reinterpret_cast<std::uintptr_t>(a.data());
  switch (a.device_type()) {
    case nb::device::cpu::value:
    case nb::device::cuda_host::value:
    case nb::device::cuda_managed::value:
      return self.put_host(name, ptr, a.dtype().code, a.dtype().bits, std::move(shape), std::move(strides),
                           timeout_ms, share);
    case nb::device::cuda::value:
      if (wait) return bind_put_cuda(self, name, ptr, a.dtype().code, a.dtype().bits, shape, strides, 0, timeout_ms, share);
      {
        auto f = bind_put_cuda_async(self, name, ptr, a.dtype().code, a.dtype().bits, shape, strides, 0, timeout_ms,
                                     share, nb::object());
        f->array = a;  // the DLPack export itself, not just its producer, stays alive
        return nb::cast(std::move(f));
      }
    default:
      throw Exception(Errc::invalid_argument, "objects on DLPack device type " + std::to_string(a.device_type()) +
                                                  " cannot be put; move them to the host or a CUDA device first");
  }
}

}  // namespace
}  // namespace tensorshm::python

NB_MODULE(_tensorshm, m) {
  using namespace tensorshm;
  using namespace tensorshm::python;

  m.doc() = "Low-level binding of libtensorshm; use the `tensorshm` package instead.";
  m.attr("__version__") = TENSORSHM_VERSION;  // project(VERSION) in CMakeLists.txt: the one version number

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const Exception& e) {
      PyErr_SetString(error_class(e.code()), e.what());
    }
  });

  m.def("set_error_classes", &set_error_classes, "classes"_a,
        "Installs the exception class raised for each errc name (tensorshm._errors does this at import).");
  m.def("errc_names", &errc_names, "The errc names, indexed by code.");
  m.def("raise_errc", &raise_errc, "code"_a, "message"_a, "Raises what a libtensorshm failure with this code becomes.");
  m.def("default_socket_path", &default_client_socket_path,
        "The socket a client connects to by default ($TENSORSHM_SOCKET, else the daemon's default path for "
        "this user, else the system service's).");
  m.def("cuda_supported", &cuda_supported, "True when this build can hand GPU memory to tensorshmd.");
  m.def(
      "dtype_name",
      [](int code, int bits) { return dtype_name(DType{static_cast<std::uint8_t>(code), static_cast<std::uint8_t>(bits), 1}); },
      "code"_a, "bits"_a, "The canonical name of a DLPack (code, bits) dtype.");
  m.def(
      "dtype_from_name",
      [](const std::string& name) -> std::optional<std::pair<int, int>> {
        auto t = dtype_from_name(name);
        if (!t || !dtype_supported(*t)) return std::nullopt;
        return std::pair<int, int>{t->code, t->bits};
      },
      "name"_a, "(code, bits) of a dtype name such as 'float32' or 'bfloat16'; None when unknown.");

  nb::class_<Lease>(m, "Lease", nb::is_weak_referenceable(),
                    "A read lease on one sealed object version; the base object of the arrays over it.")
      .def_prop_ro("valid", [](const Lease& l) { return l.object.valid(); })
      .def_prop_ro("info", [](const Lease& l) { return info_tuple(l.held().info()); })
      .def_prop_ro("version", [](const Lease& l) { return l.held().version(); })
      .def_prop_ro("nbytes", [](const Lease& l) { return l.held().nbytes(); })
      .def_prop_ro("dtype_code", [](const Lease& l) { return l.held().dtype().code; })
      .def_prop_ro("dtype_bits", [](const Lease& l) { return l.held().dtype().bits; })
      .def_prop_ro("data_ptr", [](const Lease& l) { return reinterpret_cast<std::uintptr_t>(l.held().data()); })
      .def_prop_ro("__array_interface__",
                   [](const Lease& l) { return array_interface(l.held().data(), l.held().info(), true); },
                   "Read-only; bfloat16 and float8 appear as unsigned integers of their width.")
      .def("dlpack_capsule", &dlpack_capsule, "versioned"_a = false, "as_int"_a = false,
           "A DLPack capsule (\"dltensor\", or read-only \"dltensor_versioned\") sharing this lease; as_int: "
           "the raw bits as a signed integer type of the same width.")
      .def("release", &Lease::release, "Gives the lease back now. Arrays over it must not be used afterwards.");

  nb::class_<PyBuffer>(m, "Buffer", nb::is_weak_referenceable(), "An open create: writable, not yet visible.")
      .def_prop_ro("open", [](const PyBuffer& b) { return b.buffer.open(); })
      .def_prop_ro("info", [](const PyBuffer& b) { return info_tuple(b.info); })
      .def_prop_ro("dtype_code", [](const PyBuffer& b) { return b.info.dtype.code; })
      .def_prop_ro("dtype_bits", [](const PyBuffer& b) { return b.info.dtype.bits; })
      .def_prop_ro("data_ptr", [](const PyBuffer& b) { return reinterpret_cast<std::uintptr_t>(b.data); })
      .def_prop_ro("__array_interface__", [](const PyBuffer& b) { return array_interface(b.data, b.info, false); })
      .def("seal", &PyBuffer::seal, "Publishes the object; returns its info tuple.")
      .def("abort", &PyBuffer::abort, "Discards the object. Idempotent.");

  nb::class_<PyCudaFuture>(m, "CudaPutFuture", "A GPU put in flight.")
      .def("ready", &PyCudaFuture::ready)
      .def("get", &PyCudaFuture::get, "Waits for the daemon's answer; returns the info tuple.");

  nb::class_<PyClient>(m, "Client", "One connection to tensorshmd.")
      .def(nb::init<const std::string&, const std::string&, int>(), "socket_path"_a = "", "client_name"_a = "",
           "copy_threads"_a = -1)
      .def("close", &PyClient::close)
      .def_prop_ro("closed", &PyClient::closed)
      .def_prop_ro("daemon_info", &PyClient::daemon_info)
      .def("create", &PyClient::create, "name"_a, "code"_a, "bits"_a, "shape"_a, "strides"_a, "timeout_ms"_a,
           "share"_a)
      .def("put_host", &PyClient::put_host, "name"_a, "data"_a, "code"_a, "bits"_a, "shape"_a, "strides"_a,
           "timeout_ms"_a, "share"_a)
      .def("put_cuda", &bind_put_cuda, "name"_a, "device_ptr"_a, "code"_a, "bits"_a, "shape"_a, "strides"_a, "stream"_a,
           "timeout_ms"_a, "share"_a)
      .def("put_cuda_async", &bind_put_cuda_async, "name"_a, "device_ptr"_a, "code"_a, "bits"_a, "shape"_a, "strides"_a,
           "stream"_a, "timeout_ms"_a, "share"_a, "keep"_a)
      .def("forget_cuda", &bind_forget_cuda, "device_ptr"_a)
      .def("put_dlpack", &put_dlpack, "name"_a, "array"_a, "timeout_ms"_a, "share"_a, "wait"_a)
      .def("get", &PyClient::get, "name"_a, "newer_than"_a, "timeout_ms"_a)
      .def("list", &PyClient::list, "prefix"_a, "limit"_a)
      .def("stat", &PyClient::stat, "name"_a)
      .def("remove", &PyClient::remove, "name"_a)
      .def("stats", &PyClient::stats)
      .def("stats_prometheus", &PyClient::stats_prometheus)
      .def("ping", &PyClient::ping);
}
