// The CUDA copy engine seen from the control plane: submit a device-to-host
// copy out of a producer's exported allocation into a pool extent, be told on
// the io_context thread when it is done. Implementations: the real one over
// CUDA (cuda_copy_engine.cpp) and a host-memory one for logic tests. Everything
// CUDA sits behind this interface.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "tensorshm/error.hpp"

namespace tensorshm::daemon {

class CopyEngine {
 public:
  struct Request {
    std::uint64_t session = 0;                 // producer connection
    int device = 0;                            // producer's ordinal (informational)
    std::array<std::uint8_t, 16> device_uuid{};  // which GPU holds the memory
    std::array<std::uint8_t, 64> mem_handle{};   // cudaIpcMemHandle_t bytes
    std::uint64_t alloc_offset = 0;            // bytes into the allocation
    std::array<std::uint8_t, 64> event_handle{}; // cudaIpcEventHandle_t bytes
    void* dst = nullptr;                       // pinned pool memory
    std::uint64_t nbytes = 0;
    std::string object_name;                   // for error messages
  };
  using Done = std::function<void(Status)>;

  virtual ~CopyEngine() = default;
  /// GPUs this engine can copy from; 0 means CPU-only.
  virtual int device_count() const noexcept = 0;
  /// Queues the copy; `done` runs later on the io_context thread, exactly once.
  virtual void submit(Request request, Done done) = 0;
  /// The producer freed the allocation behind this handle: close it.
  virtual void forget_handle(std::uint64_t session, const std::array<std::uint8_t, 64>& handle) = 0;
  /// The producer disconnected: close its handles once its copies finish.
  virtual void session_closed(std::uint64_t session) = 0;
  /// Empty while GPU puts can work; otherwise why they cannot (for the
  /// service status line). Any thread.
  virtual std::string trouble() const { return {}; }
};

}  // namespace tensorshm::daemon

namespace boost::asio {
class io_context;
}

namespace tensorshm::daemon {

class Pool;
struct Config;

/// The CUDA engine when this build has one and the machine has a driver and
/// devices; otherwise nullptr (after logging why, once). It pins the pool's
/// segments (and later dedicated ones) through the pool's hooks.
std::unique_ptr<CopyEngine> make_cuda_copy_engine(const Config& config, boost::asio::io_context& io, Pool& pool);

}  // namespace tensorshm::daemon
