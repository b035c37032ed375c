// muxio-resp's network side: a listening socket and its connections on a
// muxio::Reactor, each connection feeding its bytes through a Parser to the
// Dispatcher and writing the replies back.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include <spdlog/logger.h>

#include "commands.hpp"
#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "resp_parser.hpp"

namespace resp {

/// The `muxio-resp` logger, on stderr, warnings and errors only unless
/// told otherwise (main's --log-level, or MUXIO_LOG_LEVEL).
[[nodiscard]] spdlog::logger& logger();

/// Limits follow Redis's configuration of the same purpose (named below);
/// memory for a connection is committed as its bytes arrive, never for a
/// length or count a request announces, so a limit costs nothing until a
/// client really sends or asks for that much.
struct ServerOptions {
    /// Address to listen on: a numeric IPv4 ("127.0.0.1", "0.0.0.0") or IPv6
    /// ("::1", "::", without brackets) address. Host names are not resolved.
    /// "::" accepts IPv4 connections too.
    std::string bind = "127.0.0.1";
    /// 0 lets the kernel choose; Server::start() returns the port bound.
    std::uint16_t port = 7379;
    /// max_bulk is proto-max-bulk-len: a longer bulk string is a protocol
    /// error, answered before its data is read, and the connection closes.
    ParserLimits limits;
    /// client-query-buffer-limit: the largest request. A connection sending
    /// a larger one, or announcing one, is closed without a reply (and the
    /// request is not run), as Redis closes it. Redis bounds the bytes
    /// buffered; here requests run as soon as they are complete, so the
    /// input held unparsed is at most the request in progress, and the
    /// bound is on the request, whatever reads it arrived in. At least
    /// limits.max_bulk. The default, twice the largest bulk string, lets a
    /// request carry one maximal value and the rest of a command.
    std::size_t max_query_buffer = std::size_t{1} << 30U;
    /// client-output-buffer-limit's hard limit: a connection whose unsent
    /// replies would go past it is closed at once without them. Commands
    /// that read large values (GET, MGET) see it before building the reply.
    /// Redis sets no limit for ordinary clients; here it is one bound on
    /// what a single client can make the server hold. At least
    /// bulk_reply_size(limits.max_bulk), so that every stored value can be
    /// read back.
    std::size_t max_output_buffer = std::size_t{1} << 30U;
    /// client-output-buffer-limit's soft limit: a connection whose unsent
    /// replies stay above it for output_soft_time (0: at once) is closed.
    /// 0: no soft limit.
    std::size_t output_soft_limit = 0;
    std::chrono::milliseconds output_soft_time{0};
    /// maxclients: a connection beyond this many is answered
    /// "-ERR max number of clients reached" and closed; the others go on.
    std::size_t max_clients = 10000;
    /// A connection whose unsent replies reach this stops being read from,
    /// and its buffered requests wait, until the replies drain to a quarter
    /// of it: a client that sends without reading cannot grow the server.
    std::size_t output_high_water = std::size_t{1} << 20U;
    /// How long to stop accepting when out of descriptors (EMFILE and the
    /// like): the pending connection cannot be taken, and the listener
    /// would otherwise be reported readable in every iteration.
    std::chrono::milliseconds accept_pause{100};
};

/// Why `options` cannot be served with, as a message naming the options in
/// main's terms (--max-bulk ...); empty when they are consistent.
[[nodiscard]] std::string check_options(const ServerOptions& options);

/// Serves RESP2 on one listening socket. Single-threaded: everything runs in
/// the reactor's callbacks. Errors on one connection close that connection
/// (logged at debug level); the server goes on.
///
/// Accepting is exception-safe: a connection that cannot be taken on (the
/// reactor refuses its descriptor, as select does at FD_SETSIZE, or memory
/// runs out) is closed at once, logged and counted in
/// Stats::registration_failures; nothing of it stays behind and the
/// listener goes on.
class Server {
public:
    /// std::invalid_argument if check_options() finds fault with `options`.
    Server(muxio::Reactor& reactor, Dispatcher& dispatcher, ServerOptions options);
    /// close().
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    /// Binds, listens and starts accepting; returns the port bound.
    /// std::invalid_argument if `bind` is not a numeric IPv4 or IPv6
    /// address; std::system_error if it cannot be bound.
    std::uint16_t start();
    /// Stops accepting and closes every connection, replies unsent or not.
    void close() noexcept;

    [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
    [[nodiscard]] std::size_t connection_count() const noexcept { return connections_.size(); }
    /// False while accepting is paused after running out of descriptors.
    [[nodiscard]] bool accepting() const noexcept { return accepting_; }

    struct Stats {
        std::uint64_t accepted = 0;
        std::uint64_t bytes_received = 0;
        std::uint64_t protocol_errors = 0;
        std::uint64_t accept_pauses = 0;
        std::uint64_t read_pauses = 0;               // times a connection hit output_high_water
        std::uint64_t rejected_connections = 0;      // over max_clients
        std::uint64_t registration_failures = 0;     // accepted, then refused by the reactor (or memory)
        std::uint64_t query_limit_disconnects = 0;   // over max_query_buffer
        std::uint64_t output_limit_disconnects = 0;  // over max_output_buffer or the soft limit
        std::size_t peak_input_buffer = 0;           // largest input buffer of any connection, allocated bytes
        std::size_t peak_output_buffer = 0;          // likewise for output
    };
    [[nodiscard]] const Stats& stats() const noexcept { return stats_; }
    /// Bytes allocated to the connections' input and output buffers now.
    [[nodiscard]] std::size_t buffer_capacity() const noexcept;

private:
    struct Connection;

    void on_acceptable();
    void pause_accepting(int error);
    void resume_accepting();
    void refuse(muxio::TcpStream stream) noexcept;
    void add_connection(muxio::TcpStream stream);
    void on_readable(Connection& connection);
    static void make_room(Connection& connection, std::size_t size, std::size_t ceiling);
    void pump(Connection& connection);
    void settle(Connection& connection);
    void run_buffered(Connection& connection);
    std::size_t run_requests(Connection& connection, std::string_view input);
    void refuse_request(Connection& connection, std::size_t size, bool announced);
    [[nodiscard]] bool flush(Connection& connection);
    void watch_soft_limit(Connection& connection);
    void update_interest(Connection& connection);
    void note_buffers(const Connection& connection) noexcept;
    void drop(Connection& connection) noexcept;
    template <class F>
    void guarded(Connection* connection, F&& body) noexcept;

    muxio::Reactor& reactor_;
    Dispatcher& dispatcher_;
    ServerOptions options_;
    muxio::TcpListener listener_;
    std::uint16_t port_ = 0;
    bool accepting_ = false;
    muxio::TimerHandle accept_timer_;
    std::uint64_t next_id_ = 0;
    std::unordered_map<int, std::unique_ptr<Connection>> connections_;  // by descriptor
    // Where a connection with nothing buffered reads into: complete requests
    // run from here, and only an unfinished rest is copied to the
    // connection, so an idle connection holds no input buffer.
    std::string scratch_;
    Stats stats_;
};

}  // namespace resp
