// What the parts of tshm_fault_peer share: one reply line at a time on stdout.
#pragma once

#include <string>

#include "tensorshm/client.hpp"

/// Writes one line to stdout and flushes it (the tests read line by line).
void say(const std::string& line);
/// "err CODE message" for a failed call, on one line.
std::string err_line(const tensorshm::Exception& e);
/// `tshm_fault_peer soak [options]` (fault_peer_soak.cpp): returns the exit status.
int soak_main(int argc, char** argv);
