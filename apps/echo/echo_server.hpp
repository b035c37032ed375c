// The two echo servers of muxio-echo: one written with reactor callbacks,
// one with coroutines. Both send every byte back as it arrives, to any
// number of clients, and stop cleanly.
#pragma once

#include <cstddef>
#include <memory>
#include <stop_token>

#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "muxio/server.hpp"
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

/// An echo server on reactor callbacks: a muxio::Server accepts, and each
/// connection's Protocol writes back what its Transport reads, straight from
/// the server's shared read buffer. When the peer reads slower than it
/// writes, the transport keeps the unsent rest and the connection stops
/// reading until it is sent (back-pressure: a write queue above zero bytes
/// pauses reading). Out of descriptors (EMFILE), the Server pauses accepting
/// instead of spinning. A connection that cannot be served (the reactor
/// refuses its descriptor) is closed at once, counted in connection_errors
/// and logged, and accepting goes on.
class CallbackEchoServer {
public:
    /// Starts listening: the reader is added now, connections are served
    /// while `reactor` runs. `listener` must be bound to `reactor`.
    CallbackEchoServer(Reactor& reactor, TcpListener listener);
    ~CallbackEchoServer();
    CallbackEchoServer(const CallbackEchoServer&) = delete;
    CallbackEchoServer& operator=(const CallbackEchoServer&) = delete;

    /// Stops accepting and closes every connection (their counts are
    /// settled in the reactor's next iteration). Idempotent.
    void shutdown() noexcept;

    [[nodiscard]] EchoStats stats() const noexcept;
    [[nodiscard]] std::size_t connections() const noexcept { return server_.connection_count(); }

private:
    EchoStats stats_;  // what the protocols count; stats() adds the server's
    Server server_;    // after stats_: its connections count into it until they are freed
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
