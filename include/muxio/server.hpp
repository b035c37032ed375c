// A stream server on the reactor's callbacks: listening sockets, the accept
// loop, a connection limit, and a Transport and Protocol per connection.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "muxio/transport.hpp"

namespace muxio {

/// What a Server does with the connections beyond ServerOptions::max_connections.
enum class OverLimit : std::uint8_t {
    /// Accept them, give each to the refusal handler (a courtesy answer such
    /// as HTTP's 503 or Redis's "max number of clients"), then close it.
    refuse,
    /// Stop accepting until a connection ends: the kernel's backlog holds
    /// them, and refuses the rest.
    pause
};

/// How a Server accepts and serves.
struct ServerOptions {
    /// Each connection's transport (water marks, read size, idle timeout).
    TransportOptions transport;
    /// Connections open at once, at most; 0: no limit.
    std::size_t max_connections = 0;
    /// What happens to one more.
    OverLimit over_limit = OverLimit::refuse;
    /// Connections accepted per readiness of a listener, so a flood of them
    /// cannot starve the established ones. At least 1.
    int accepts_per_wakeup = 64;
    /// How long accepting pauses when accept() fails: out of descriptors
    /// or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) the connection stays
    /// queued, so trying again at once would spin (errors of one connection,
    /// such as ECONNABORTED, are skipped without a pause). A connection
    /// ending resumes it sooner. The accept path makes no virtual call on
    /// an error category, which UBSan would need a descriptor to check.
    std::chrono::steady_clock::duration accept_retry = std::chrono::milliseconds{100};
    /// TCP_NODELAY on accepted TCP connections.
    bool tcp_nodelay = true;
};

/// Counters of a Server's accept path.
struct ServerStats {
    std::uint64_t accepted = 0;        ///< Connections accepted, refused ones included.
    std::uint64_t refused = 0;         ///< Over the limit, handed to the refusal handler and closed.
    std::uint64_t accept_errors = 0;   ///< accept() failures.
    std::uint64_t accept_pauses = 0;   ///< Times accepting paused after a failed accept().
    std::uint64_t setup_failures = 0;  ///< Accepted, then closed: the factory or the reactor refused.
};

/// Listens on any number of TCP and Unix-domain addresses and serves each
/// connection with a Protocol made by a factory, on a Transport.
///
/// Ownership: the server owns each connection's Transport and Protocol, and
/// frees both right after the protocol's connection_lost() returns. A
/// protocol may keep a reference to its transport until then. To end a
/// connection, a protocol calls its transport's close() or abort().
///
/// Accepting: up to accepts_per_wakeup connections per readiness of a
/// listener. Out of descriptors or memory, accepting pauses (no spinning,
/// the listener stays open) for accept_retry or until a connection ends,
/// with a warning in the log at most once per shortage_warning_interval.
/// A connection the server cannot set up (the factory throws or returns
/// null, the reactor refuses the descriptor) is closed at once and counted.
///
/// Lifetimes: destroy the server on the reactor's thread, never from inside
/// one of its connections' callbacks (use close() there). If the reactor
/// closes first, every connection gets connection_lost(ECANCELED) and is
/// freed, the listeners are detached, and the server may be destroyed
/// afterwards. Belongs to the reactor's thread.
class Server {
public:
    /// A failed accept (out of descriptors or memory) is warned of at most
    /// once per this long; the failures in between are counted in the next
    /// warning and logged at debug level.
    static constexpr std::chrono::seconds shortage_warning_interval{10};

    /// Makes the protocol of a new connection from its peer's address; null
    /// refuses the connection (it is closed).
    using ProtocolFactory = std::function<std::unique_ptr<Protocol>(const SocketAddress& peer)>;
    /// Given a connection over the limit (its descriptor, non-blocking, and
    /// the peer): may read from and write to it, once, without waiting. The
    /// server closes it afterwards.
    using RefusalHandler = std::function<void(int fd, const SocketAddress& peer)>;

    /// A server with no listener yet. std::invalid_argument for an empty factory.
    Server(Reactor& reactor, ProtocolFactory factory, ServerOptions options = {});
    /// Stops listening and ends every connection now: connection_lost()
    /// with ECONNABORTED, called from here.
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;
    Server(Server&&) = delete;
    Server& operator=(Server&&) = delete;

