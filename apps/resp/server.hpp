// muxio-resp's network side: a listening socket and its connections on a
// muxio::Reactor, each connection feeding its bytes through a Parser to the
// Dispatcher and writing the replies back.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
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

struct ServerOptions {
    /// Address to listen on: a numeric IPv4 ("127.0.0.1", "0.0.0.0") or IPv6
    /// ("::1", "::", without brackets) address. Host names are not resolved.
    /// "::" accepts IPv4 connections too.
    std::string bind = "127.0.0.1";
    /// 0 lets the kernel choose; Server::start() returns the port bound.
    std::uint16_t port = 7379;
    ParserLimits limits;
    /// Most unparsed input a connection may hold (the request in progress);
    /// beyond it the connection is closed, as Redis does past
    /// client-query-buffer-limit. Never less than one maximal bulk string.
    std::size_t max_query_buffer = std::size_t{256} << 20U;
    /// A connection whose unsent replies reach this stops being read from,
    /// and its buffered requests wait, until the replies drain to a quarter
    /// of it: a client that sends without reading cannot grow the server.
    std::size_t output_high_water = std::size_t{1} << 20U;
    /// How long to stop accepting when out of descriptors (EMFILE and the
    /// like): the pending connection cannot be taken, and the listener
    /// would otherwise be reported readable in every iteration.
    std::chrono::milliseconds accept_pause{100};
};

/// Serves RESP2 on one listening socket. Single-threaded: everything runs in
/// the reactor's callbacks. Errors on one connection close that connection
/// (logged at debug level); the server goes on.
class Server {
public:
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
        std::uint64_t protocol_errors = 0;
        std::uint64_t accept_pauses = 0;
        std::uint64_t read_pauses = 0;  // times a connection hit output_high_water
    };
    [[nodiscard]] const Stats& stats() const noexcept { return stats_; }

private:
    struct Connection;

    void on_acceptable();
    void pause_accepting(int error);
    void resume_accepting();
    void add_connection(muxio::TcpStream stream);
    void on_readable(Connection& connection);
    void pump(Connection& connection);
    void run_requests(Connection& connection);
    [[nodiscard]] bool flush(Connection& connection);
    void update_interest(Connection& connection);
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
    Stats stats_;
};

}  // namespace resp
