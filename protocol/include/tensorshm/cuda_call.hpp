// One checked wrapper for CUDA runtime calls, the twin of posix_call (house
// style, after iceoryx's IOX_POSIX_CALL): it records the call's name, the
// object it acted on and the cudaError_t, and maps them to the error enum.
// Only translation units built against the CUDA toolkit include it (the
// daemon's runtime CUDA interface and the client's GPU producer).
#pragma once

#include <cuda_runtime_api.h>

#include <string>
#include <string_view>

#include "tensorshm/error.hpp"

namespace tensorshm {

/// True for the errors that mean "no usable GPU here" rather than "this call
/// went wrong": no driver, a driver too old for this runtime, no device.
inline bool cuda_means_no_gpu(cudaError_t e) noexcept {
  return e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver || e == cudaErrorCompatNotSupportedOnDevice ||
         e == cudaErrorSystemDriverMismatch;
}

/// True for the errors that poison the process's CUDA context: every later
/// call fails the same way until the process restarts (CUDA runtime API
/// documentation of each: "the process must be terminated and relaunched").
inline bool cuda_poisons_context(cudaError_t e) noexcept {
  switch (e) {
    case cudaErrorECCUncorrectable:
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchTimeout:
    case cudaErrorAssert:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorLaunchFailure:
      return true;
    default:
      return false;
  }
}

/// "<call>(<object>): cudaErrorX: <description> (error N)", with Errc::no_gpu
/// for the no-GPU errors and Errc::cuda_error for the others.
inline Error cuda_error(std::string_view call, std::string_view object, cudaError_t e) {
  std::string m;
  m.append(call).append("(").append(object).append("): ");
  m.append(cudaGetErrorName(e)).append(": ").append(cudaGetErrorString(e));
  m.append(" (error ").append(std::to_string(static_cast<int>(e))).append(")");
  return Error{cuda_means_no_gpu(e) ? Errc::no_gpu : Errc::cuda_error, std::move(m)};
}

/// Runs fn() (a CUDA runtime call returning cudaError_t). On failure it
/// clears the runtime's last-error slot, so that a non-sticky error does not
/// leak into the next call, and returns cuda_error(call, object, e).
template <class Fn>
Status cuda_call(std::string_view call, std::string_view object, Fn&& fn) {
  const cudaError_t e = fn();
  if (e == cudaSuccess) return ok_status();
  (void)cudaGetLastError();
  return cuda_error(call, object, e);
}

}  // namespace tensorshm
