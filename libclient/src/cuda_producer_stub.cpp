// GPU producers in a libtensorshm built without CUDA: every call throws
// Exception(no_gpu) saying how to get a build that has them.
#include "tensorshm/cuda.hpp"

namespace tensorshm {
namespace {

[[noreturn]] void no_cuda() {
  throw Exception(Errc::no_gpu,
                  "this libtensorshm was built without CUDA support, so it cannot read GPU memory; copy the data "
                  "to the host first, or rebuild with the CUDA toolkit installed (cmake -DTENSORSHM_CUDA=ON)");
}

}  // namespace

struct CudaPutFuture::State {};

bool cuda_supported() noexcept { return false; }

ObjectInfo put_cuda(Client&, std::string_view, const void*, DType, std::span<const std::int64_t>,
                    std::span<const std::int64_t>, void*, const CreateOptions&) {
  no_cuda();
}

void forget_cuda(Client&, const void*) { no_cuda(); }

CudaPutFuture::CudaPutFuture() = default;
CudaPutFuture::CudaPutFuture(CudaPutFuture&&) noexcept = default;
CudaPutFuture& CudaPutFuture::operator=(CudaPutFuture&&) noexcept = default;
CudaPutFuture::~CudaPutFuture() = default;
bool CudaPutFuture::ready() const { return true; }
ObjectInfo CudaPutFuture::get() { no_cuda(); }

CudaPutFuture put_cuda_async(Client&, std::string_view, const void*, DType, std::span<const std::int64_t>,
                             std::span<const std::int64_t>, void*, const CreateOptions&) {
  no_cuda();
}

}  // namespace tensorshm
