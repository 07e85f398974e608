// The libtorch adapter on a GPU (tensorshm/torch.hpp): CUDA tensors put from
// the current stream with no synchronize, strided ones packed on the device,
// asynchronous puts, read back as zero-copy CPU tensors. Needs a running
// tensorshmd ($TENSORSHM_SOCKET). Prints PASS/FAIL lines; exit code = failures.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Sleep.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "tensorshm/torch.hpp"

namespace {

bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) return false;
  const auto x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.numel() * x.element_size()) == 0;
}

void expect(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error(what);
}

}  // namespace

int main() {
  auto c = tensorshm::Client::connect();
  const auto cuda = at::TensorOptions().device(at::kCUDA);
  std::vector<std::pair<std::string, std::function<void()>>> checks = {
      {"float32 and bfloat16 tensors from a kernel still running", [&] {
         for (auto type : {at::kFloat, at::kBFloat16, at::kHalf, at::kLong, at::kBool}) {
           at::Tensor t = at::rand({333, 517}, cuda).mul(100).to(type);
           at::cuda::sleep(50'000'000);
           t = t.add(1).to(type);  // queued behind the sleep
           tensorshm::put(c, "torch/gpu/t", t);
           expect(same_bits(tensorshm::get_tensor(c, "torch/gpu/t"), t.cpu()), std::string(c10::toString(type)));
         }
       }},
      {"a strided tensor is packed on the device", [&] {
         at::Tensor m = at::randn({256, 300}, cuda);
         at::Tensor v = m.slice(1, 0, 300, 3);
         tensorshm::put(c, "torch/gpu/strided", v);
         expect(same_bits(tensorshm::get_tensor(c, "torch/gpu/strided"), v.cpu()), "values");
         at::Tensor tt = m.t();
         auto info = tensorshm::put(c, "torch/gpu/transposed", tt);
         expect(info.strides == std::vector<std::int64_t>{1, 300}, "Fortran order kept");
         expect(same_bits(tensorshm::get_tensor(c, "torch/gpu/transposed"), tt.cpu()), "transposed values");
       }},
      {"a side stream's work is waited for", [&] {
         auto s = c10::cuda::getStreamFromPool();
         c10::cuda::CUDAStreamGuard guard(s);
         at::Tensor t = at::zeros({1 << 22}, cuda);
         at::cuda::sleep(100'000'000);
         t.fill_(3);
         tensorshm::put(c, "torch/gpu/side", t);
         expect(tensorshm::get_tensor(c, "torch/gpu/side").eq(3).all().item<bool>(), "value 3 everywhere");
       }},
      {"eight asynchronous puts keep their tensors alive", [&] {
         std::vector<tensorshm::TensorPutFuture> fs;
         std::vector<at::Tensor> expected;
         for (int i = 0; i < 8; ++i) {
           at::Tensor t = at::full({1 << 20}, i, cuda);
           expected.push_back(t.cpu());
           fs.push_back(tensorshm::put_async(c, "torch/gpu/async/" + std::to_string(i), t.mul(2)));
         }
         for (auto& f : fs) f.get();
         for (int i = 0; i < 8; ++i)
           expect(same_bits(tensorshm::get_tensor(c, "torch/gpu/async/" + std::to_string(i)), expected[i].mul(2)),
                  "async " + std::to_string(i));
       }},
  };
  int failures = 0;
  for (auto& [name, run] : checks) {
    try {
      run();
      std::printf("PASS %s\n", name.c_str());
    } catch (const std::exception& e) {
      ++failures;
      std::printf("FAIL %s: %s\n", name.c_str(), e.what());
    }
  }
  std::printf("%zu of %zu torch adapter checks passed\n", checks.size() - failures, checks.size());
  return failures;
}
