// Server: the network side of muxio-http on a muxio::Server. Feeds each
// connection's bytes to a RequestParser and answers through a Handler in
// request order; the accept loop, connection limit, queues and timers are
// muxio's Server and Transport.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "handler.hpp"
#include "muxio/reactor.hpp"
#include "muxio/server.hpp"
#include "request_parser.hpp"

namespace muxio::http {

struct ServerConfig {
    /// Address to listen on: numeric IPv4 or IPv6 (no name resolution).
    std::string bind = "127.0.0.1";
    /// 0: a port the kernel picks (see Server::port()).
    std::uint16_t port = 0;
    /// SO_REUSEPORT: several servers (one per thread) listen on one port,
    /// the kernel spreading the connections over them.
    bool reuse_port = false;
    /// A connection with no byte read or written for this long is closed:
    /// the gap between keep-alive requests, a client that stops reading.
    std::chrono::milliseconds idle_timeout{std::chrono::seconds{30}};
    /// A request head must be complete this long after its first byte
    /// arrived, however steadily its bytes trickle in (nginx's
    /// client_header_timeout); otherwise 408 and the connection closes.
    std::chrono::milliseconds header_timeout{std::chrono::seconds{20}};
    /// A request body must be complete this long after its head was
    /// (nginx's client_body_timeout, but for the whole body); otherwise 408
    /// and the connection closes.
    std::chrono::milliseconds body_timeout{std::chrono::seconds{60}};
    /// Connections open at once, at most (lingering ones included). One
    /// more is accepted, answered 503 and closed at once.
    std::size_t max_connections = 10000;
    /// After the last response of a connection, how long its leftover input
    /// is read and dropped before closing, so unread bytes do not turn the
    /// close into a reset that could destroy the response in flight.
    std::chrono::milliseconds linger_timeout{std::chrono::seconds{2}};
    /// On shutdown(), how long open requests may take before every
    /// connection is closed anyway.
    std::chrono::milliseconds shutdown_grace{std::chrono::seconds{5}};
    /// A connection stops parsing and reading while this many response
    /// bytes wait to be sent.
    std::size_t output_high_water = std::size_t{256} << 10U;
    /// Input read but not yet parsed, at most (it waits while output is high).
    std::size_t input_buffer_limit = std::size_t{64} << 10U;
    ParserLimits limits;
    /// HTTPS: the server's certificate chain and its private key, PEM files;
    /// both empty for plain HTTP. Needs muxio built with TLS (MUXIO_HAS_TLS).
    /// ALPN: http/1.1.
    std::string tls_certificate_file;
    std::string tls_key_file;
    /// HTTPS: a connection whose handshake is not complete this long after
    /// it was accepted is closed; zero: no limit.
    std::chrono::milliseconds tls_handshake_timeout{std::chrono::seconds{10}};
};

/// Counters, for logs and tests.
struct ServerStats {
    std::uint64_t accepted = 0;
    std::uint64_t requests = 0;
    /// Connections closed by a timeout of any kind; of which the head and
    /// body deadlines:
    std::uint64_t timed_out = 0;
    std::uint64_t head_timeouts = 0;
    std::uint64_t body_timeouts = 0;
    std::uint64_t accept_pauses = 0;
    /// Accepted over max_connections, answered 503 and closed.
    std::uint64_t refused = 0;
    /// Accepted, but the reactor could not watch them (e.g. select and a
    /// descriptor at or above FD_SETSIZE): closed at once.
    std::uint64_t register_failures = 0;
    /// Request bytes read from every connection.
    std::uint64_t bytes_read = 0;
    /// HTTPS: handshakes that failed (not TLS, a client rejecting the
    /// certificate, the peer gone), and those cut by tls_handshake_timeout
    /// (also counted in timed_out).
    std::uint64_t handshake_failures = 0;
    std::uint64_t handshake_timeouts = 0;
};

/// An HTTP/1.1 server on one reactor, in that reactor's thread.
///
/// Timers are the transport's one per connection: the idle timeout, and a
/// deadline set when a request head, then its body, did not arrive in the
/// read that began it. A deadline passed in the middle of a request answers
/// 408 (if the answer fits in the socket at once) and closes; an idle
/// connection between requests closes without a word.
///
/// What a connection may hold is bounded: input up to input_buffer_limit,
/// queued output up to output_high_water (then it stops parsing and
/// reading), and one open file: parsing stops while a file response is
/// queued, so however many requests a client pipelines without reading,
/// its connection holds its socket and at most one file. Over the server,
/// max_connections: one more is answered 503 and closed.
class Server {
public:
    /// Binds and listens (std::system_error if the kernel refuses,
    /// std::invalid_argument for an address that is not numeric) and starts
    /// accepting on `reactor`, which must outlive the server. With TLS files
    /// configured, loads them first: muxio::TlsError naming the file that is
    /// missing, unreadable or does not match; std::invalid_argument if only
    /// one of the two is given, or muxio was built without TLS.
    Server(Reactor& reactor, Handler handler, ServerConfig config);
    /// Closes the listener and every connection.
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;
    Server(Server&&) = delete;
    Server& operator=(Server&&) = delete;

    /// The port listened on.
    [[nodiscard]] std::uint16_t port() const noexcept { return port_; }

    /// Stops accepting, closes idle connections, lets the others finish the
    /// response under way (answered with `Connection: close`) and stops the
    /// reactor when none is left, or after the grace period. A second call
    /// closes everything at once.
    void shutdown();

    /// Connections open (those shutdown() closed no longer count).
    [[nodiscard]] std::size_t connection_count() const noexcept { return open_; }
    [[nodiscard]] ServerStats stats() const noexcept;

private:
    class Connection;

    // Logs a recurring condition at most once per interval; allow() gives
    // how many were left unlogged since the last time, or nullopt.
    class LogLimiter {
    public:
        std::optional<std::uint64_t> allow(Reactor::TimePoint now);

    private:
        std::optional<Reactor::TimePoint> next_;
        std::uint64_t suppressed_ = 0;
    };

    [[nodiscard]] static ServerOptions server_options(const ServerConfig& config);
    [[nodiscard]] bool uses_tls() const noexcept { return !config_.tls_certificate_file.empty(); }
    void refuse(int fd);
    void close_all() noexcept;

    Reactor& reactor_;
    Handler handler_;
    ServerConfig config_;
    std::uint16_t port_ = 0;
    bool stopping_ = false;
    TimerHandle grace_timer_;
    std::size_t open_ = 0;
    // The answers of the connection being served, written at once when it
    // has nothing more to parse: one buffer for every connection, so it
    // stays warm and allocated.
    std::string out_;
    std::vector<char> refusal_input_;
    DateCache date_;
    ServerStats stats_;
    LogLimiter refusal_log_;
    LogLimiter register_failure_log_;
    // Last: destroyed first, its connections' protocols still find the rest.
    muxio::Server server_;
};

}  // namespace muxio::http
