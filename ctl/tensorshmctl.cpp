// tensorshmctl: the operator's view of a running tensorshmd.
//   tensorshmctl [--socket PATH] [--json] ping | ls [PREFIX] | stat NAME | rm NAME | stats [--prometheus]
#include <cstdio>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "tensorshm/client.hpp"

namespace {

const char* kUsage =
    "usage: tensorshmctl [--socket PATH] [--json] COMMAND\n"
    "commands:\n"
    "  ping               one round trip to the daemon; prints its latency\n"
    "  ls [PREFIX]        objects (latest versions) whose name starts with PREFIX\n"
    "  stat NAME          one object's metadata\n"
    "  rm NAME            delete NAME (holders of leases keep their version)\n"
    "  stats              pool use, objects, leases, clients, copies\n"
    "      --prometheus   ... in the Prometheus text exposition format\n"
    "The socket defaults to $TENSORSHM_SOCKET, then the daemon's default path.\n";

std::string json_escape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') { o += '\\'; o += ch; }
    else if (c < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", c); o += b; }
    else o += ch;
  }
  return o;
}

std::string shape_str(const std::vector<std::int64_t>& v, char open = '(', char close = ')') {
  std::string s(1, open);
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(v[i]);
  }
  if (open == '(' && v.size() == 1) s += ",";
  return s + close;
}

std::string info_json(const tensorshm::ObjectInfo& i) {
  std::ostringstream o;
  o << "{\"name\": \"" << json_escape(i.name) << "\", \"version\": " << i.version << ", \"dtype\": \""
    << tensorshm::dtype_name(i.dtype) << "\", \"shape\": " << shape_str(i.shape, '[', ']')
    << ", \"strides\": " << shape_str(i.strides, '[', ']') << ", \"nbytes\": " << i.nbytes
    << ", \"owner_uid\": " << i.owner_uid << ", \"share\": " << static_cast<int>(i.share)
    << ", \"leases\": " << i.leases << ", \"created_unix_ns\": " << i.created_unix_ns << "}";
  return o.str();
}

std::string human(std::uint64_t b) {
  const char* u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int i = 0;
  while (v >= 1024 && i < 4) { v /= 1024; ++i; }
  std::ostringstream o;
  o << std::fixed << std::setprecision(i ? 1 : 0) << v << " " << u[i];
  return o.str();
}

