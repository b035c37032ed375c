// muxio-resp's network side: a muxio::Server listening on one address, each
// connection a Protocol feeding its bytes through a Parser to the Dispatcher
// and writing each batch of replies back with one write.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <spdlog/logger.h>

#include "commands.hpp"
#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "muxio/server.hpp"
#include "resp_parser.hpp"

namespace resp {

/// muxio-resp's logger: muxio's own (include/muxio/log.hpp), on stderr,
/// warnings and errors only unless told otherwise (main's --log-level, or
/// MUXIO_LOG_LEVEL), so that one level governs the app and the library
/// under it (its accept pauses and refused connections, say).
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
    /// SO_REUSEPORT: several servers (one per thread) listen on one port,
    /// the kernel spreading the connections over them.
    bool reuse_port = false;
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
    /// replies go above it and are above it still output_soft_time later
    /// (0: at once) is closed; seeing them below it in between (after a
    /// batch of replies, or as they drain) starts the count afresh.
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
/// Accepting (a muxio::Server) is exception-safe: a connection that cannot
/// be taken on (the reactor refuses its descriptor, as select does at
/// FD_SETSIZE, or memory runs out) is closed at once, logged and counted in
/// Stats::registration_failures; nothing of it stays behind and the listener
/// goes on.
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
    /// Not from inside a connection's callbacks.
    void close() noexcept;

    [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
    [[nodiscard]] std::size_t connection_count() const noexcept { return server_ ? server_->connection_count() : 0; }
    /// False while accepting is paused after running out of descriptors.
    [[nodiscard]] bool accepting() const noexcept { return server_ && server_->is_accepting(); }

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
        std::size_t peak_output_buffer = 0;          // likewise for output: replies built or queued
    };
    [[nodiscard]] const Stats& stats() const noexcept;
    /// Bytes held for the connections' input and output now: their input
    /// buffers and unsent replies, and the buffer replies are built in.
    [[nodiscard]] std::size_t buffer_capacity() const;

private:
    class Connection;

    void note_buffers(std::size_t input, std::size_t output) noexcept;

    muxio::Reactor& reactor_;
    Dispatcher& dispatcher_;
    ServerOptions options_;
    std::unique_ptr<muxio::Server> server_;
    std::uint16_t port_ = 0;
    std::uint64_t next_id_ = 0;
    // Where every connection builds a batch of replies before its one
    // write: the transport queues only what the kernel does not take, so
    // an idle connection holds no output buffer.
    std::string out_;
    // The muxio::Server's counters are added in when stats() is asked.
    mutable Stats stats_;
    muxio::ServerStats closed_server_stats_;  // of a server close() destroyed
    std::uint64_t setup_failures_ = 0;        // the reactor refused a connection's descriptor
};

}  // namespace resp
