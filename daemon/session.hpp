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
#include <string>
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

  /// Bytes a frame may carry before the peer said Hello (Hello itself is a
  /// few dozen): a stranger cannot make the daemon allocate more.
  static constexpr std::size_t kMaxPayloadBeforeHello = 4 * 1024;
  /// Release warnings logged per connection; the rest are counted and
  /// reported once when it ends.
  static constexpr std::uint32_t kReleaseWarnings = 8;

  Session(Server& server, unix_socket socket, std::uint64_t id, io::PeerCred cred);
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
  /// Ensures at least `n` unread bytes are buffered. The buffer grows with
  /// the bytes that arrive (at most doubling), never ahead of them.
  awaitable<bool> fill(std::size_t n);
  /// Reads what the socket has into [p, p + n), waiting until it has
  /// something. Returns the bytes read, 0 at the end of the connection or on
  /// a failure (logged). A frame that carries descriptors ends the
  /// connection: the protocol never asks a client for one (they are closed
  /// on the closer thread, never here).
  awaitable<std::size_t> read_some(std::byte* p, std::size_t n);
  /// Takes descriptors a client sent: queued for closing off the io thread.
  /// Returns false (after logging) when there were any.
  bool refuse_descriptors(const char* when);
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
  /// While a request waits: notices the peer hanging up, and buffers what it
  /// sends meanwhile (the start of its next request) so that a byte sent
  /// before hanging up cannot hide the hang-up. Ends the wait (peer_gone_)
  /// when the peer leaves or sends descriptors; stops watching when what it
  /// sends no longer fits the read buffer. `generation` ties it to one wait.
  void watch_peer(const std::shared_ptr<asio::steady_timer>& timer, std::uint64_t generation);
  /// Closes a connection that has not said Hello in time.
  void arm_hello_timer();

  Server& server_;
  unix_socket socket_;
  Caller caller_;
  io::PeerCred cred_;
  bool said_hello_ = false;
  std::string client_name_ = "(unnamed)";  // what Hello said, printable; for the log
  bool peer_gone_ = false;
  asio::steady_timer write_timer_;
  asio::steady_timer hello_timer_;
  std::vector<int> fds_;                        // descriptors a read brought (always refused)
  std::uint64_t watch_generation_ = 0;          // bumped when a wait ends: older watches do nothing
  std::uint32_t release_warnings_ = 0;          // Release failures of this connection
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
