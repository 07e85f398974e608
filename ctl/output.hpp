// What tensorshmctl prints: aligned text for people, JSON for programs and the
// Prometheus text exposition for `stats --prometheus`.
//
// The JSON mapping lives here (output.cpp) and nowhere else: objects, stats and
// the daemon's description carry exactly the field names, order and value
// spellings of Python's NamedTuples in pyclient/tensorshm/_client.py
// (ObjectInfo, Stats, DaemonInfo with its SegmentInfo list): a share mode is
// "owner"/"group"/"everyone" (share_name), a dtype is dtype_name()'s spelling
// (the one Python shows), shapes and strides are lists. `ping` adds round_trip_s.
// tests/python/test_ctl_json.py compares both sides, so they cannot drift.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "tensorshm/client.hpp"

namespace tensorshm::ctl {

/// A JSON string literal (quotes included) for s.
std::string json_string(std::string_view s);

/// One object as JSON: Python's ObjectInfo._asdict(), field for field.
std::string object_json(const ObjectInfo& info);
/// The daemon-wide counters as JSON: Python's Stats._asdict().
std::string stats_json(const Stats& stats);
/// The daemon's description as JSON: Python's DaemonInfo (segments as a list
/// of SegmentInfo objects), plus "round_trip_s", the round trip just measured
/// (given here in microseconds).
std::string daemon_json(const DaemonInfo& info, double rtt_us);
/// {"error": "<errc_name>", "message": "..."}: what --json prints when a call fails.
std::string error_json(const Exception& e);

/// `ls`: one line per object under a header.
void print_objects_text(const std::vector<ObjectInfo>& objects);
/// `stat`: one field per line.
void print_object_text(const ObjectInfo& info);
/// `stats`: pool, objects, leases, clients, puts/gets, copies, uptime.
void print_stats_text(const Stats& stats);
/// `stats --prometheus`: prometheus_text() of libtensorshm.
void print_stats_prometheus(const Stats& stats);
/// `ping`: the daemon's version, socket, instance, GPUs and the round trip.
void print_daemon_text(const DaemonInfo& info, double rtt_us);

}  // namespace tensorshm::ctl
