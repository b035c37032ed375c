// The connection layer of the chat server: accepts TCP connections on a
// reactor, splits what each sends into lines for a LineHandler, and sends
// what the handler queues, with a bound on what a client may leave unread.
//
// Everything about sockets lives here, on Reactor::add_reader/add_writer and
// the try_* calls of muxio/net.hpp; the protocol (chat_room.hpp) sees only
// ClientLink and LineHandler.
#pragma once

#include <chrono>
#include <cstddef>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "chat_room.hpp"
#include "muxio/net.hpp"
#include "muxio/reactor.hpp"

namespace chat {

struct LineServerOptions {
    // A client sending a longer line is told so and disconnected.
    std::size_t max_line = 1024;
    // Bytes queued for a client beyond what its socket took. A client that
    // does not read hits this and is disconnected, so it costs the server at
    // most this much memory, however much the others say.
    std::size_t max_queued = std::size_t{64} * 1024;
    // More clients than this are told the server is full and closed.
    std::size_t max_clients = 1000;
    // How long a client being disconnected (/quit, a line too long) has to
    // take the lines still queued for it before its connection is closed.
    std::chrono::milliseconds linger{5000};
};

struct LineServerStats {
    std::size_t accepted = 0;
    std::size_t dropped_slow = 0;  // disconnected for not reading
};

class LineServer final : public ClientLink {
public:
    LineServer(muxio::Reactor& reactor, muxio::TcpListener listener, LineServerOptions options);
    // Cancels its callbacks; the connections' sockets close with them.
    ~LineServer();
    LineServer(const LineServer&) = delete;
    LineServer& operator=(const LineServer&) = delete;
    LineServer(LineServer&&) = delete;
    LineServer& operator=(LineServer&&) = delete;

    // Starts accepting; `handler` hears of every connection from then on and
    // must outlive the server.
    void start(LineHandler& handler);

    void send(ClientId client, const Message& message) override;
    void disconnect(ClientId client) override;

    [[nodiscard]] std::size_t connections() const noexcept { return connections_.size(); }
    [[nodiscard]] const LineServerStats& stats() const noexcept { return stats_; }
    [[nodiscard]] const muxio::SocketAddress& local_address() const noexcept { return listener_.local_address(); }

private:
    struct Connection {
        ClientId id = 0;
        muxio::TcpStream stream;
        std::string input;           // the start of a line not complete yet
        std::deque<Message> output;  // what the socket did not take yet, oldest first
        std::size_t front_sent = 0;  // bytes of output.front() already written
        std::size_t queued = 0;      // bytes in `output`, minus front_sent
        bool writer = false;         // a writer callback is registered
        bool closing = false;        // disconnect() asked: close once `output` is out
        bool closed = false;         // the socket is closed, the erase is pending
        muxio::TimerHandle linger;   // ends the wait of a closing client for its last lines

        Connection() = default;
        Connection(const Connection&) = delete;
        Connection& operator=(const Connection&) = delete;
        Connection(Connection&&) = delete;
        Connection& operator=(Connection&&) = delete;
        ~Connection() { linger.cancel(); }  // its callback points here
    };

    void accept();
    void on_readable(Connection& c);
    void refuse_long_line(Connection& c);
    void on_writable(Connection& c);
    void flush(Connection& c);
    // Closes the socket now; the connection is erased, and the handler told,
    // from a reactor callback of its own (never inside send() or a handler
    // call, where the protocol may be iterating over its members).
    void close(Connection& c, std::string reason);
    void reap();

    muxio::Reactor& reactor_;
    muxio::TcpListener listener_;
    LineServerOptions options_;
    LineHandler* handler_ = nullptr;
    std::unordered_map<ClientId, std::unique_ptr<Connection>> connections_;
    std::vector<std::pair<ClientId, std::string>> closed_;  // waiting for reap()
    muxio::TimerHandle reap_;
    muxio::TimerHandle accept_pause_;
    ClientId next_id_ = 1;
    // One read buffer for every connection: what a read returns is appended
    // to that connection's input before the next read.
    std::vector<std::byte> read_buffer_ = std::vector<std::byte>(std::size_t{16} * 1024);
    LineServerStats stats_;
};

}  // namespace chat
