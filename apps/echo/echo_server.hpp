// The two echo servers of muxio-echo: one written with reactor callbacks,
// one with coroutines. Both send every byte back as it arrives, to any
// number of clients, and stop cleanly.
#pragma once

#include <cstddef>
#include <exception>
#include <memory>
#include <stop_token>
#include <system_error>
#include <unordered_map>
#include <vector>

#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "muxio/task.hpp"

namespace muxio::apps {

/// Counters both servers keep, for the exit summary and the tests.
struct EchoStats {
    /// Connections accepted; accepted - closed are open now.
    std::size_t accepted = 0;
    std::size_t closed = 0;
    std::size_t bytes = 0;
    /// accept() failures (the connection, if any, stays queued or is lost).
    std::size_t accept_errors = 0;
    /// Accepted connections ended by an error rather than by the peer or a
    /// shutdown: a failed read or write, or one the server could not serve
    /// at all (the reactor refused to watch its descriptor, as select does
    /// from FD_SETSIZE up; memory ran out). Each is closed at once.
    std::size_t connection_errors = 0;
};

/// An echo server on reactor callbacks: the listener's reader accepts, each
/// connection's reader reads and writes back. When the peer reads slower
/// than it writes, the unsent rest is kept, the connection stops reading
/// (back-pressure) and a writer finishes the send. Out of descriptors
/// (EMFILE), accepting pauses for a moment instead of spinning. A
/// connection that cannot be served (its reader cannot be added) is closed
/// at once, counted in connection_errors and logged; it is never left in
/// the table, and accepting goes on.
class CallbackEchoServer {
public:
    /// Starts listening: the reader is added now, connections are served
    /// while `reactor` runs. `listener` must be bound to `reactor`.
    CallbackEchoServer(Reactor& reactor, TcpListener listener);
    ~CallbackEchoServer();
    CallbackEchoServer(const CallbackEchoServer&) = delete;
    CallbackEchoServer& operator=(const CallbackEchoServer&) = delete;

    /// Stops accepting and closes every connection. Idempotent.
    void shutdown() noexcept;

    [[nodiscard]] const EchoStats& stats() const noexcept { return stats_; }
    [[nodiscard]] std::size_t connections() const noexcept { return connections_.size(); }

private:
    struct Connection {
        TcpStream stream;
        std::vector<std::byte> unsent;  // what the peer has not taken yet
        std::size_t unsent_offset = 0;
    };

    void accept_ready();
    void serve(TcpStream stream);
    void pause_accepting(const std::error_code& error);
    void resume_accepting();
    void readable(Connection& connection);
    void writable(Connection& connection);
    void fail(Connection& connection, const std::exception& failure);
    void close(Connection& connection);

    Reactor& reactor_;
    TcpListener listener_;
    std::unordered_map<int, std::unique_ptr<Connection>> connections_;  // by fd
    std::vector<std::byte> buffer_;
    TimerHandle resume_accepting_;
    EchoStats stats_;
};

/// The same server as coroutines: an accept loop and one task per
/// connection (read_some into a buffer the connections share, try_write,
/// write_all of what the socket did not take), all spawned on the reactor
/// and all cancelled through one stop source by shutdown(). A connection
/// whose task fails, for instance because the reactor refuses to watch its
/// descriptor, is closed at once, counted and logged; an error in the
/// accept loop pauses accepting for a moment rather than ending it.
class CoroutineEchoServer {
public:
    /// Spawns the accept loop; it runs while `reactor` runs.
    CoroutineEchoServer(Reactor& reactor, TcpListener listener);
    ~CoroutineEchoServer();
    CoroutineEchoServer(const CoroutineEchoServer&) = delete;
    CoroutineEchoServer& operator=(const CoroutineEchoServer&) = delete;

    /// Cancels the accept loop and every connection task; they end in the
    /// next iterations (or when the reactor closes). Idempotent.
    void shutdown() noexcept;

    [[nodiscard]] const EchoStats& stats() const noexcept { return *stats_; }
    [[nodiscard]] std::size_t connections() const noexcept { return stats_->accepted - stats_->closed; }

private:
    Reactor& reactor_;
    std::stop_source stop_;
    // Shared with the tasks, which may outlive this object until the
    // reactor closes.
    std::shared_ptr<EchoStats> stats_ = std::make_shared<EchoStats>();
};

}  // namespace muxio::apps