void print_stats(const tensorshm::Stats& s, bool json, bool prom) {
  if (prom) {
    auto m = [](const char* name, const char* type, const char* help, double v) {
      std::cout << "# HELP tensorshm_" << name << " " << help << "\n# TYPE tensorshm_" << name << " " << type
                << "\ntensorshm_" << name << " " << std::setprecision(17) << v << "\n";
    };
    m("pool_bytes", "gauge", "Bytes of pooled shared memory.", double(s.pool_bytes));
    m("pool_used_bytes", "gauge", "Bytes of the pool held by objects.", double(s.pool_used_bytes));
    m("dedicated_bytes", "gauge", "Bytes in dedicated segments of large objects.", double(s.dedicated_bytes));
    m("segments", "gauge", "Shared-memory segments.", double(s.segments));
    m("objects", "gauge", "Named objects.", double(s.objects));
    m("versions", "gauge", "Live object versions (latest and leased).", double(s.versions));
    m("open_creates", "gauge", "Objects created and not yet sealed.", double(s.open_creates));
    m("leases", "gauge", "Leases held by clients.", double(s.leases));
    m("clients", "gauge", "Connected clients.", double(s.clients));
    m("puts_total", "counter", "Versions published.", double(s.puts));
    m("gets_total", "counter", "Gets answered.", double(s.gets));
    m("copies_total", "counter", "Device-to-host copies done.", double(s.copies));
    m("copied_bytes_total", "counter", "Bytes copied device-to-host.", double(s.bytes_copied));
    m("cuda_devices", "gauge", "GPUs the daemon copies from.", double(s.cuda_devices));
    m("uptime_seconds", "gauge", "Seconds since the daemon started.", s.uptime_s);
    m("quarantined_bytes", "gauge", "Pool bytes a timed-out GPU copy may still write (never reused).",
      double(s.quarantined_bytes));
    return;
  }
  if (json) {
    std::cout << "{\"pool_bytes\": " << s.pool_bytes << ", \"pool_used_bytes\": " << s.pool_used_bytes
              << ", \"dedicated_bytes\": " << s.dedicated_bytes << ", \"segments\": " << s.segments
              << ", \"objects\": " << s.objects << ", \"versions\": " << s.versions
              << ", \"open_creates\": " << s.open_creates << ", \"leases\": " << s.leases
              << ", \"clients\": " << s.clients << ", \"puts\": " << s.puts << ", \"gets\": " << s.gets
              << ", \"copies\": " << s.copies << ", \"bytes_copied\": " << s.bytes_copied
              << ", \"cuda_devices\": " << s.cuda_devices << ", \"uptime_s\": " << s.uptime_s
              << ", \"quarantined_bytes\": " << s.quarantined_bytes << "}\n";
    return;
  }
  std::cout << "pool          " << human(s.pool_used_bytes) << " used of " << human(s.pool_bytes) << " in "
            << s.segments << " segment(s); " << human(s.dedicated_bytes) << " in dedicated segments\n"
            << "objects       " << s.objects << " (" << s.versions << " live versions, " << s.open_creates
            << " being written)\n"
            << "leases        " << s.leases << "\n"
            << "clients       " << s.clients << "\n"
            << "puts / gets   " << s.puts << " / " << s.gets << "\n"
            << "GPU copies    " << s.copies << " (" << human(s.bytes_copied) << "), " << s.cuda_devices
            << " GPU(s)" << (s.quarantined_bytes ? ", " + human(s.quarantined_bytes) + " quarantined" : std::string())
            << "\n"
            << "uptime        " << std::fixed << std::setprecision(1) << s.uptime_s << " s\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args;
  tensorshm::Client::Options opts;
  opts.client_name = "tensorshmctl";
  bool json = false, prom = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--json") json = true;
    else if (a == "--prometheus") prom = true;
    else if (a == "--socket" && i + 1 < argc) opts.socket_path = argv[++i];
    else if (a.rfind("--socket=", 0) == 0) opts.socket_path = a.substr(9);
    else if (a == "-h" || a == "--help") { std::cout << kUsage; return 0; }
    else if (a.rfind("--", 0) == 0) { std::cerr << "tensorshmctl: unknown option " << a << "\n" << kUsage; return 2; }
    else args.push_back(a);
  }
  if (args.empty()) { std::cerr << kUsage; return 2; }
  const std::string& cmd = args[0];
  auto need = [&](std::size_t n) {
    if (args.size() != n) { std::cerr << "tensorshmctl: '" << cmd << "' takes " << n - 1 << " argument(s)\n" << kUsage; std::exit(2); }
  };
  try {
    auto c = tensorshm::Client::connect(opts);
    if (cmd == "ping") {
      need(1);
      c.ping();
      auto rt = c.ping();
      const auto& d = c.daemon_info();
      if (json)
        std::cout << "{\"ok\": true, \"rtt_us\": " << rt.count() / 1000.0 << ", \"daemon_version\": \""
                  << json_escape(d.daemon_version) << "\", \"instance\": \"" << json_escape(d.instance)
                  << "\", \"socket\": \"" << json_escape(d.socket_path) << "\", \"cuda_devices\": " << d.cuda_devices << "}\n";
      else
        std::cout << "tensorshmd " << d.daemon_version << " at " << d.socket_path << " (instance '" << d.instance
                  << "', " << d.cuda_devices << " GPU(s)): round trip " << std::fixed << std::setprecision(1)
                  << rt.count() / 1000.0 << " us\n";
    } else if (cmd == "ls") {
      if (args.size() > 2) need(2);
      auto objs = c.list(args.size() == 2 ? args[1] : "");
      if (json) {
        std::cout << "[";
        for (std::size_t i = 0; i < objs.size(); ++i) std::cout << (i ? ",\n " : "") << info_json(objs[i]);
        std::cout << "]\n";
      } else {
        std::cout << std::left << std::setw(32) << "NAME" << std::setw(10) << "VERSION" << std::setw(12) << "DTYPE"
                  << std::setw(22) << "SHAPE" << std::setw(12) << "SIZE" << "LEASES\n";
        for (const auto& o : objs)
          std::cout << std::left << std::setw(32) << o.name << std::setw(10) << o.version << std::setw(12)
                    << tensorshm::dtype_name(o.dtype) << std::setw(22) << shape_str(o.shape) << std::setw(12)
                    << human(o.nbytes) << o.leases << "\n";
      }
    } else if (cmd == "stat") {
      need(2);
      auto i = c.stat(args[1]);
      if (json) std::cout << info_json(i) << "\n";
      else
        std::cout << "name      " << i.name << "\nversion   " << i.version << "\ndtype     "
                  << tensorshm::dtype_name(i.dtype) << "\nshape     " << shape_str(i.shape) << "\nstrides   "
                  << shape_str(i.strides) << " (elements)\nbytes     " << i.nbytes << "\nowner uid " << i.owner_uid
                  << "\nleases    " << i.leases << "\n";
    } else if (cmd == "rm") {
      need(2);
      c.remove(args[1]);
      if (json) std::cout << "{\"removed\": \"" << json_escape(args[1]) << "\"}\n";
    } else if (cmd == "stats") {
      need(1);
      print_stats(c.stats(), json, prom);
    } else {
      std::cerr << "tensorshmctl: unknown command '" << cmd << "'\n" << kUsage;
      return 2;
    }
  } catch (const tensorshm::Exception& e) {
    if (json) std::cout << "{\"error\": \"" << tensorshm::errc_name(e.code()) << "\", \"message\": \"" << json_escape(e.what()) << "\"}\n";
    std::cerr << "tensorshmctl: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
