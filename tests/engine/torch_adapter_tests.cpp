// The libtorch adapter against the real daemon: CPU tensors of every dtype
// this libtorch has round-trip bit-exactly, layouts are kept (dense) or packed
// (gaps, broadcasts), got tensors are zero-copy views whose storage holds the
// lease, and CUDA tensors (on a GPU machine) go through the daemon's copy.
#include "tensorshm/torch.hpp"

// libtorch's glog defines CHECK macros; the tests mean doctest's.
#undef CHECK
#undef CHECK_EQ
#undef CHECK_NE
#undef CHECK_LT
#undef CHECK_LE
#undef CHECK_GT
#undef CHECK_GE
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstring>
#include <string>

#include "daemon_fixture.hpp"

using namespace tensorshm;
using tshm_test::Daemon;

namespace {

/// Bitwise equality (NaNs included), for any dtype.
bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) return false;
  const auto x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.numel() * x.element_size()) == 0;
}

at::Tensor sample(at::ScalarType type, at::IntArrayRef shape) {
  auto base = at::arange(0, at::IntArrayRef(shape).empty() ? 1 : c10::multiply_integers(shape), at::kDouble)
                  .reshape(shape)
                  .mul(0.37)
                  .sub(3);
  if (type == at::kBool) return base.gt(0);
  if (at::isComplexType(type)) return at::complex(base.to(at::toRealValueType(type)), base.neg().to(at::toRealValueType(type)));
  return base.to(type);
}

}  // namespace

TEST_SUITE("torch adapter") {

TEST_CASE("CPU tensors of every dtype round-trip bit-exactly and come back as views of shared memory") {
  Daemon d;
  auto c = d.connect();
  for (auto type : {at::kBool, at::kByte, at::kChar, at::kShort, at::kInt, at::kLong, at::kHalf, at::kFloat,
                    at::kDouble, at::kBFloat16, at::kComplexFloat, at::kComplexDouble}) {
    CAPTURE(c10::toString(type));
    const at::Tensor t = sample(type, {3, 5});
    const std::string name = std::string("torch/") + c10::toString(type);
    auto info = put(c, name, t);
    CHECK(info.dtype == *dtype_of(type));
    auto obj = c.get(name);
    at::Tensor back = as_tensor(obj);
    CHECK(back.data_ptr() == obj.data());  // no copy
    CHECK(same_bits(back, t));
  }
}

TEST_CASE("shapes: 0-d, empty and many dimensions round-trip") {
  Daemon d;
  auto c = d.connect();
  for (auto shape : {std::vector<std::int64_t>{}, std::vector<std::int64_t>{0}, std::vector<std::int64_t>{2, 0, 3},
                     std::vector<std::int64_t>(12, 2)}) {
    const at::Tensor t = sample(at::kFloat, shape);
    put(c, "torch/shape", t);
    at::Tensor back = get_tensor(c, "torch/shape");
    CHECK(back.sizes() == t.sizes());
    CHECK(same_bits(back, t));
  }
}

TEST_CASE("a transposed tensor keeps its layout and a strided or broadcast one is packed") {
  Daemon d;
  auto c = d.connect();
  const at::Tensor m = sample(at::kFloat, {4, 6});
  auto info = put(c, "torch/t", m.t());
  CHECK(info.strides == std::vector<std::int64_t>{1, 6});  // Fortran order kept
  CHECK(same_bits(get_tensor(c, "torch/t"), m.t()));

  const at::Tensor cols = m.slice(1, 0, 6, 2);  // gaps
  put(c, "torch/cols", cols);
  CHECK(same_bits(get_tensor(c, "torch/cols"), cols));

  const at::Tensor row = sample(at::kInt, {1, 5}).expand({3, 5});  // stride 0
  put(c, "torch/bcast", row);
  at::Tensor back = get_tensor(c, "torch/bcast");
  CHECK(back.stride(0) == 5);
  CHECK(same_bits(back, row));
}

TEST_CASE("conjugated and negated views are resolved before the put") {
  Daemon d;
  auto c = d.connect();
  const at::Tensor z = sample(at::kComplexFloat, {2, 3});
  put(c, "torch/conj", z.conj());
  CHECK(same_bits(get_tensor(c, "torch/conj"), z.conj().resolve_conj()));
}

TEST_CASE("a got tensor's storage holds the lease until the last view is gone") {
  Daemon d;
  auto c = d.connect();
  put(c, "torch/lease", sample(at::kFloat, {8}));
  {
    at::Tensor view;
    {
      at::Tensor t = get_tensor(c, "torch/lease");
      view = t.slice(0, 2, 4);
      CHECK(c.stat("torch/lease").leases == 1);
    }
    CHECK(c.stat("torch/lease").leases == 1);  // the slice still holds it
    CHECK(view.numel() == 2);
  }
  CHECK(c.stat("torch/lease").leases == 0);
}

TEST_CASE("a dtype torch lacks fails with unsupported_dtype, naming it") {
  Daemon d;
  auto c = d.connect();
  const std::uint32_t v[2] = {1, 2};
  c.put("torch/u32", HostView{v, dtypes::kUInt32, {2}, {}});
  if (scalar_type_of(dtypes::kUInt32)) {
    CHECK(get_tensor(c, "torch/u32").numel() == 2);
    return;
  }
  try {
    (void)get_tensor(c, "torch/u32");
    FAIL("uint32 became a tensor in a libtorch without uint32");
  } catch (const Exception& e) {
    CHECK(e.code() == Errc::unsupported_dtype);
    CHECK(std::string(e.what()).find("uint32") != std::string::npos);
  }
}

TEST_CASE("CUDA tensors are copied by the daemon, ordered after the current stream") {
  if (!at::hasCUDA() || at::getNumGPUs() == 0) {
    MESSAGE("skipped: this libtorch has no CUDA device (at::hasCUDA() is false); tests/gpu/run.sh covers it");
    return;
  }
  Daemon d;
  auto c = d.connect();
  if (c.daemon_info().cuda_devices == 0) {
    MESSAGE("skipped: the daemon found no GPU");
    return;
  }
  const at::Tensor g = sample(at::kFloat, {256, 257}).to(at::kCUDA).mul(2);  // queued, not synchronized
  put(c, "torch/cuda", g);
  CHECK(same_bits(get_tensor(c, "torch/cuda"), g.cpu()));
  const at::Tensor packed = g.slice(1, 0, 257, 3);
  put(c, "torch/cuda-strided", packed);
  CHECK(same_bits(get_tensor(c, "torch/cuda-strided"), packed.cpu()));
}

}  // TEST_SUITE
