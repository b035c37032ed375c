// The services of muxio-daemon on a Reactor: the heartbeat timer, the TCP
// greeting-and-echo service, the Unix-socket control channel, reload and the
// graceful stop. It never runs the reactor: whoever owns the loop (main.cpp,
// or a test) drives it and calls advance() after each iteration.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <spdlog/logger.h>

#include "config.hpp"
#include "control.hpp"
#include "muxio/net.hpp"
#include "muxio/reactor.hpp"

namespace muxio::apps::daemon {

/// running: serving. draining: no longer accepting TCP connections, waiting
/// for the open ones to end (the control channel still answers). stopping:
/// every connection closed, their ends being delivered.
enum class State { running, draining, stopping };

[[nodiscard]] std::string_view to_string(State state) noexcept;

struct DaemonOptions {
    /// Where the TCP service listens (port 0: the kernel picks).
    SocketAddress tcp_address = SocketAddress::ipv4("127.0.0.1", 0);
    /// The control socket's path; empty: no control channel.
    std::string control_path;
    /// The file reload() reads; empty: reload() fails, saying so.
    std::string config_path;
    /// --log-level: wins over the file's log_level, at start and on reload.
    std::optional<spdlog::level::level_enum> log_level_override;
};

/// The daemon's state and services. Each service is a muxio::Server (the
/// TCP one, the control one) whose connections are line protocols on
/// transports. Destroying the Daemon ends every connection and closes the
/// listeners at once; so does the reactor closing first, after which the
/// Daemon may still be destroyed.
class Daemon {
public:
    /// Binds the TCP listener and the control socket, applies `config`
    /// (generation 1), schedules the heartbeat; connections are accepted
    /// from the next iteration on. std::system_error if a bind fails;
    /// std::runtime_error if the control path belongs to a daemon that
    /// answers (a socket nobody listens on is replaced).
    Daemon(Reactor& reactor, std::shared_ptr<spdlog::logger> log, Config config, DaemonOptions options);
    /// Cancels the heartbeat, ends every connection, closes the listeners.
    ~Daemon();
    Daemon(const Daemon&) = delete;
    Daemon& operator=(const Daemon&) = delete;

    /// The bound TCP address, with the port the kernel chose.
    [[nodiscard]] const SocketAddress& tcp_address() const noexcept;
    /// The control socket's path, empty without a control channel.
    [[nodiscard]] const std::string& control_path() const noexcept;

    /// Begins the graceful stop: stops accepting TCP connections and starts
    /// the drain clock (Config::drain_timeout). `reason` goes into the log.
    /// Returns false, changing nothing, if a stop was already under way.
    bool request_stop(std::string_view reason);
    /// Ends the drain now: closes the TCP connections still open and the
    /// control channel. Idempotent.
    void end_drain();
    /// Reads the configuration file again; on failure logs it and keeps the
    /// configuration in force.
    ReloadResult reload();

    /// To call after each iteration of the loop: ends the drain once no
    /// connection is left or its deadline passed, and returns true once the
    /// daemon is stopping and all of its connections have ended.
    bool advance();

    [[nodiscard]] State state() const noexcept;
    /// When the drain ends at the latest; nullopt unless draining.
    [[nodiscard]] std::optional<Reactor::TimePoint> drain_deadline() const noexcept;
    /// TCP connections open now.
    [[nodiscard]] std::size_t connections() const noexcept;
    /// TCP and control connections whose end has not been delivered yet.
    [[nodiscard]] std::size_t open_connections() const noexcept;
    [[nodiscard]] StatusReport status() const;
    [[nodiscard]] const Config& config() const noexcept;

    struct Core;  // daemon.cpp

private:
    std::unique_ptr<Core> core_;
};

}  // namespace muxio::apps::daemon
