// put_cuda against a live tensorshmd on a GPU machine ($TENSORSHM_SOCKET),
// from C++ alone, so that the GPU path is proven even where the Python
// package cannot be built. Each check prints "PASS <name>" or
// "FAIL <name>: <why>"; the exit code is the number of failures.
//
//   tshm_gpu_check            all checks
//   tshm_gpu_check <substr>   the checks whose name contains <substr>
#include <cuda_runtime_api.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "gpu_kernels.hpp"
#include "tensorshm/client.hpp"
#include "tensorshm/cuda.hpp"

using namespace tensorshm;

namespace {

void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

template <class T>
void fill(T* p, std::size_t n, T base, cudaStream_t s, long long cycles = 0) {
  cuda_ok(tshm_gpu::launch_slow_fill<T>(p, n, base, s, cycles), "slow_fill launch");
}

template <class T>
bool holds(const Object& o, std::size_t n, T base) {
  const T* p = static_cast<const T*>(o.data());
  for (std::size_t i = 0; i < n; ++i)
    if (p[i] != static_cast<T>(base + static_cast<T>(i % 251))) return false;
  return true;
}

template <class T>
struct DeviceBuffer {
  T* p = nullptr;
  std::size_t n = 0;
  explicit DeviceBuffer(std::size_t count) : n(count) { cuda_ok(cudaMalloc(reinterpret_cast<void**>(&p), count * sizeof(T) + 1), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(p); }
};

constexpr long long kSlow = 200'000'000;  // ~0.1 s at 2 GHz: the put is issued long before the data exists

struct Check {
  const char* name;
  std::function<void()> run;
};

#define EXPECT(cond)                                                                           \
  do {                                                                                         \
    if (!(cond)) throw std::runtime_error(std::string("expected ") + #cond + " (line " + std::to_string(__LINE__) + ")"); \
  } while (0)

std::vector<Check> checks() {
  return {
      {"float32 from a kernel still running on the legacy default stream",
       [] {
         auto c = Client::connect();
         DeviceBuffer<float> d(1 << 20);
         for (int i = 0; i < 5; ++i) {
           fill<float>(d.p, d.n, float(i * 1000), nullptr, kSlow);
           const std::int64_t shape[] = {1024, 1024};
           put_cuda(c, "gpu/check/f32", d.p, dtypes::kFloat32, shape, {}, nullptr);
           auto o = c.get("gpu/check/f32");
           EXPECT(holds<float>(o, d.n, float(i * 1000)));
         }
       }},
      {"int8, int64 and float64 from a non-blocking stream",
       [] {
         auto c = Client::connect();
         cudaStream_t s;
         cuda_ok(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
         DeviceBuffer<std::int8_t> a(4097);
         DeviceBuffer<std::int64_t> b(3333);
         DeviceBuffer<double> f(777);
         fill<std::int8_t>(a.p, a.n, 3, s, kSlow);
         fill<std::int64_t>(b.p, b.n, 1ll << 40, s, kSlow);
         fill<double>(f.p, f.n, 0.5, s, kSlow);
         const std::int64_t sa[] = {4097}, sb[] = {3, 1111}, sf[] = {7, 111};
         put_cuda(c, "gpu/check/i8", a.p, dtypes::kInt8, sa, {}, s);
         put_cuda(c, "gpu/check/i64", b.p, dtypes::kInt64, sb, {}, s);
         put_cuda(c, "gpu/check/f64", f.p, dtypes::kFloat64, sf, {}, s);
         EXPECT(holds<std::int8_t>(c.get("gpu/check/i8"), a.n, 3));
         EXPECT(holds<std::int64_t>(c.get("gpu/check/i64"), b.n, 1ll << 40));
         EXPECT(holds<double>(c.get("gpu/check/f64"), f.n, 0.5));
         cudaStreamDestroy(s);
       }},
      {"the per-thread default stream orders the copy too",
       [] {
         auto c = Client::connect();
         DeviceBuffer<float> d(1 << 18);
         fill<float>(d.p, d.n, 7.f, cudaStreamPerThread, kSlow);
         const std::int64_t shape[] = {1 << 18};
         put_cuda(c, "gpu/check/ptds", d.p, dtypes::kFloat32, shape, {}, cudaStreamPerThread);
         EXPECT(holds<float>(c.get("gpu/check/ptds"), d.n, 7.f));
       }},
      {"a tensor in the middle of its allocation, Fortran strides kept",
       [] {
         auto c = Client::connect();
         DeviceBuffer<float> d(10000);
         fill<float>(d.p, d.n, 1.f, nullptr);
         const std::int64_t shape[] = {30, 40}, strides[] = {1, 30};
         auto info = put_cuda(c, "gpu/check/mid", d.p + 1000, dtypes::kFloat32, shape, strides, nullptr);
         EXPECT((info.strides == std::vector<std::int64_t>{1, 30}));
         auto o = c.get("gpu/check/mid");
         const float* p = static_cast<const float*>(o.data());
         for (int i = 0; i < 1200; ++i) EXPECT(p[i] == 1.f + float((1000 + i) % 251));
       }},
      {"an empty tensor and a 0-d tensor",
       [] {
         auto c = Client::connect();
         DeviceBuffer<float> d(1);
         fill<float>(d.p, 1, 42.f, nullptr);
         const std::int64_t empty[] = {0, 5};
         EXPECT(put_cuda(c, "gpu/check/empty", d.p, dtypes::kFloat32, empty, {}, nullptr).nbytes == 0);
         put_cuda(c, "gpu/check/scalar", d.p, dtypes::kFloat32, {}, {}, nullptr);
         EXPECT(*static_cast<const float*>(c.get("gpu/check/scalar").data()) == 42.f);
       }},
      {"sixteen asynchronous puts in flight on one client",
       [] {
         auto c = Client::connect();
         std::vector<std::unique_ptr<DeviceBuffer<int>>> bufs;
         std::vector<CudaPutFuture> futures;
         for (int i = 0; i < 16; ++i) {
           bufs.push_back(std::make_unique<DeviceBuffer<int>>(100000));
           fill<int>(bufs.back()->p, 100000, i * 1000, nullptr, kSlow / 10);
           const std::int64_t shape[] = {100000};
           futures.push_back(put_cuda_async(c, "gpu/check/async/" + std::to_string(i), bufs.back()->p,
                                            dtypes::kInt32, shape, {}, nullptr));
         }
         for (auto& f : futures) f.get();
         for (int i = 0; i < 16; ++i) EXPECT(holds<int>(c.get("gpu/check/async/" + std::to_string(i)), 100000, i * 1000));
       }},
      {"four producer threads put 100 times each at once",
       [] {
         std::atomic<int> bad{0};
         std::vector<std::thread> ts;
         for (int t = 0; t < 4; ++t)
           ts.emplace_back([t, &bad] {
             try {
               auto c = Client::connect();
               cudaStream_t s;
               cuda_ok(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
               DeviceBuffer<float> d(1 << 16);
               const std::int64_t shape[] = {1 << 16};
               for (int i = 0; i < 100; ++i) {
                 fill<float>(d.p, d.n, float(t * 1000 + i), s);
                 put_cuda(c, "gpu/check/many/" + std::to_string(t), d.p, dtypes::kFloat32, shape, {}, s);
                 auto o = c.get("gpu/check/many/" + std::to_string(t));
                 if (!holds<float>(o, d.n, float(t * 1000 + i))) ++bad;
               }
               cudaStreamDestroy(s);
             } catch (const std::exception& e) {
               std::fprintf(stderr, "producer %d: %s\n", t, e.what());
               ++bad;
             }
           });
         for (auto& t : ts) t.join();
         EXPECT(bad.load() == 0);
       }},
      {"a new allocation at a freed one's address is exported anew",
       [] {
         auto c = Client::connect();
         for (int i = 0; i < 4; ++i) {
           DeviceBuffer<float> d(1 << 20);  // likely the same address each time
           fill<float>(d.p, d.n, float(i), nullptr);
           const std::int64_t shape[] = {1 << 20};
           put_cuda(c, "gpu/check/realloc", d.p, dtypes::kFloat32, shape, {}, nullptr);
           EXPECT(holds<float>(c.get("gpu/check/realloc"), d.n, float(i)));
           // Half the time forget before cudaFree, as the header asks; else the
           // next put notices the new allocation and closes the old mapping.
           if (i % 2 == 0) forget_cuda(c, d.p);
         }
       }},
      {"host memory is refused with invalid_argument",
       [] {
         auto c = Client::connect();
         static float host[16];
         const std::int64_t shape[] = {16};
         try {
           put_cuda(c, "gpu/check/host", host, dtypes::kFloat32, shape, {}, nullptr);
           EXPECT(false);
         } catch (const Exception& e) {
           EXPECT(e.code() == Errc::invalid_argument);
         }
       }},
      {"memory from cudaMallocAsync is refused with a clear error",
       [] {
         auto c = Client::connect();
         void* p = nullptr;
         cuda_ok(cudaMallocAsync(&p, 1 << 20, nullptr), "cudaMallocAsync");
         cuda_ok(cudaStreamSynchronize(nullptr), "sync");
         const std::int64_t shape[] = {1 << 18};
         try {
           put_cuda(c, "gpu/check/async-pool", p, dtypes::kFloat32, shape, {}, nullptr);
           cudaFreeAsync(p, nullptr);
           EXPECT(false);
         } catch (const Exception& e) {
           cudaFreeAsync(p, nullptr);
           std::printf("  (said: %s)\n", e.what());
           EXPECT(e.code() == Errc::invalid_argument);
         }
       }},
      {"data reaching past its allocation is refused",
       [] {
         auto c = Client::connect();
         DeviceBuffer<float> d(1000);
         const std::int64_t shape[] = {100000};
         try {
           put_cuda(c, "gpu/check/past", d.p, dtypes::kFloat32, shape, {}, nullptr);
           EXPECT(false);
         } catch (const Exception& e) {
           EXPECT(e.code() == Errc::invalid_argument);
         }
       }},
  };
}

}  // namespace

int main(int argc, char** argv) {
  const std::string filter = argc > 1 ? argv[1] : "";
  int failures = 0, ran = 0;
  for (const auto& check : checks()) {
    if (!filter.empty() && std::string(check.name).find(filter) == std::string::npos) continue;
    ++ran;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      check.run();
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      std::printf("PASS %s (%.0f ms)\n", check.name, ms);
    } catch (const std::exception& e) {
      ++failures;
      std::printf("FAIL %s: %s\n", check.name, e.what());
    }
    std::fflush(stdout);
  }
  std::printf("%d of %d checks passed\n", ran - failures, ran);
  return failures;
}
