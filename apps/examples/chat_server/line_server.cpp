#include "line_server.hpp"

#include <sys/socket.h>

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>

#include <fmt/format.h>

#include "muxio/transport.hpp"

namespace chat {

// One client: the Protocol its Transport calls. The Server owns it and frees
// it right after connection_lost(), so it may keep `transport_` until then.
class LineConnection final : public muxio::Protocol {
public:
    LineConnection(LineServer& server, ClientId id) : server_{server}, id_{id} {}

    void connection_made(muxio::Transport& transport) override {
        transport_ = &transport;
        server_.clients_.emplace(id_, this);
        server_.handler_->on_connect(id_);
    }

    void data_received(std::span<const std::byte> data) override {
        // `data` is the Server's read buffer, shared by every connection:
        // keep the start of a line that is not complete yet.
        input_.append(reinterpret_cast<const char*>(data.data()), data.size());
        std::size_t start = 0;
        for (std::size_t newline = input_.find('\n'); newline != std::string::npos;
             newline = input_.find('\n', start)) {
            std::string_view line{input_.data() + start, newline - start};
            start = newline + 1;
            if (!line.empty() && line.back() == '\r') {
                line.remove_suffix(1);
            }
            if (line.size() > server_.options_.max_line) {
                refuse_long_line();
                return;
            }
            server_.handler_->on_line(id_, line);
            if (transport_->is_closing()) {
                return;  // the handler let it go (/quit): read no further
            }
        }
        input_.erase(0, start);
        if (input_.size() > server_.options_.max_line) {
            refuse_long_line();  // no newline in sight: stop buffering
        }
    }

    // The client ended its side: it still gets what is queued for it, like
    // a client that said /quit.
    bool eof_received() override {
        leave();
        return true;  // leave() closed it already
    }

    // The high water mark is --max-queued (see server_options()): the client
    // is that far behind. A chat room cannot stop producing for one member
    // (the others keep talking), so it is dropped instead; that bounds the
    // memory a stalled client costs.
    void pause_writing() override {
        ++server_.stats_.dropped_slow;
        reason_ = "not reading";
        transport_->abort();
    }

    // Only the deadline leave() sets is armed: the linger ran out.
    bool timed_out(muxio::TimeoutKind /*kind*/) override {
        reason_ = "did not read its last lines";
        return false;  // the transport aborts
    }

    // Never runs inside a Transport call (so never inside LineServer::send()
    // while the room iterates over its members): telling the handler here,
    // which broadcasts the departure, is safe.
    void connection_lost(std::error_code error) override {
        server_.clients_.erase(id_);
        if (reason_.empty() && error) {
            reason_ = error.message();  // "Connection reset by peer", ...
        }
        // No connection_made() (the reactor closed first): the handler never
        // heard of it. No handler: the LineServer is being destroyed.
        if (transport_ != nullptr && server_.handler_ != nullptr) {
            server_.handler_->on_disconnect(id_, reason_);
        }
    }

    void send(const Message& message) {
        // A leaving client gets nothing more (write() after close() throws).
        if (!transport_->is_closing()) {
            transport_->write(*message);
        }
    }

    // Closes once the queue is sent (reading stops now), but gives a client
    // that does not read only the linger to take it.
    void leave() {
        if (transport_->is_closing()) {
            return;  // leaving already, or gone: keep the first linger
        }
        transport_->set_deadline_after(server_.options_.linger);
        transport_->close();
    }

private:
    void refuse_long_line() {
        input_.clear();
        send(std::make_shared<const std::string>(
            fmt::format("* line longer than {} bytes, disconnecting\n", server_.options_.max_line)));
        leave();
    }

    LineServer& server_;
    ClientId id_;
    muxio::Transport* transport_ = nullptr;
    std::string input_;
    std::string reason_;  // why it left, when the transport's error does not tell
};

namespace {

muxio::ServerOptions server_options(const LineServerOptions& options) {
    muxio::ServerOptions result;
    result.max_connections = options.max_clients;
    result.over_limit = muxio::OverLimit::refuse;  // with the refusal handler below
    // pause_writing() as soon as more than --max-queued bytes wait: the
    // bound on a slow client (LineConnection::pause_writing()).
    result.transport.high_water = options.max_queued;
    result.transport.low_water = options.max_queued;
    return result;
}

}  // namespace

LineServer::LineServer(muxio::Reactor& reactor, LineServerOptions options)
    : options_{options},
      server_{reactor,
              [this](const muxio::SocketAddress& /*peer*/) {
                  ++stats_.accepted;
                  return std::make_unique<LineConnection>(*this, next_id_++);
              },
              server_options(options)} {
    server_.set_refusal_handler([](int fd, const muxio::SocketAddress& /*peer*/) {
        // Best effort, one send: the Server closes the connection after.
        static constexpr std::string_view full = "* the server is full, try later\n";
        (void)::send(fd, full.data(), full.size(), MSG_NOSIGNAL);
    });
}

LineServer::~LineServer() {
    handler_ = nullptr;  // then server_, destroyed first, ends the connections
}

muxio::SocketAddress LineServer::listen(const muxio::SocketAddress& address, LineHandler& handler) {
    handler_ = &handler;
    return server_.listen(address);
}

void LineServer::send(ClientId client, const Message& message) {
    if (const auto found = clients_.find(client); found != clients_.end()) {
        found->second->send(message);
    }
}

void LineServer::disconnect(ClientId client) {
    if (const auto found = clients_.find(client); found != clients_.end()) {
        found->second->leave();
    }
}

}  // namespace chat
