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
/// everything cancelled, the tasks ending.
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

/// The daemon's state and tasks. Every service is a coroutine spawned on the
/// reactor: an accept loop per listener and a task per client. They share
/// the daemon's state through a reference count, so destroying the Daemon
/// before the reactor closes is safe: the tasks are cancelled, and those
/// still suspended are destroyed by Reactor::close().
class Daemon {
public:
    /// Binds the TCP listener and the control socket, applies `config`
    /// (generation 1), schedules the heartbeat and spawns the accept loops,
    /// which start in the next iteration. std::system_error if a bind fails;
    /// std::runtime_error if the control path belongs to a daemon that
    /// answers (a socket nobody listens on is replaced).
    Daemon(Reactor& reactor, std::shared_ptr<spdlog::logger> log, Config config, DaemonOptions options);
    /// Cancels the heartbeat and every task.
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
    /// daemon is stopping and all of its tasks have ended.
    bool advance();

    [[nodiscard]] State state() const noexcept;
    /// When the drain ends at the latest; nullopt unless draining.
    [[nodiscard]] std::optional<Reactor::TimePoint> drain_deadline() const noexcept;
    /// TCP connections open now.
    [[nodiscard]] std::size_t connections() const noexcept;
    /// Tasks spawned and not ended (accept loops, clients).
    [[nodiscard]] std::size_t tasks() const noexcept;
    [[nodiscard]] StatusReport status() const;
    [[nodiscard]] const Config& config() const noexcept;

    struct Core;  // daemon.cpp; shared with the tasks

private:
    std::shared_ptr<Core> core_;
};

}  // namespace muxio::apps::daemon
