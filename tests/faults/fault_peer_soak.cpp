// tshm_fault_peer's soak mode: random put / get / create / abort / delete /
// wait with content checks until --seconds or --ops run out (see
// fault_peer.cpp for the command line, tests/faults/test_soak.py for its use).
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "fault_peer.hpp"
#include "test_data.hpp"

using namespace tensorshm;

namespace {


// An object's content: its first 8 bytes are the seed, whose upper half is a
// hash of the name; the rest is the pattern of that seed. A reader checks all
// of it without knowing who wrote it.
std::uint32_t name_hash(const std::string& name) {
  return static_cast<std::uint32_t>(tshm_test::checksum(name.data(), name.size()));
}

void write_content(void* dst, std::size_t n, std::uint64_t seed) {
  std::memcpy(dst, &seed, sizeof seed);
  tshm_test::fill_pattern(static_cast<std::byte*>(dst) + sizeof seed, n - sizeof seed, seed);
}

// Empty when the content is right, else what is wrong.
std::optional<std::string> check_content(const std::string& name, const void* p, std::size_t n) {
  if (n < sizeof(std::uint64_t)) return "object of " + std::to_string(n) + " bytes, smaller than any put";
  std::uint64_t seed;
  std::memcpy(&seed, p, sizeof seed);
  if (static_cast<std::uint32_t>(seed >> 32) != name_hash(name)) return "seed of another name";
  const auto* body = static_cast<const std::byte*>(p) + sizeof seed;
  if (tshm_test::checksum(body, n - sizeof seed) != tshm_test::pattern_checksum(n - sizeof seed, seed))
    return "content differs from the pattern of its seed";
  return std::nullopt;
}

struct SoakOptions {
  double seconds = 10;
  std::uint64_t ops = 1000;
  std::uint64_t seed = 1;
  int names = 16;
  std::size_t max_bytes = 64 << 10;
  std::size_t big_bytes = 0;  // >0: every `big_every` puts one of this size (a dedicated segment)
  int big_every = 0;
  std::string prefix = "soak/";
  int wait_ms = 50;
};

int soak(const SoakOptions& o) {
  std::mt19937_64 rng(o.seed);
  auto pick = [&](std::uint64_t n) { return static_cast<std::uint64_t>(rng() % n); };
  std::map<std::string, std::uint64_t> counts;
  std::map<std::string, std::uint64_t> errors;
  std::uint64_t mismatches = 0, unexpected = 0;
  auto report = [&](const std::string& name, const std::optional<std::string>& why, std::uint64_t version) {
    if (!why) return;
    ++mismatches;
    say("MISMATCH name=" + name + " version=" + std::to_string(version) + " " + *why);
  };
  Client c = Client::connect(Client::Options{"", "tshm_fault_peer soak"});
  std::vector<std::pair<std::string, Object>> held;
  std::map<std::string, std::uint64_t> seen;  // newest version seen per name
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(o.seconds);
  std::uint64_t ops = 0, puts = 0;
  for (; ops < o.ops && std::chrono::steady_clock::now() < deadline; ++ops) {
    const std::string name = o.prefix + std::to_string(pick(static_cast<std::uint64_t>(o.names)));
    const std::uint64_t dice = pick(100);
    try {
      if (dice < 40) {  // put, or (1 in 8) create and abort
        std::size_t n = 8 + pick(o.max_bytes - 7);
        if (o.big_every > 0 && ++puts % static_cast<std::uint64_t>(o.big_every) == 0) n = o.big_bytes;
        CreateOptions opt;
        opt.timeout = std::chrono::milliseconds(200);
        Buffer b = c.create(name, dtypes::kUInt8, {static_cast<std::int64_t>(n)}, opt);
        const std::uint64_t seed = (static_cast<std::uint64_t>(name_hash(name)) << 32) | (rng() & 0xffffffffu);
        write_content(b.data(), n, seed);
        if (pick(8) == 0) {
          b.abort();
          ++counts["aborts"];
        } else {
          b.seal();
          ++counts["puts"];
        }
      } else if (dice < 75) {  // get, check, keep the lease for a while (1 in 4)
        Object obj = c.get(name);
        report(name, check_content(name, obj.data(), obj.nbytes()), obj.version());
        if (obj.version() < seen[name]) report(name, "version went back", obj.version());
        seen[name] = obj.version();
        ++counts["gets"];
        if (pick(4) == 0) held.emplace_back(name, std::move(obj));
      } else if (dice < 85) {  // wait for a version newer than the newest seen
        GetOptions g;
        g.newer_than = seen[name];
        g.timeout = std::chrono::milliseconds(o.wait_ms);
        Object obj = c.get(name, g);
        report(name, check_content(name, obj.data(), obj.nbytes()), obj.version());
        if (obj.version() <= g.newer_than) report(name, "wait returned an old version", obj.version());
        seen[name] = obj.version();
        ++counts["waits"];
      } else if (dice < 92) {  // re-check a held lease, then maybe drop it
        if (!held.empty()) {
          const std::size_t i = pick(held.size());
          report(held[i].first, check_content(held[i].first, held[i].second.data(), held[i].second.nbytes()),
                 held[i].second.version());
          ++counts["rechecks"];
          if (pick(2) == 0) held.erase(held.begin() + static_cast<std::ptrdiff_t>(i));
        }
      } else if (dice < 97) {
        c.remove(name);
        ++counts["deletes"];
      } else {
        (void)c.list(o.prefix, 16);
        (void)c.stat(name);
        ++counts["lists"];
      }
    } catch (const Exception& e) {
      const Errc code = e.code();
      ++errors[std::string(errc_name(code))];
      if (code != Errc::not_found && code != Errc::timeout && code != Errc::pool_exhausted) {
        ++unexpected;
        say("UNEXPECTED " + err_line(e));
      }
    }
    if (held.size() > 4) held.erase(held.begin());
  }
  for (auto& [name, obj] : held) report(name, check_content(name, obj.data(), obj.nbytes()), obj.version());
  std::string line = "done ops=" + std::to_string(ops) + " mismatches=" + std::to_string(mismatches) +
                     " unexpected=" + std::to_string(unexpected);
  for (const auto& [k, v] : counts) line += " " + k + "=" + std::to_string(v);
  for (const auto& [k, v] : errors) line += " err_" + k + "=" + std::to_string(v);
  say(line);
  return mismatches == 0 && unexpected == 0 ? 0 : 1;
}

SoakOptions parse_soak(int argc, char** argv) {
  SoakOptions o;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--seconds") o.seconds = std::stod(v);
    else if (k == "--ops") o.ops = std::stoull(v);
    else if (k == "--seed") o.seed = std::stoull(v);
    else if (k == "--names") o.names = std::stoi(v);
    else if (k == "--max-bytes") o.max_bytes = std::stoull(v);
    else if (k == "--big-bytes") o.big_bytes = std::stoull(v);
    else if (k == "--big-every") o.big_every = std::stoi(v);
    else if (k == "--prefix") o.prefix = v;
    else if (k == "--wait-ms") o.wait_ms = std::stoi(v);
    else throw std::invalid_argument("unknown soak option " + k);
  }
  return o;
}

}  // namespace

int soak_main(int argc, char** argv) { return soak(parse_soak(argc, argv)); }
