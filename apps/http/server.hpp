// Server: the network side of muxio-http on a muxio::Reactor. Accepts
// connections, feeds each one's bytes to a RequestParser, answers through a
// Handler in request order, and closes idle connections.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "handler.hpp"
#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "request_parser.hpp"

namespace muxio::http {

struct ServerConfig {
    /// Address to listen on: numeric IPv4 or IPv6 (no name resolution).
    std::string bind = "127.0.0.1";
    /// 0: a port the kernel picks (see Server::port()).
    std::uint16_t port = 0;
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
};

/// An HTTP/1.1 server on one reactor, in that reactor's thread.
///
/// Each connection has one reactor timer for all its deadlines: the idle
/// timeout since its last activity, the head deadline while a request head
/// is arriving, the body deadline while its body is. The timer is armed for
/// the nearest and, when it fires, re-armed for what is left: activity only
/// stores a time, so a busy connection costs one timer operation per
/// timeout period, not per read; the start of a head or body that arrives
/// over several reads re-arms it once if its deadline is nearer. A deadline
/// passed in the middle of a request answers 408 (if the answer fits in the
/// socket at once) and closes; an idle connection between requests closes
/// without a word.
///
/// What a connection may hold is bounded: input up to input_buffer_limit,
/// queued output up to output_high_water (then it stops reading), and one
/// open file: parsing stops while a file response is queued, so however
/// many requests a client pipelines without reading, its connection holds
/// its socket and at most one file. Over the server, max_connections.
///
/// The accept path loses nothing: a connection the reactor cannot watch
/// (its selector refuses the descriptor) is closed at once and counted, a
/// connection over max_connections is answered 503 and closed; both are
/// logged at most once per 10 s, and the listener goes on.
class Server {
public:
    /// Binds and listens (std::system_error if the kernel refuses,
    /// std::invalid_argument for an address that is not numeric) and starts
    /// accepting on `reactor`, which must outlive the server.
    Server(Reactor& reactor, Handler handler, ServerConfig config);
    /// Closes the listener and every connection.
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;
    Server(Server&&) = delete;
    Server& operator=(Server&&) = delete;

    /// The port listened on.
    [[nodiscard]] std::uint16_t port() const noexcept { return listener_.local_address().port(); }

    /// Stops accepting, closes idle connections, lets the others finish the
    /// response under way (answered with `Connection: close`) and stops the
    /// reactor when none is left, or after the grace period. A second call
    /// closes everything at once.
    void shutdown();

    [[nodiscard]] std::size_t connection_count() const noexcept { return connections_.size(); }
    [[nodiscard]] const ServerStats& stats() const noexcept { return stats_; }

private:
    struct Connection;

    // Logs a recurring condition at most once per interval; allow() gives
    // how many were left unlogged since the last time, or nullopt.
    class LogLimiter {
    public:
        std::optional<std::uint64_t> allow(Reactor::TimePoint now);

    private:
        std::optional<Reactor::TimePoint> next_;
        std::uint64_t suppressed_ = 0;
    };

    void on_acceptable();
    void open_connection(TcpStream accepted);
    void refuse(TcpStream accepted);
    void pause_accepting();
    void resume_accepting();
    void on_readable(Connection& connection);
    void on_writable(Connection& connection);
    void on_timer(Connection& connection);
    [[nodiscard]] Reactor::TimePoint deadline_of(const Connection& connection) const noexcept;
    // Notes the start of a head or a body that did not arrive in one piece.
    void track_request(Connection& connection);
    void respond_timeout(Connection& connection);
    // Parses what may be parsed, answers, writes; false if `connection` was destroyed.
    bool pump(Connection& connection);
    void parse_input(Connection& connection);
    // Parses and answers requests from `input` while back-pressure allows;
    // returns the bytes used.
    std::size_t parse_requests(Connection& connection, std::string_view input);
    void respond(Connection& connection, const Request& request);
    void respond_error(Connection& connection, const ParseError& error);
    // Queues a small error answer with Connection: close, the last one.
    void answer_and_close(Connection& connection, int status);
    bool flush(Connection& connection);
    bool begin_linger(Connection& connection);
    void drain_linger(Connection& connection);
    void update_interest(Connection& connection);
    void arm_timer(Connection& connection, Reactor::TimePoint when);
    void destroy(Connection& connection);
    void close_all();

    Reactor& reactor_;
    Handler handler_;
    ServerConfig config_;
    TcpListener listener_;
    bool accepting_ = false;
    bool accept_paused_ = false;
    TimerHandle accept_retry_;
    bool stopping_ = false;
    TimerHandle grace_timer_;
    std::unordered_map<int, std::unique_ptr<Connection>> connections_;
    std::vector<char> scratch_;  // one receive buffer, shared by every connection
    // The emptied buffer of the last text chunk sent in full. The next
    // connection to answer writes into it, whichever it is: responses are
    // then assembled in memory that stays warm and is not allocated, where a
    // buffer per connection would be one more cold line per request with
    // hundreds of connections.
    std::string spare_text_;
    DateCache date_;
    ServerStats stats_;
    LogLimiter refusal_log_;
    LogLimiter register_failure_log_;
};

}  // namespace muxio::http
