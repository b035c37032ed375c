// muxio-loadgen's engine: N connections, each a coroutine on one reactor,
// driving an echo server (every byte checked) or an HTTP server (keep-alive
// GETs, responses parsed by http_parser) for a fixed time.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "histogram.hpp"
#include "muxio/net.hpp"
#include "muxio/reactor.hpp"

namespace muxio::apps {

enum class LoadMode { echo, http };

struct LoadConfig {
    LoadMode mode = LoadMode::echo;
    SocketAddress server;
    std::string host_header;  // http: the Host header
    std::string path = "/";   // http: the target
    std::size_t connections = 1;
    std::size_t message_size = 64;  // echo: bytes per message
    std::size_t pipeline = 1;       // requests in flight per connection
    std::uint64_t count = 0;        // messages per connection, then it stops; 0: until the duration ends
    std::chrono::duration<double> duration{5.0};
    std::chrono::duration<double> warmup{0.0};
    std::chrono::duration<double> connect_timeout{5.0};
};

struct LoadResult {
    std::uint64_t messages = 0;    // completed in the measured window
    std::uint64_t bytes = 0;       // payload bytes received in the window
    std::uint64_t errors = 0;      // failed connections (never established ones included), bad statuses
    std::uint64_t mismatches = 0;  // echo: bytes that differed from those sent
    // The connect phase: every connection is established, failed to be
    // (refused, timed out after LoadConfig::connect_timeout, any other
    // error), or was still being established when the run ended. The last
    // two count as errors.
    std::uint64_t connected = 0;        // connections established
    std::uint64_t connect_failed = 0;   // refused, timed out, ...
    std::uint64_t connect_pending = 0;  // still connecting at the end of the run
    double connect_seconds = 0;         // from the start until the last connection was established
    double seconds = 0;                 // the measured window
    LatencyHistogram latency_ns;        // per message, send to last byte
    std::string first_error;            // for the report

    [[nodiscard]] double messages_per_second() const noexcept {
        return seconds > 0 ? static_cast<double>(messages) / seconds : 0;
    }
};

/// Progress as the run goes: seconds since the start, messages so far in
/// the measured window.
using ProgressFn = std::function<void(double elapsed, std::uint64_t messages)>;

/// Runs the load on `reactor` until the duration (after the warm-up) ends,
/// or until every connection has done `count` messages if that is set;
/// calls `progress` about once a second if given. Throws std::system_error
/// only for setup failures; connection failures are counted in the result,
/// connections never established included (connected + connect_failed +
/// connect_pending == connections).
LoadResult run_load(Reactor& reactor, const LoadConfig& config, const ProgressFn& progress = {});

/// The byte an echo client sends at `offset` of its stream: a pattern that
/// differs between connections and does not repeat within a message, so a
/// reordered, dropped or crossed byte is noticed.
[[nodiscard]] constexpr std::byte echo_pattern(std::size_t connection, std::uint64_t offset) noexcept {
    const std::uint64_t mixed = (offset * 0x9E3779B97F4A7C15ULL) ^ (connection * 0xC2B2AE3D27D4EB4FULL);
    return static_cast<std::byte>(mixed >> 56U);
}

}  // namespace muxio::apps
