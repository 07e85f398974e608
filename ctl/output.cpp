#include "output.hpp"

#include <cmath>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <sstream>

namespace tensorshm::ctl {
namespace {

// Builds one JSON object, fields in the order they are added.
class JsonObject {
 public:
  JsonObject& text(std::string_view key, std::string_view value) { return raw(key, json_string(value)); }
  JsonObject& number(std::string_view key, std::uint64_t value) { return raw(key, std::to_string(value)); }
  JsonObject& number(std::string_view key, std::int64_t value) { return raw(key, std::to_string(value)); }
  JsonObject& number(std::string_view key, double value) {
    std::ostringstream os;
    // JSON has no NaN or infinity; 17 digits give back the same double.
    if (std::isfinite(value)) os << std::setprecision(17) << value;
    else os << "null";
    return raw(key, os.str());
  }
  JsonObject& boolean(std::string_view key, bool value) { return raw(key, value ? "true" : "false"); }
  JsonObject& list(std::string_view key, const std::vector<std::int64_t>& values) {
    std::string s = "[";
    for (std::size_t i = 0; i < values.size(); ++i) s += (i ? ", " : "") + std::to_string(values[i]);
    return raw(key, s + "]");
  }
  JsonObject& raw(std::string_view key, std::string_view json) {
    body_ += (body_.empty() ? "" : ", ") + json_string(key) + ": ";
    body_ += json;
    return *this;
  }
  std::string str() const { return "{" + body_ + "}"; }

 private:
  std::string body_;
};

std::string shape_text(const std::vector<std::int64_t>& v) {
  std::string s = "(";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + (v.size() == 1 ? ",)" : ")");
}

std::string human(std::uint64_t b) {
  const char* u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int i = 0;
  while (v >= 1024 && i < 4) {
    v /= 1024;
    ++i;
  }
  std::ostringstream o;
  o << std::fixed << std::setprecision(i ? 1 : 0) << v << " " << u[i];
  return o.str();
}

}  // namespace

std::string json_string(std::string_view s) {
  std::string o = "\"";
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      o += '\\';
      o += ch;
    } else if (c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += ch;
    }
  }
  return o + "\"";
}

std::string object_json(const ObjectInfo& i) {
  return JsonObject()
      .text("name", i.name)
      .number("version", std::uint64_t{i.version})
      .text("dtype", dtype_name(i.dtype))
      .list("shape", i.shape)
      .list("strides", i.strides)
      .number("nbytes", std::uint64_t{i.nbytes})
      .number("object_id", std::uint64_t{i.object_id})
      .number("owner_uid", std::uint64_t{i.owner_uid})
      .text("share", share_name(i.share))
      .boolean("sealed", i.sealed)
      .number("created_unix_ns", std::uint64_t{i.created_unix_ns})
      .number("leases", std::uint64_t{i.leases})
      .number("segment_id", std::uint64_t{i.segment_id})
      .str();
}

std::string stats_json(const Stats& s) {
  return JsonObject()
      .number("pool_bytes", s.pool_bytes)
      .number("pool_used_bytes", s.pool_used_bytes)
      .number("dedicated_bytes", s.dedicated_bytes)
      .number("segments", std::uint64_t{s.segments})
      .number("objects", s.objects)
      .number("versions", s.versions)
      .number("open_creates", s.open_creates)
      .number("leases", s.leases)
      .number("clients", s.clients)
      .number("puts", s.puts)
      .number("gets", s.gets)
      .number("copies", s.copies)
      .number("bytes_copied", s.bytes_copied)
      .number("cuda_devices", std::int64_t{s.cuda_devices})
      .number("uptime_s", s.uptime_s)
      .number("quarantined_bytes", s.quarantined_bytes)
      .str();
}

std::string daemon_json(const DaemonInfo& d, double rtt_us) {
  std::string segments = "[";
  for (std::size_t i = 0; i < d.segments.size(); ++i) {
    const SegmentInfo& s = d.segments[i];
    segments += (i ? ", " : "") + JsonObject()
                                      .number("id", std::uint64_t{s.id})
                                      .text("name", s.name)
                                      .number("size", s.size)
                                      .boolean("dedicated", s.dedicated)
                                      .str();
  }
  return JsonObject()
      .text("socket_path", d.socket_path)
      .text("daemon_version", d.daemon_version)
      .text("instance", d.instance)
      .number("protocol_version", std::uint64_t{d.protocol_version})
      .number("page_size", std::uint64_t{d.page_size})
      .number("cuda_devices", std::int64_t{d.cuda_devices})
      .raw("segments", segments + "]")
      .number("round_trip_s", rtt_us / 1e6)  // seconds, as Python's Client.ping() returns
      .str();
}

std::string error_json(const Exception& e) {
  return JsonObject().text("error", errc_name(e.code())).text("message", e.what()).str();
}

void print_objects_text(const std::vector<ObjectInfo>& objects) {
  std::cout << std::left << std::setw(32) << "NAME" << std::setw(10) << "VERSION" << std::setw(12) << "DTYPE"
            << std::setw(22) << "SHAPE" << std::setw(12) << "SIZE" << "LEASES\n";
  for (const auto& o : objects)
    std::cout << std::left << std::setw(32) << o.name << std::setw(10) << o.version << std::setw(12)
              << dtype_name(o.dtype) << std::setw(22) << shape_text(o.shape) << std::setw(12) << human(o.nbytes)
              << o.leases << "\n";
}

void print_object_text(const ObjectInfo& i) {
  std::cout << "name      " << i.name << "\nversion   " << i.version << "\ndtype     " << dtype_name(i.dtype)
            << "\nshape     " << shape_text(i.shape) << "\nstrides   " << shape_text(i.strides)
            << " (elements)\nbytes     " << i.nbytes << "\nowner uid " << i.owner_uid << "\nshare     "
            << share_name(i.share) << "\nleases    " << i.leases << "\n";
}

void print_stats_text(const Stats& s) {
  std::cout << "pool          " << human(s.pool_used_bytes) << " used of " << human(s.pool_bytes) << " in "
            << s.segments << " segment(s); " << human(s.dedicated_bytes) << " in dedicated segments\n"
            << "objects       " << s.objects << " (" << s.versions << " live versions, " << s.open_creates
            << " being written)\n"
            << "leases        " << s.leases << "\n"
            << "clients       " << s.clients << "\n"
            << "puts / gets   " << s.puts << " / " << s.gets << "\n"
            << "GPU copies    " << s.copies << " (" << human(s.bytes_copied) << "), " << s.cuda_devices << " GPU(s)"
            << (s.quarantined_bytes ? ", " + human(s.quarantined_bytes) + " quarantined" : std::string()) << "\n"
            << "uptime        " << std::fixed << std::setprecision(1) << s.uptime_s << " s\n";
}

void print_stats_prometheus(const Stats& s) { std::cout << prometheus_text(s); }

void print_daemon_text(const DaemonInfo& d, double rtt_us) {
  std::cout << "tensorshmd " << d.daemon_version << " at " << d.socket_path << " (instance '" << d.instance << "', "
            << d.cuda_devices << " GPU(s)): round trip " << std::fixed << std::setprecision(1) << rtt_us << " us\n";
}

}  // namespace tensorshm::ctl
