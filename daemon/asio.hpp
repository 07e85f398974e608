// The one place that includes Boost.Asio, with the fix-ups it needs: with
// Boost 1.74 and GCC 12 in C++20, <utility> must come first. Boost 1.74 has
// no as_tuple, so coroutines use redirect_error(use_awaitable, ec).
#pragma once

#include <utility>
#include <boost/asio.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace tensorshm::daemon {
namespace asio = boost::asio;
using asio::awaitable;
using unix_socket = asio::local::stream_protocol::socket;
using unix_acceptor = asio::local::stream_protocol::acceptor;
using error_code = boost::system::error_code;

/// Completion token: errors land in `ec` instead of throwing.
inline auto nothrow(error_code& ec) { return asio::redirect_error(asio::use_awaitable, ec); }
}  // namespace tensorshm::daemon
