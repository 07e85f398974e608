// tshm_test_peer: the "other process" of the integration tests. It talks to
// the daemon at $TENSORSHM_SOCKET through the public C++ client and reports
// one line per step on stdout, so that the test can follow it:
//
//   put NAME BYTES SEED          put BYTES pattern bytes; "put version=V checksum=C"
//   get NAME [NEWER TIMEOUT_MS]  "waiting", then "got version=V nbytes=N checksum=C
//                                readonly=0|1 path=P" or "error code=ERRC ..."
//   hold NAME                    get and keep the lease ("held version=V checksum=C")
//                                until stdin closes, then release ("released")
//   create-and-hang NAME BYTES   create without sealing ("created id=I"); waits
//                                for stdin to close (the Buffer then aborts)
//   scribble NAME                get, then write through the read-only pointer:
//                                expected to die of SIGSEGV
//
// Exit status: 0 on success, 3 when the daemon answered with an error, 2 on
// bad usage.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "tensorshm/client.hpp"
#include "test_data.hpp"

using namespace tensorshm;

namespace {

void say(const std::string& line) {
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

void wait_for_stdin_eof() {
  char buf[64];
  while (::read(STDIN_FILENO, buf, sizeof buf) > 0) {
  }
}

std::string describe(const Object& o) {
  const auto m = tshm_test::mapping_of(o.data());
  return "version=" + std::to_string(o.version()) + " nbytes=" + std::to_string(o.nbytes()) +
         " checksum=" + tshm_test::hex(tshm_test::checksum(o.data(), o.nbytes())) +
         " readonly=" + (m.read_only_shared() ? "1" : "0") + " path=" + m.path;
}

int run(int argc, char** argv) {
  if (argc < 3) return 2;
  const std::string cmd = argv[1];
  const std::string name = argv[2];
  Client c = Client::connect(Client::Options{"", "tshm_test_peer " + cmd});
  if (cmd == "put" && argc == 5) {
    const std::size_t n = std::stoull(argv[3]);
    auto b = c.create(name, dtypes::kUInt8, {static_cast<std::int64_t>(n)});
    tshm_test::fill_pattern(b.data(), n, std::stoull(argv[4]));
    const std::uint64_t sum = tshm_test::checksum(b.data(), n);
    auto info = b.seal();
    say("put version=" + std::to_string(info.version) + " checksum=" + tshm_test::hex(sum));
    return 0;
  }
  if (cmd == "get" && (argc == 3 || argc == 5)) {
    GetOptions opt;
    if (argc == 5) {
      opt.newer_than = std::stoull(argv[3]);
      opt.timeout = std::chrono::milliseconds(std::stoll(argv[4]));
    }
    say("waiting");
    Object o = c.get(name, opt);
    say("got " + describe(o));
    return 0;
  }
  if (cmd == "hold" && argc == 3) {
    Object o = c.get(name);
    say("held " + describe(o));
    wait_for_stdin_eof();
    o.release();
    (void)c.stats();  // the release has been processed once this returns
    say("released");
    return 0;
  }
  if (cmd == "create-and-hang" && argc == 4) {
    auto b = c.create(name, dtypes::kUInt8, {static_cast<std::int64_t>(std::stoull(argv[3]))});
    std::memset(b.data(), 0x5a, b.nbytes());
    say("created id=" + std::to_string(b.info().object_id));
    wait_for_stdin_eof();
    return 0;
  }
  if (cmd == "scribble" && argc == 3) {
    Object o = c.get(name);
    ::signal(SIGSEGV, SIG_DFL);  // die of the fault even where a sanitizer installed a handler
    say("writing " + describe(o));
    volatile auto* p = static_cast<volatile std::uint8_t*>(const_cast<void*>(o.data()));
    p[0] = static_cast<std::uint8_t>(p[0] + 1);
    say("wrote");
    return 0;
  }
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Exception& e) {
    say("error code=" + std::string(errc_name(e.code())) + " message=" + e.what());
    return 3;
  }
}
