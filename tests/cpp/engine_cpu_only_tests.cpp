// The GPU path on a machine without a GPU: the real tensorshmd (built with or
// without CUDA) finds no driver or device, says so once and serves CPU-only;
// a CUDA put then fails with no_gpu for that request alone, and a client's
// put_cuda fails with no_gpu before it reaches the daemon.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "daemon_fixture.hpp"
#include "tensorshm/client.hpp"
#include "tensorshm/cuda.hpp"

using namespace tensorshm;
using tshm_test::Daemon;
using tshm_test::RawSocket;

namespace {

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

wire::CudaPutT a_cuda_put(const std::string& name) {
  wire::CudaPutT m;
  m.name = name;
  m.dtype = std::make_unique<wire::DType>(protocol::to_wire(dtypes::kFloat32));
  m.shape = {4, 4};
  m.device = 0;
  m.mem_handle.assign(64, 1);
  m.event_handle.assign(64, 2);
  return m;
}

}  // namespace

TEST_SUITE("gpu path without a gpu") {

TEST_CASE("a daemon that finds no GPU says so once, reports 0 devices and serves CPU puts") {
  Daemon d;
  auto c = d.connect();
  CHECK(c.daemon_info().cuda_devices == 0);
  CHECK(c.stats().cuda_devices == 0);
  const std::vector<float> v{1, 2, 3};
  HostView view{v.data(), dtypes::kFloat32, {3}, {}};
  CHECK(c.put("cpu/still/works", view).version > 0);
  const std::string log = d.log();
  CHECK(has(log, "CPU-only"));
  CHECK(log.find("CPU-only") == log.rfind("CPU-only"));  // once
}

TEST_CASE("a CUDA put to a daemon serving CPU-only fails with no_gpu and leaves nothing behind") {
  Daemon d;
  RawSocket raw(d.socket_path());
  raw.hello();
  raw.send(a_cuda_put("gpu/frame"));
  auto r = raw.reply();
  const auto* e = r->body.AsErrorReply();
  REQUIRE(e != nullptr);
  CHECK(static_cast<Errc>(e->code) == Errc::no_gpu);
  CHECK(has(e->message, "this daemon has no GPU"));
  CHECK(has(e->message, "gpu/frame"));

  // The connection goes on: a forget is accepted, a CPU put works.
  wire::CudaForgetT forget;
  forget.mem_handle.assign(64, 1);
  raw.send(std::move(forget), 2);
  CHECK(raw.reply()->body.AsOk() != nullptr);
  auto c = d.connect();
  CHECK(c.stats().open_creates == 0);
  CHECK_THROWS_AS(c.stat("gpu/frame"), Exception);
}

TEST_CASE("a CUDA put with malformed handles is refused as an invalid argument or no_gpu, never a crash") {
  Daemon d;
  RawSocket raw(d.socket_path());
  raw.hello();
  auto m = a_cuda_put("gpu/short-handle");
  m.mem_handle.assign(10, 1);
  raw.send(std::move(m));
  auto r = raw.reply();
  const auto* e = r->body.AsErrorReply();
  REQUIRE(e != nullptr);
  const auto code = static_cast<Errc>(e->code);
  INFO("the daemon said: " << errc_name(code) << ": " << e->message);
  CHECK((code == Errc::invalid_argument || code == Errc::no_gpu));
  CHECK(d.running());
}

TEST_CASE("with --cuda off the daemon says CUDA is disabled and serves CPU-only") {
  Daemon::Options o;
  o.extra_args = {"--cuda", "off"};
  Daemon d(o);
  CHECK(d.connect().daemon_info().cuda_devices == 0);
  CHECK(has(d.log(), "CUDA disabled by configuration"));
}

TEST_CASE("put_cuda on a machine without a CUDA driver fails with no_gpu before reaching the daemon") {
  Daemon d;
  auto c = d.connect();
  const std::int64_t shape[] = {16};
  static float not_device_memory[16];
  try {
    (void)put_cuda(c, "gpu/none", not_device_memory, dtypes::kFloat32, shape, {}, nullptr);
    FAIL("put_cuda succeeded without a GPU");
  } catch (const Exception& e) {
    CHECK(e.code() == Errc::no_gpu);
    MESSAGE("put_cuda said: " << std::string(e.what()));
  }
  CHECK(c.stats().open_creates == 0);
}

TEST_CASE("an empty tensor from a GPU producer needs no GPU on the producer's side") {
  Daemon d;
  auto c = d.connect();
  const std::int64_t shape[] = {0, 3};
  if (!cuda_supported()) {
    CHECK_THROWS_AS((void)put_cuda(c, "gpu/empty", nullptr, dtypes::kFloat32, shape, {}, nullptr), Exception);
    return;
  }
  // The client sends it without touching CUDA; this daemon has no GPU.
  try {
    (void)put_cuda(c, "gpu/empty", nullptr, dtypes::kFloat32, shape, {}, nullptr);
    FAIL("a daemon without a GPU accepted a CUDA put");
  } catch (const Exception& e) {
    CHECK(e.code() == Errc::no_gpu);
    CHECK(has(e.what(), "this daemon has no GPU"));
  }
}

}  // TEST_SUITE
