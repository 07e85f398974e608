// Stats in the Prometheus text exposition format: the one place that names
// the metrics, for tensorshmctl and the Python package alike.
#include <iomanip>
#include <sstream>

#include "tensorshm/client.hpp"

namespace tensorshm {

std::string prometheus_text(const Stats& s) {
  std::ostringstream o;
  auto m = [&o](const char* name, const char* type, const char* help, double v) {
    o << "# HELP tensorshm_" << name << " " << help << "\n# TYPE tensorshm_" << name << " " << type
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
  return o.str();
}

}  // namespace tensorshm
