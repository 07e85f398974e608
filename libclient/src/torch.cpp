// The libtorch adapter (tensorshm/torch.hpp): dtype mapping, CPU tensors
// through Client::put, CUDA tensors through put_cuda on the device's current
// stream (packed on the device first when they have gaps or overlaps), and
// tensors over got objects whose deleter holds the lease.
#include "tensorshm/torch.hpp"

#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/version.h>

#include <memory>
#include <vector>

#define TSHM_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace tensorshm {
namespace {

[[noreturn]] void raise(Errc code, const std::string& message) { throw Exception(code, message); }

constexpr DType float8(DTypeCode code) { return DType{static_cast<std::uint8_t>(code), 8, 1}; }

struct Mapping {
  at::ScalarType torch;
  DType dtype;
};

const std::vector<Mapping>& mappings() {
  static const std::vector<Mapping> m = {
      {at::kBool, dtypes::kBool},
      {at::kByte, dtypes::kUInt8},
      {at::kChar, dtypes::kInt8},
      {at::kShort, dtypes::kInt16},
      {at::kInt, dtypes::kInt32},
      {at::kLong, dtypes::kInt64},
      {at::kHalf, dtypes::kFloat16},
      {at::kFloat, dtypes::kFloat32},
      {at::kDouble, dtypes::kFloat64},
      {at::kBFloat16, dtypes::kBfloat16},
      {at::kComplexFloat, dtypes::kComplex64},
      {at::kComplexDouble, dtypes::kComplex128},
#if TSHM_TORCH_AT_LEAST(2, 1)
      {at::kFloat8_e4m3fn, float8(DTypeCode::kFloat8_e4m3fn)},
      {at::kFloat8_e5m2, float8(DTypeCode::kFloat8_e5m2)},
#endif
#if TSHM_TORCH_AT_LEAST(2, 2)
      {at::kFloat8_e4m3fnuz, float8(DTypeCode::kFloat8_e4m3fnuz)},
      {at::kFloat8_e5m2fnuz, float8(DTypeCode::kFloat8_e5m2fnuz)},
#endif
#if TSHM_TORCH_AT_LEAST(2, 3)
      {at::kUInt16, dtypes::kUInt16},
      {at::kUInt32, dtypes::kUInt32},
      {at::kUInt64, dtypes::kUInt64},
#endif
  };
  return m;
}

std::vector<std::int64_t> to_vector(at::IntArrayRef a) { return {a.begin(), a.end()}; }

/// The tensor as it will be sent: conjugation and negation bits resolved, a
/// supported dtype, on the CPU or a CUDA device.
at::Tensor sendable(const at::Tensor& tensor, std::string_view name, DType* dtype) {
  if (!tensor.defined()) raise(Errc::invalid_argument, "put '" + std::string(name) + "': the tensor is undefined");
  auto dt = dtype_of(tensor.scalar_type());
  if (!dt)
    raise(Errc::unsupported_dtype, "put '" + std::string(name) + "': torch dtype " +
                                       std::string(c10::toString(tensor.scalar_type())) + " has no tensorshm dtype");
  *dtype = *dt;
  at::Tensor t = tensor.resolve_conj().resolve_neg();
  if (!t.is_cpu() && !t.is_cuda())
    raise(Errc::invalid_argument, "put '" + std::string(name) + "': tensors on " + t.device().str() +
                                      " cannot be put; move them to the CPU or a CUDA device first");
  return t;
}

/// A CUDA tensor the daemon can copy in one piece: dense ones as they are,
/// others packed on the device (on the current stream).
at::Tensor dense_on_device(const at::Tensor& t) { return t.is_non_overlapping_and_dense() ? t : t.contiguous(); }

void* current_stream(const at::Device& device) {
#if TSHM_TORCH_AT_LEAST(2, 3)
  c10::impl::VirtualGuardImpl guard(c10::DeviceType::CUDA);
  return guard.getStream(device).native_handle();
#else
  (void)device;
  raise(Errc::no_gpu, "putting CUDA tensors needs libtorch 2.3 or newer (this one is " TORCH_VERSION ")");
#endif
}

}  // namespace

std::optional<DType> dtype_of(at::ScalarType type) noexcept {
  for (const auto& m : mappings())
    if (m.torch == type) return m.dtype;
  return std::nullopt;
}

std::optional<at::ScalarType> scalar_type_of(DType dtype) noexcept {
  for (const auto& m : mappings())
    if (m.dtype == dtype) return m.torch;
  return std::nullopt;
}

ObjectInfo put(Client& client, std::string_view name, const at::Tensor& tensor, const CreateOptions& options) {
  DType dtype;
  at::Tensor t = sendable(tensor, name, &dtype);
  if (t.is_cpu()) return client.put(name, HostView{t.data_ptr(), dtype, to_vector(t.sizes()), to_vector(t.strides())}, options);
  const at::Tensor src = dense_on_device(t);  // lives until the daemon has copied it
  return put_cuda(client, name, src.data_ptr(), dtype, to_vector(src.sizes()), to_vector(src.strides()),
                  current_stream(src.device()), options);
}

TensorPutFuture put_async(Client& client, std::string_view name, const at::Tensor& tensor,
                          const CreateOptions& options) {
  DType dtype;
  at::Tensor t = sendable(tensor, name, &dtype);
  TensorPutFuture f;
  if (t.is_cpu()) {
    f.done_ = client.put(name, HostView{t.data_ptr(), dtype, to_vector(t.sizes()), to_vector(t.strides())}, options);
    return f;
  }
  f.keep_ = dense_on_device(t);
  const auto shape = to_vector(f.keep_.sizes());
  const auto strides = to_vector(f.keep_.strides());
  f.pending_.emplace(put_cuda_async(client, name, f.keep_.data_ptr(), dtype, shape, strides,
                                    current_stream(f.keep_.device()), options));
  return f;
}

ObjectInfo TensorPutFuture::get() {
  if (!done_) {
    if (!pending_) raise(Errc::not_open, "this TensorPutFuture holds no put");
    done_ = pending_->get();
    pending_.reset();
    keep_ = at::Tensor();
  }
  return *done_;
}

at::Tensor as_tensor(const Object& object) {
  if (!object.valid()) raise(Errc::not_open, "as_tensor: the object was released");
  const auto type = scalar_type_of(object.dtype());
  if (!type)
    raise(Errc::unsupported_dtype, "'" + object.info().name + "' holds " + dtype_name(object.dtype()) +
                                       ", which this libtorch (" TORCH_VERSION ") has no dtype for");
  std::shared_ptr<const void> lease = object.keep_alive();
  // from_blob never writes; the tensor is read-only by contract (see the header).
  return at::from_blob(const_cast<void*>(object.data()), object.shape(), object.strides(),
                       [lease](void*) mutable { lease.reset(); }, at::TensorOptions().dtype(*type));
}

at::Tensor get_tensor(Client& client, std::string_view name, const GetOptions& options) {
  return as_tensor(client.get(name, options));
}

}  // namespace tensorshm