    /// Listens on `address`: TCP for IPv4 and IPv6 (with `options`), Unix
    /// domain for a path or abstract name. Returns the bound address (the
    /// port the kernel picked for port 0). std::system_error if it cannot be
    /// bound or watched; std::invalid_argument for an unspecified address.
    SocketAddress listen(const SocketAddress& address, const ListenOptions& options = {});
    /// listen() on a numeric host ("127.0.0.1", "::1") and port.
    /// std::invalid_argument if `host` is not numeric.
    SocketAddress listen(std::string_view host, std::uint16_t port, const ListenOptions& options = {});
    /// listen() on a Unix-domain socket path.
    SocketAddress listen_unix(std::string_view path, const UnixListenOptions& options = {});

    /// Serves connections from `listener`, bound and listening already on
    /// this server's reactor (set up with options of one's own, or shared
    /// with SO_REUSEPORT). Returns its address. std::invalid_argument if it
    /// is closed; what Reactor::add_reader() throws.
    SocketAddress listen(TcpListener listener);
    /// Serves connections from a Unix-domain `listener`, as above; the
    /// server removes its path when it stops listening (per its options).
    SocketAddress listen(UnixListener listener);

    /// Sets what is done with a connection over the limit (OverLimit::refuse);
    /// by default it is closed without a word.
    void set_refusal_handler(RefusalHandler handler) { refusal_ = std::move(handler); }

    /// Closes every listener (a Unix one removes its path); connections go on.
    /// From another thread while the reactor runs, or in a child forked
    /// after it was made, this, close(), shutdown() and drain() throw
    /// std::logic_error (the reactor's message) and change nothing.
    void stop_listening();
    /// stop_listening(), then abort() every connection: each gets its
    /// connection_lost(ECONNABORTED) in the reactor's next iteration.
    /// Safe from inside a connection's callbacks.
    void close();
    /// stop_listening(), then close() every connection (what is queued is
    /// sent first); `drained` runs once the last connection is lost (at once
    /// if there is none). Replaces an earlier shutdown's callback.
    void shutdown(std::function<void()> drained);
    /// stop_listening(), and `drained` runs once every connection open now
    /// has ended on its own (at once if there is none): a graceful stop
    /// that lets clients finish. Call shutdown() or close() later to hurry
    /// them. Replaces an earlier drain's or shutdown's callback.
    void drain(std::function<void()> drained);

    /// Connections open now (their connection_lost() not yet returned).
    [[nodiscard]] std::size_t connection_count() const noexcept { return count_; }
    /// True while some listener is watched: false before listen(), after
    /// stop_listening(), and while accepting is paused.
    [[nodiscard]] bool is_accepting() const noexcept;
    /// The bound addresses, in the order listen() was called.
    [[nodiscard]] std::vector<SocketAddress> addresses() const;
    /// The accept path's counters.
    [[nodiscard]] const ServerStats& stats() const noexcept { return stats_; }
    /// Calls `visit(transport)` for each open connection (in no set order).
    /// `visit` may close or abort them, not destroy them.
    void for_each_connection(const std::function<void(Transport&)>& visit);

private:
    struct Listener;
    struct Connection;
    struct Hook : detail::CloseHook {
        Server* owner = nullptr;
    };

    SocketAddress add_listener(std::unique_ptr<Listener> listener);
    void on_acceptable(Listener& listener);
    void open_connection(int fd, const SocketAddress& peer, bool tcp);
    void refuse(int fd, const SocketAddress& peer) noexcept;
    void pause_accepting();
    void update_accepting() noexcept;
    void released(Connection& connection) noexcept;
    static void release(void* context, Transport& transport) noexcept;
    static void reactor_closed(detail::CloseHook& hook) noexcept;

    Hook hook_;
    // Refuses another thread and a forked child; nothing once the reactor
    // closed (its close hooks end the connections).
    void check_usable(std::string_view operation) const {
        if (reactor_ != nullptr && !reactor_->is_closed()) {
            reactor_->require_usable(operation);
        }
    }
    void close_listeners() noexcept;

    Reactor* reactor_;
    ProtocolFactory factory_;
    ServerOptions options_;
    RefusalHandler refusal_;
    std::vector<std::unique_ptr<Listener>> listeners_;
    Connection* connections_ = nullptr;  // a doubly linked list
    std::size_t count_ = 0;
    std::vector<std::byte> read_buffer_;  // shared by the connections' transports
    TimerHandle retry_;
    bool resource_paused_ = false;
    // The last warning of a failed accept (EMFILE and the like), and the
    // failures logged only at debug since.
    Reactor::TimePoint shortage_warned_at_{};
    bool shortage_warned_ = false;
    std::uint64_t shortage_unwarned_ = 0;
    bool destroying_ = false;
    bool shutting_down_ = false;
    std::function<void()> drained_;
    ServerStats stats_;
};

}  // namespace muxio
