// A libtorch user's program built against the installed package: put a tensor,
// get it back as a zero-copy tensor, compare.
#include <cstdio>

#include <tensorshm/torch.hpp>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  tensorshm::Client::Options o;
  o.socket_path = argv[1];
  auto c = tensorshm::Client::connect(o);
  const at::Tensor t = at::arange(24, at::kFloat).reshape({2, 3, 4}).mul_(0.5);
  const auto info = tensorshm::put(c, "consumer/t", t);
  const at::Tensor v = tensorshm::get_tensor(c, "consumer/t");
  const bool same = v.scalar_type() == at::kFloat && v.sizes() == t.sizes() && at::equal(v, t) &&
                    info.version > 0;
  std::printf("torch consumer: %s\n", same ? "ok" : "MISMATCH");
  return same ? 0 : 1;
}
