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
        stream->set_nodelay(true);
        const int fd = stream->fileno();
        auto connection = std::make_unique<Connection>();
        connection->stream = std::move(*stream);
        Connection* raw = connection.get();
        connections_.emplace(fd, std::move(connection));
        ++stats_.accepted;
        reactor_.add_reader(fd, [this, raw] { readable(*raw); });
    }
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
    resume_accepting_ = reactor_.call_later(
        accept_pause, [this] { reactor_.add_reader(listener_.fileno(), [this] { accept_ready(); }); });
}

void CallbackEchoServer::readable(Connection& connection) {
    std::error_code error;
    const std::optional<std::size_t> got = connection.stream.try_read(buffer_, error);
    if (!got) {
        if (error) {
            logger().debug("muxio-echo: read from {}: {}", connection.stream.peer_address(), error.message());
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
        close(connection);
        return;
    }
    const std::size_t written = sent.value_or(0);
    stats_.bytes += written;
    if (written < received.size()) {
        // The peer is not reading: keep the rest and read no more until it
        // is sent, so a slow reader cannot make the server buffer without end.
        connection.unsent.assign(received.begin() + static_cast<std::ptrdiff_t>(written), received.end());
        connection.unsent_offset = 0;
        const int fd = connection.stream.fileno();
        reactor_.remove_reader(fd);
        reactor_.add_writer(fd, [this, raw = &connection] { writable(*raw); });
    }
}

void CallbackEchoServer::writable(Connection& connection) {
    std::error_code error;
    const std::span<const std::byte> rest = std::span{connection.unsent}.subspan(connection.unsent_offset);
    const std::optional<std::size_t> sent = connection.stream.try_write(rest, error);
    if (error) {
        logger().debug("muxio-echo: write to {}: {}", connection.stream.peer_address(), error.message());
        close(connection);
        return;
    }
    connection.unsent_offset += sent.value_or(0);
    stats_.bytes += sent.value_or(0);
    if (connection.unsent_offset == connection.unsent.size()) {
        connection.unsent.clear();
        const int fd = connection.stream.fileno();
        reactor_.remove_writer(fd);
        reactor_.add_reader(fd, [this, raw = &connection] { readable(*raw); });
    }
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

Task<void> echo_connection(TcpStream stream, std::shared_ptr<EchoStats> stats, SharedBuffer buffer) {
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
                break;
            }
            if (written < got) {
                // The peer is not reading: nothing more is read from it
                // until this is out, so a slow reader cannot make the
                // server buffer without end.
                unsent.assign(received.begin() + static_cast<std::ptrdiff_t>(written), received.end());
                co_await stream.write_all(unsent);
            }
            stats->bytes += got;
        }
    } catch (const Cancelled&) {
        // shutdown()
    } catch (const std::system_error& error) {
        logger().debug("muxio-echo: {}", error.what());
    }
    ++stats->closed;
}

Task<void> accept_loop(Reactor& reactor, TcpListener listener, std::shared_ptr<EchoStats> stats, std::stop_token stop) {
    const SharedBuffer buffer = std::make_shared<std::vector<std::byte>>(read_size);
    while (!stop.stop_requested()) {
        bool pause = false;
        try {
            TcpStream stream = co_await listener.accept();
            stream.set_nodelay(true);
            ++stats->accepted;
            spawn(reactor, echo_connection(std::move(stream), stats, buffer), stop);
        } catch (const Cancelled&) {
            break;
        } catch (const std::system_error& error) {
            ++stats->accept_errors;
            logger().warn("muxio-echo: {}", error.what());
            pause = out_of_descriptors(error.code());
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
