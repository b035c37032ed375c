// The chat protocol, apart from any socket: who is in the room, what their
// lines mean, who receives what. It talks to connections only through
// ClientLink, and hears from them through LineHandler, so the connection
// layer (line_server.hpp) can be replaced without touching it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>

namespace chat {

// Names a connection for as long as the server runs; never reused.
using ClientId = std::uint64_t;

// A line as sent, newline included. One broadcast line is built once and
// shared by the room's fan-out; each recipient's Transport::write() then sends
// it at once and copies into that connection's write queue only what the
// kernel does not take, so a slow reader holds its own copy of the rest.
using Message = std::shared_ptr<const std::string>;

// What the protocol asks of the connection layer.
class ClientLink {
public:
    // Queues `message` for `client` (the layer drops a client that does not
    // keep up). Ignored for a client that is gone or leaving.
    virtual void send(ClientId client, const Message& message) = 0;
    // Closes `client` once what is queued for it is sent; LineHandler::
    // on_disconnect() follows.
    virtual void disconnect(ClientId client) = 0;

protected:
    ~ClientLink() = default;
};

// What the connection layer tells the protocol. The layer calls these from
// reactor callbacks, never from inside a ClientLink call, so the protocol
// may send and disconnect from any of them.
class LineHandler {
public:
    virtual void on_connect(ClientId client) = 0;
    // One line, without its "\n" or "\r\n".
    virtual void on_line(ClientId client, std::string_view line) = 0;
    // The client is gone; `reason` is empty when it left by itself.
    virtual void on_disconnect(ClientId client, std::string_view reason) = 0;

protected:
    ~LineHandler() = default;
};

// One room: every line a member sends goes to every other member, prefixed
// with the sender's nickname. Commands: /nick NAME, /who, /quit.
class ChatRoom final : public LineHandler {
public:
    explicit ChatRoom(ClientLink& link) : link_{link} {}

    void on_connect(ClientId client) override;
    void on_line(ClientId client, std::string_view line) override;
    void on_disconnect(ClientId client, std::string_view reason) override;

    [[nodiscard]] std::size_t members() const noexcept { return nicknames_.size(); }

private:
    void rename(ClientId client, std::string_view wanted);
    void list_members(ClientId client);
    void tell(ClientId client, std::string text);
    void broadcast(ClientId except, std::string text);

    ClientLink& link_;
    std::map<ClientId, std::string> nicknames_;  // ordered by arrival, for /who
    std::uint64_t guests_ = 0;
};

}  // namespace chat
