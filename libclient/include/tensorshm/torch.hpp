// tensorshm for libtorch: hand a torch::Tensor to other processes and get
// zero-copy tensors back.
//
//   auto c = tensorshm::Client::connect();
//   tensorshm::put(c, "features", t);          // CPU or CUDA tensor
//   at::Tensor v = tensorshm::get_tensor(c, "features");   // CPU, no copy
//
// CUDA tensors are copied by the daemon straight from GPU memory into shared
// memory, ordered after the work queued on the tensor's device's current
// stream (no synchronize on the producer's side; see tensorshm/cuda.hpp).
// Dense tensors (any order, no gaps) go as they are; others are first packed
// on the device with .contiguous(), and the temporary lives until the daemon
// has copied it.
//
// Tensors from get_tensor()/as_tensor() view read-only shared memory: do not
// write into them (the process faults) and do not resize them. Their storage
// holds the object's lease; the daemon keeps the version until the last
// tensor or view sharing it is gone.
//
// Link tensorshm::torch (built with -DTENSORSHM_TORCH=ON). The library must be
// built with the same _GLIBCXX_USE_CXX11_ABI as the libtorch it uses (every
// libtorch since 2.7 and Debian's use the new ABI, like this project).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string_view>

#include "tensorshm/client.hpp"
#include "tensorshm/cuda.hpp"

namespace tensorshm {

/// The tensorshm dtype of a torch scalar type; empty when it has none
/// (quantized types, and types this libtorch does not have).
std::optional<DType> dtype_of(at::ScalarType type) noexcept;
/// The torch scalar type of a tensorshm dtype; empty when this libtorch has
/// none (uint16/32/64 before torch 2.3, float8 before 2.1).
std::optional<at::ScalarType> scalar_type_of(DType dtype) noexcept;

/// Puts a CPU or CUDA tensor as a new version of `name` and returns once the
/// data may be modified again. Errors as Client::put and put_cuda, plus
/// unsupported_dtype and invalid_argument (tensors on other devices).
ObjectInfo put(Client& client, std::string_view name, const at::Tensor& tensor, const CreateOptions& options = {});

/// A CUDA put in flight (for CPU tensors the put is already done). Holds the
/// tensor (or its packed copy) until the daemon has copied it.
class TensorPutFuture {
 public:
  TensorPutFuture() = default;
  bool ready() const { return !pending_ || pending_->ready(); }
  /// Waits for the daemon's answer; the tensor is released afterwards.
  ObjectInfo get();

 private:
  friend TensorPutFuture put_async(Client&, std::string_view, const at::Tensor&, const CreateOptions&);
  std::optional<CudaPutFuture> pending_;
  std::optional<ObjectInfo> done_;
  at::Tensor keep_;
};

/// put() without waiting for the daemon's copy of a CUDA tensor: the caller
/// may queue more GPU work at once (the copy is ordered after what was queued
/// before this call), but must not write into the tensor until get().
TensorPutFuture put_async(Client& client, std::string_view name, const at::Tensor& tensor,
                          const CreateOptions& options = {});

/// A CPU tensor over a got object's memory, with the object's shape, strides
/// and dtype. Its storage shares the object's lease.
at::Tensor as_tensor(const Object& object);

/// get() + as_tensor(): the latest (or a newer) version of `name`.
at::Tensor get_tensor(Client& client, std::string_view name, const GetOptions& options = {});

}  // namespace tensorshm
