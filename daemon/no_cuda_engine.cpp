// Builds without CUDA (TENSORSHM_CUDA=OFF, or no nvcc): the daemon serves
// CPU-only and says so once.
#include "copy_engine.hpp"
#include "log.hpp"

namespace tensorshm::daemon {

std::unique_ptr<CopyEngine> make_cuda_copy_engine(const Config&, boost::asio::io_context&, Pool&) {
  log::notice("this build has no CUDA support: serving CPU-only (GPU puts fail with no_gpu)");
  return nullptr;
}

}  // namespace tensorshm::daemon
