// A user's program built against the installed package: put, get, compare.
#include <cstdio>
#include <cstring>
#include <vector>

#include <tensorshm/client.hpp>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  tensorshm::Client::Options o;
  o.socket_path = argv[1];
  auto c = tensorshm::Client::connect(o);
  std::vector<float> v{1.5f, 2.5f, 3.5f, 4.5f, 5.5f, 6.5f};
  auto info = c.put("consumer/x", {v.data(), tensorshm::dtypes::kFloat32, {2, 3}, {}});
  auto obj = c.get("consumer/x");
  const bool same = obj.version() == info.version && obj.shape() == std::vector<std::int64_t>{2, 3} &&
                    std::memcmp(obj.data(), v.data(), sizeof(float) * v.size()) == 0;
  std::printf("consumer: %s\n", same ? "ok" : "MISMATCH");
  return same ? 0 : 1;
}
