#include "line_server.hpp"

#include <chrono>
#include <optional>
#include <span>
#include <string_view>
#include <system_error>

#include <fmt/format.h>

namespace chat {

namespace {

std::span<const std::byte> unsent(const std::string& text, std::size_t sent) {
    return std::as_bytes(std::span{text}).subspan(sent);
}

}  // namespace

LineServer::LineServer(muxio::Reactor& reactor, muxio::TcpListener listener, LineServerOptions options)
    : reactor_{reactor}, listener_{std::move(listener)}, options_{options} {}

LineServer::~LineServer() {
    reap_.cancel();
    accept_pause_.cancel();
}

void LineServer::start(LineHandler& handler) {
    handler_ = &handler;
    reactor_.add_reader(listener_.fileno(), [this] { accept(); });
}

// A few connections per wakeup: the reactor is level-triggered, so more
// queued ones come next iteration, after the established clients had a turn.
void LineServer::accept() {
    for (int round = 0; round < 16; ++round) {
        std::error_code error;
        std::optional<muxio::TcpStream> stream = listener_.try_accept(error);
        if (error) {
            // Out of descriptors, say. The connection stays queued and the
            // listener readable: retrying at once would spin, so pause.
            fmt::print(stderr, "example-chat-server: accept: {}\n", error.message());
            reactor_.remove_reader(listener_.fileno());
            accept_pause_ = reactor_.call_later(std::chrono::milliseconds{100}, [this] {
                reactor_.add_reader(listener_.fileno(), [this] { accept(); });
            });
            return;
        }
        if (!stream) {
            return;
        }
        if (connections_.size() >= options_.max_clients) {
            // Best effort, one write; the stream closes at the end of scope.
            static constexpr std::string_view full = "* the server is full, try later\n";
            std::error_code ignored;
            (void)stream->try_write(std::as_bytes(std::span{full}), ignored);
            continue;
        }
        ++stats_.accepted;
        auto connection = std::make_unique<Connection>();
        connection->id = next_id_++;
        connection->stream = std::move(*stream);
        Connection& c = *connection;
        reactor_.add_reader(c.stream.fileno(), [this, &c] { on_readable(c); });
        connections_.emplace(c.id, std::move(connection));
        handler_->on_connect(c.id);
    }
}

void LineServer::on_readable(Connection& c) {
    std::error_code error;
    const std::optional<std::size_t> got = c.stream.try_read(read_buffer_, error);
    if (!got && !error) {
        return;  // nothing after all
    }
    if (!got || *got == 0) {
        close(c, error ? error.message() : std::string{});
        return;
    }
    c.input.append(reinterpret_cast<const char*>(read_buffer_.data()), *got);
    std::size_t start = 0;
    for (std::size_t newline = c.input.find('\n'); newline != std::string::npos; newline = c.input.find('\n', start)) {
        std::string_view line{c.input.data() + start, newline - start};
        start = newline + 1;
        if (!line.empty() && line.back() == '\r') {
            line.remove_suffix(1);
        }
        if (line.size() > options_.max_line) {
            refuse_long_line(c);
            return;
        }
        handler_->on_line(c.id, line);
        if (c.closing || c.closed) {
            return;  // the handler let it go (/quit): read no further
        }
    }
    c.input.erase(0, start);
    if (c.input.size() > options_.max_line) {
        refuse_long_line(c);  // no newline in sight: stop buffering
    }
}

void LineServer::refuse_long_line(Connection& c) {
    c.input.clear();
    send(c.id, std::make_shared<const std::string>(
                   fmt::format("* line longer than {} bytes, disconnecting\n", options_.max_line)));
    disconnect(c.id);
}

void LineServer::send(ClientId client, const Message& message) {
    const auto found = connections_.find(client);
    if (found == connections_.end() || found->second->closing || found->second->closed) {
        return;
    }
    Connection& c = *found->second;
    std::size_t sent = 0;
    if (c.output.empty()) {
        // The common case: the socket takes it all now, nothing is queued.
        std::error_code error;
        sent = c.stream.try_write(unsent(*message, 0), error).value_or(0);
        if (error) {
            close(c, error.message());
            return;
        }
        if (sent == message->size()) {
            return;
        }
        c.front_sent = sent;
    }
    c.output.push_back(message);
    c.queued += message->size() - sent;
    if (c.queued > options_.max_queued) {
        ++stats_.dropped_slow;
        close(c, "not reading");
        return;
    }
    if (!c.writer) {
        reactor_.add_writer(c.stream.fileno(), [this, &c] { on_writable(c); });
        c.writer = true;
    }
}

void LineServer::disconnect(ClientId client) {
    const auto found = connections_.find(client);
    if (found == connections_.end() || found->second->closed) {
        return;
    }
    Connection& c = *found->second;
    c.closing = true;
    reactor_.remove_reader(c.stream.fileno());  // what it sends from now on is ignored
    if (c.output.empty()) {
        close(c, {});
    } else {
        // A client that does not take its last lines must not keep the
        // connection open forever (nothing more is queued for it meanwhile).
        c.linger = reactor_.call_later(options_.linger, [this, &c] { close(c, "did not read its last lines"); });
    }
}

void LineServer::on_writable(Connection& c) {
    flush(c);
    if (c.closed) {
        return;
    }
    if (c.output.empty()) {
        reactor_.remove_writer(c.stream.fileno());
        c.writer = false;
        if (c.closing) {
            close(c, {});
        }
    }
}

void LineServer::flush(Connection& c) {
    while (!c.output.empty()) {
        const std::string& front = *c.output.front();
        std::error_code error;
        const std::size_t sent = c.stream.try_write(unsent(front, c.front_sent), error).value_or(0);
        if (error) {
            close(c, error.message());
            return;
        }
        if (sent == 0) {
            return;  // the socket is full again
        }
        c.front_sent += sent;
        c.queued -= sent;
        if (c.front_sent < front.size()) {
            return;
        }
        c.output.pop_front();
        c.front_sent = 0;
    }
}

void LineServer::close(Connection& c, std::string reason) {
    if (c.closed) {
        return;
    }
    c.closed = true;
    c.linger.cancel();
    c.stream.close();  // removes its reader and writer, then closes
    c.output.clear();
    c.queued = 0;
    closed_.emplace_back(c.id, std::move(reason));
    if (!reap_.pending()) {
        reap_ = reactor_.call_soon([this] { reap(); });
    }
}

void LineServer::reap() {
    // Taken whole: telling the handler may close more connections, which
    // then wait for the next reap().
    const std::vector<std::pair<ClientId, std::string>> closed = std::exchange(closed_, {});
    for (const auto& [id, reason] : closed) {
        connections_.erase(id);
        handler_->on_disconnect(id, reason);
    }
}

}  // namespace chat
