#include "echo_server.hpp"

#include <cerrno>
#include <chrono>
#include <exception>
#include <span>
#include <utility>
#include <vector>

#include "muxio/awaitables.hpp"
#include "muxio/error.hpp"
#include "muxio/log.hpp"
#include "muxio/run.hpp"

namespace muxio::apps {

namespace {

using namespace std::chrono_literals;

// One read per readiness of at most this much: large enough for 4 KiB
// messages in bulk, small enough to stay in cache.
constexpr std::size_t read_size = std::size_t{64} * 1024;
// Connections accepted per readiness of the listener, so a flood of
// connections cannot starve the established ones.
constexpr int accepts_per_wakeup = 64;
// How long accepting pauses when the process is out of descriptors: the
// queued connection stays queued, so retrying at once would spin.
constexpr auto accept_pause = 100ms;

bool out_of_descriptors(const std::error_code& error) noexcept {
    return error == std::errc::too_many_files_open || error == std::errc::too_many_files_open_in_system;
}

}  // namespace

// ----- Callbacks ----------------------------------------------------------------------

CallbackEchoServer::CallbackEchoServer(Reactor& reactor, TcpListener listener)
    : reactor_{reactor}, listener_{std::move(listener)}, buffer_(read_size) {
    reactor_.add_reader(listener_.fileno(), [this] { accept_ready(); });
}

CallbackEchoServer::~CallbackEchoServer() {
    shutdown();
}

void CallbackEchoServer::shutdown() noexcept {
    resume_accepting_.cancel();
    listener_.close();  // removes its reader first
    // Closing a stream removes its reader and writer before the descriptor.
    stats_.closed += connections_.size();
    connections_.clear();
}

void CallbackEchoServer::accept_ready() {
    for (int i = 0; i < accepts_per_wakeup; ++i) {
        std::error_code error;
        std::optional<TcpStream> stream = listener_.try_accept(error);
        if (!stream) {
            if (error) {
                pause_accepting(error);
            }
            return;
        }
        ++stats_.accepted;
        const int fd = stream->fileno();
        try {
            serve(std::move(*stream));
        } catch (const std::exception& failure) {
            // serve() left nothing behind: the stream is closed, its reader
            // (if any) removed with it, and the table does not have it.
            ++stats_.closed;
            ++stats_.connection_errors;
            logger().warn("muxio-echo: cannot serve the connection on fd {}, closed it: {}", fd, failure.what());
        }
    }
}

// Everything that may fail is done before the connection enters the table,
// and the connection owns the stream until then: an exception closes the
// stream, which removes the reader added for it.
void CallbackEchoServer::serve(TcpStream stream) {
    stream.set_nodelay(true);
    auto connection = std::make_unique<Connection>();
    connection->stream = std::move(stream);
    const int fd = connection->stream.fileno();
    Connection* raw = connection.get();
    reactor_.add_reader(fd, [this, raw] { readable(*raw); });
    connections_.emplace(fd, std::move(connection));
}

void CallbackEchoServer::pause_accepting(const std::error_code& error) {
    ++stats_.accept_errors;
    if (!out_of_descriptors(error)) {
        // A transient failure of one connection (the kernel reports most of
        // them as the connection's own error later): go on accepting.
        logger().warn("muxio-echo: accept on {}: {}", listener_.local_address(), error.message());
        return;
    }
    logger().warn("muxio-echo: accept on {}: {}; pausing accepts for {} ms", listener_.local_address(), error.message(),
                  accept_pause.count());
    reactor_.remove_reader(listener_.fileno());
    resume_accepting_ = reactor_.call_later(accept_pause, [this] { resume_accepting(); });
}

void CallbackEchoServer::resume_accepting() {
    try {
        reactor_.add_reader(listener_.fileno(), [this] { accept_ready(); });
    } catch (const std::exception& failure) {
        // Not watching the listener would stop the server for good: try again.
        logger().warn("muxio-echo: cannot watch the listener {}: {}; retrying in {} ms", listener_.local_address(),
                      failure.what(), accept_pause.count());
        resume_accepting_ = reactor_.call_later(accept_pause, [this] { resume_accepting(); });
    }
}

void CallbackEchoServer::readable(Connection& connection) {
    std::error_code error;
    const std::optional<std::size_t> got = connection.stream.try_read(buffer_, error);
    if (!got) {
        if (error) {
            logger().debug("muxio-echo: read from {}: {}", connection.stream.peer_address(), error.message());
            ++stats_.connection_errors;
            close(connection);
        }
        return;  // spurious wakeup
    }
    if (*got == 0) {
        close(connection);
        return;
    }
    const std::span<const std::byte> received{buffer_.data(), *got};
    const std::optional<std::size_t> sent = connection.stream.try_write(received, error);
    if (error) {
        logger().debug("muxio-echo: write to {}: {}", connection.stream.peer_address(), error.message());
        ++stats_.connection_errors;
        close(connection);
        return;
    }
    const std::size_t written = sent.value_or(0);
    stats_.bytes += written;
    if (written < received.size()) {
        // The peer is not reading: keep the rest and read no more until it
        // is sent, so a slow reader cannot make the server buffer without end.
        try {
            connection.unsent.assign(received.begin() + static_cast<std::ptrdiff_t>(written), received.end());
            connection.unsent_offset = 0;
            const int fd = connection.stream.fileno();
            reactor_.remove_reader(fd);
            reactor_.add_writer(fd, [this, raw = &connection] { writable(*raw); });
        } catch (const std::exception& failure) {
            fail(connection, failure);
        }
    }
}

void CallbackEchoServer::writable(Connection& connection) {
    std::error_code error;
    const std::span<const std::byte> rest = std::span{connection.unsent}.subspan(connection.unsent_offset);
    const std::optional<std::size_t> sent = connection.stream.try_write(rest, error);
    if (error) {
        logger().debug("muxio-echo: write to {}: {}", connection.stream.peer_address(), error.message());
        ++stats_.connection_errors;
        close(connection);
        return;
    }
    connection.unsent_offset += sent.value_or(0);
    stats_.bytes += sent.value_or(0);
    if (connection.unsent_offset == connection.unsent.size()) {
        connection.unsent.clear();
        try {
            const int fd = connection.stream.fileno();
            reactor_.remove_writer(fd);
            reactor_.add_reader(fd, [this, raw = &connection] { readable(*raw); });
        } catch (const std::exception& failure) {
            fail(connection, failure);
        }
    }
}

void CallbackEchoServer::fail(Connection& connection, const std::exception& failure) {
    // Without its reader or writer the connection would stay in the table
    // for ever, never served and never closed.
    logger().warn("muxio-echo: connection from {}, closed it: {}", connection.stream.peer_address(), failure.what());
    ++stats_.connection_errors;
    close(connection);
}

void CallbackEchoServer::close(Connection& connection) {
    ++stats_.closed;
    // Erasing destroys the stream, which removes its callbacks (this one
    // included: the reactor keeps a running callback alive until it returns).
    connections_.erase(connection.stream.fileno());
}

// ----- Coroutines -----------------------------------------------------------------------

namespace {

// The connections share one read buffer, as the callback server's do:
// read_some() reads in the reactor callback and resumes this task at once,
// so no other task runs between the read and the write back. Only what the
// socket does not take at once is copied out, to wait for room; a buffer
// per connection would instead be touched (a cache and TLB miss) by every
// message of a thousand connections.
using SharedBuffer = std::shared_ptr<std::vector<std::byte>>;

// Counts a connection as accepted from its creation, and as closed once the
// coroutine frame that holds it ends, however it ends: the task returned or
// failed, or it was destroyed before it started or while suspended
// (Reactor::close()). Passed by value, so it lives in the frame.
class OpenConnection {
public:
    explicit OpenConnection(std::shared_ptr<EchoStats> stats) : stats_{std::move(stats)} { ++stats_->accepted; }
    OpenConnection(OpenConnection&& other) noexcept = default;  // leaves `other` empty
    OpenConnection& operator=(OpenConnection&&) = delete;
    OpenConnection(const OpenConnection&) = delete;
    OpenConnection& operator=(const OpenConnection&) = delete;
    ~OpenConnection() {
        if (stats_) {
            ++stats_->closed;
        }
    }
    [[nodiscard]] EchoStats& stats() const noexcept { return *stats_; }

private:
    std::shared_ptr<EchoStats> stats_;
};

Task<void> echo_connection(TcpStream stream, OpenConnection open, SharedBuffer buffer) {
    EchoStats& stats = open.stats();
    std::vector<std::byte> unsent;
    try {
        for (;;) {
            const std::size_t got = co_await stream.read_some(*buffer);
            if (got == 0) {
                break;
            }
            const std::span<const std::byte> received{buffer->data(), got};
            std::error_code error;
            const std::size_t written = stream.try_write(received, error).value_or(0);
            if (error) {
                logger().debug("muxio-echo: write to {}: {}", stream.peer_address(), error.message());
                ++stats.connection_errors;
                break;
            }
            if (written < got) {
                // The peer is not reading: nothing more is read from it
                // until this is out, so a slow reader cannot make the
                // server buffer without end.
                unsent.assign(received.begin() + static_cast<std::ptrdiff_t>(written), received.end());
                co_await stream.write_all(unsent);
            }
            stats.bytes += got;
        }
    } catch (const Cancelled&) {
        // shutdown()
    } catch (const std::system_error& error) {
        // Mostly the peer's doing (reset, gone).
        logger().debug("muxio-echo: {}", error.what());
        ++stats.connection_errors;
    } catch (const std::exception& error) {
        // The server's: the reactor could not watch the descriptor (select
        // from FD_SETSIZE up), or memory ran out. The stream closes with
        // the frame, now.
        logger().warn("muxio-echo: connection from {}, closed it: {}", stream.peer_address(), error.what());
        ++stats.connection_errors;
    }
}

Task<void> accept_loop(Reactor& reactor, TcpListener listener, std::shared_ptr<EchoStats> stats, std::stop_token stop) {
    const SharedBuffer buffer = std::make_shared<std::vector<std::byte>>(read_size);
    while (!stop.stop_requested()) {
        bool pause = false;
        try {
            TcpStream stream = co_await listener.accept();
            OpenConnection open{stats};
            try {
                stream.set_nodelay(true);
                spawn(reactor, echo_connection(std::move(stream), std::move(open), buffer), stop);
            } catch (const std::exception& error) {
                // The stream closes here, or with the task it was moved into.
                logger().warn("muxio-echo: cannot serve a connection, closed it: {}", error.what());
                ++stats->connection_errors;
            }
        } catch (const Cancelled&) {
            break;
        } catch (const std::system_error& error) {
            ++stats->accept_errors;
            logger().warn("muxio-echo: {}", error.what());
            pause = out_of_descriptors(error.code());
        } catch (const std::exception& error) {
            // Not the kernel refusing one connection: the listener itself
            // may not be watchable. Retrying at once could spin.
            ++stats->accept_errors;
            logger().warn("muxio-echo: accept: {}; pausing accepts for {} ms", error.what(), accept_pause.count());
            pause = true;
        }
        if (pause) {
            try {
                co_await sleep_for(reactor, accept_pause);
            } catch (const Cancelled&) {
                break;
            }
        }
    }
}

}  // namespace

CoroutineEchoServer::CoroutineEchoServer(Reactor& reactor, TcpListener listener) : reactor_{reactor} {
    spawn(reactor_, accept_loop(reactor_, std::move(listener), stats_, stop_.get_token()), stop_.get_token());
}

CoroutineEchoServer::~CoroutineEchoServer() {
    shutdown();
}

void CoroutineEchoServer::shutdown() noexcept {
    stop_.request_stop();
}

}  // namespace muxio::apps
