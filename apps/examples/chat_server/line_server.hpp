// The connection layer of the chat server: a muxio::Server accepts the TCP
// connections and gives each a Transport and a LineConnection (a Protocol),
// which splits what the client sends into lines for a LineHandler; what the
// handler sends goes to the transport's write queue, bounded per client.
//
// The Server does the socket work (accept loop, connection limit, pausing
// when out of descriptors), the Transport the buffering (write queue, water
// marks, close after drain, timers); this layer only maps them onto the
// protocol's seam, ClientLink and LineHandler (chat_room.hpp).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <unordered_map>

#include "chat_room.hpp"
#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "muxio/server.hpp"

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
    // How long a client being disconnected (/quit, a line too long, its end
    // of stream) has to take the lines still queued for it before its
    // connection is closed anyway.
    std::chrono::milliseconds linger{5000};
};

struct LineServerStats {
    std::uint64_t accepted = 0;      // clients served, the refused ones not counted
    std::uint64_t dropped_slow = 0;  // disconnected for not reading
};

class LineConnection;

class LineServer final : public ClientLink {
public:
    LineServer(muxio::Reactor& reactor, LineServerOptions options);
    // Ends every connection without telling the handler, which may be gone
    // already.
    ~LineServer();
    LineServer(const LineServer&) = delete;
    LineServer& operator=(const LineServer&) = delete;
    LineServer(LineServer&&) = delete;
    LineServer& operator=(LineServer&&) = delete;

    // Starts accepting on `address`; `handler` hears of every connection
    // from then on. Returns the bound address (the port 0 resolved).
    muxio::SocketAddress listen(const muxio::SocketAddress& address, LineHandler& handler);

    void send(ClientId client, const Message& message) override;
    void disconnect(ClientId client) override;

    [[nodiscard]] std::size_t connections() const noexcept { return server_.connection_count(); }
    [[nodiscard]] const LineServerStats& stats() const noexcept { return stats_; }

private:
    friend class LineConnection;

    LineServerOptions options_;
    LineHandler* handler_ = nullptr;
    LineServerStats stats_;
    ClientId next_id_ = 1;
    // The clients whose connection_lost() has not run yet. The Server owns
    // the LineConnections; they add and remove themselves here.
    std::unordered_map<ClientId, LineConnection*> clients_;
    // Last: destroyed first, it ends the connections while clients_ exists.
    muxio::Server server_;
};

}  // namespace chat
