// One client connection: a coroutine that reads a frame, verifies it, routes
// it to a small named handler and writes the reply, until the peer leaves or
// misbehaves. When it ends, every lease of the connection is released and
// every object it left open is aborted.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <vector>

#include "asio.hpp"
#include "registry.hpp"
#include "tensorshm/io.hpp"
#include "tensorshm/protocol.hpp"

namespace tensorshm::daemon {

class Server;

class Session : public std::enable_shared_from_this<Session> {
 public:
  /// Bytes read ahead per connection; larger frames grow it for their time.
  static constexpr std::size_t kReadBuffer = 8 * 1024;

  Session(Server& server, unix_socket socket, std::uint64_t id, io::PeerCred cred, bool refuse_reason_set,
          Error refuse_reason);
  ~Session();

  /// Serves the connection until it ends; then cleans up.
  awaitable<void> run();
  /// Closes the socket (server shutdown); run() then ends.
  void close();
  std::uint64_t id() const noexcept { return caller_.session; }
  const Caller& caller() const noexcept { return caller_; }
  /// Leases and open creates held (for tests and stats).
  std::size_t lease_count() const noexcept { return leases_.size(); }

  /// A reply: a message and, for MapSegment, one descriptor.
  struct Reply {
    wire::BodyUnion body;
    int fd = -1;
  };

 private:
  /// Reads the next frame into rbuf_ (one read(2) usually brings header and
  /// payload together); *payload views it until the next call.
  awaitable<bool> read_frame(protocol::FrameHeader& h, std::span<const std::byte>* payload);
  /// Ensures at least `n` unread bytes are buffered.
  awaitable<bool> fill(std::size_t n);
  awaitable<bool> send(const std::vector<std::byte>& frame, int fd);
  awaitable<Reply> dispatch(protocol::Message& msg);
  void cleanup();

  // Handlers, one per request type.
  Reply on_hello(const wire::HelloT& m);
  awaitable<Reply> on_create(wire::CreateObjectT& m);
  /// Creates an object, waiting up to timeout_ms for pool space.
  awaitable<Result<Object*>> create_waiting(const CreateParams& p, std::int64_t timeout_ms);
  Reply on_seal(const wire::SealT& m);
  /// Create, copy the frame's bytes in (straight from the verified payload),
  /// seal: a small put in one round trip.
  awaitable<Reply> on_put_bytes(const wire::PutBytes& m);
  Reply on_abort(const wire::AbortT& m);
  /// Get, Release and PutBytes, once the session said hello, come only this
  /// way: straight from the verified payload (Get's reply built without
  /// intermediate objects). Returns false to end the session.
  awaitable<bool> serve_fast(const protocol::FrameHeader& h, const wire::Message& msg);
  /// Finds (waiting up to timeout_ms) and leases the version a Get asks for.
  awaitable<Result<Object*>> lease_for_get(const std::string& name, std::uint64_t newer_than,
                                           std::int64_t timeout_ms);
  /// Releases one lease of this connection.
  Status release_lease(std::uint64_t object_id);
  Reply on_delete(const wire::DeleteT& m);
  Reply on_list(const wire::ListT& m);
  Reply on_stat(const wire::StatT& m);
  Reply on_stats();
  Reply on_map_segment(const wire::MapSegmentT& m);
  awaitable<Reply> on_cuda_put(wire::CudaPutT& m);
  Reply on_cuda_forget(const wire::CudaForgetT& m);

  /// Waits until `ready()` stops failing with `retry_on`, the deadline passes
  /// or the peer disconnects; the timer is woken through `park`.
  template <class Ready, class Park>
  awaitable<decltype(std::declval<Ready>()())> wait_until(Ready ready, Park park, Errc retry_on,
                                                          std::int64_t timeout_ms);
  void watch_peer(const std::shared_ptr<asio::steady_timer>& timer);

  Server& server_;
  unix_socket socket_;
  Caller caller_;
  io::PeerCred cred_;
  bool refuse_ = false;
  Error refuse_reason_;
  bool said_hello_ = false;
  bool peer_gone_ = false;
  asio::steady_timer write_timer_;
  std::vector<std::byte> rbuf_ = std::vector<std::byte>(kReadBuffer);
  std::vector<std::byte> wbuf_;                 // the reply being sent
  std::vector<std::uint64_t> scratch_;          // realigned payloads
  flatbuffers::FlatBufferBuilder fbb_{1024};    // reused for every reply
  std::size_t rbegin_ = 0;  // first unread byte in rbuf_
  std::size_t rend_ = 0;    // one past the last buffered byte
  std::map<std::uint64_t, std::uint32_t> leases_;  // object id -> count
  std::set<std::uint64_t> open_;                    // objects created, not yet sealed/aborted
  std::weak_ptr<asio::steady_timer> wait_timer_;    // the timer of a waiting request, if any
};

/// The wire form of a registry object.
std::unique_ptr<wire::ObjectDescT> describe(const Object& o);

}  // namespace tensorshm::daemon
