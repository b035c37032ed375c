#include "echo_server.hpp"

#include <cerrno>
#include <chrono>
#include <exception>
#include <memory>
#include <span>
#include <system_error>
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
// How long the coroutine server's accepting pauses when the process is out
// of descriptors: the queued connection stays queued, so retrying at once
// would spin.
constexpr auto accept_pause = 100ms;

bool out_of_descriptors(const std::error_code& error) noexcept {
    return error == std::errc::too_many_files_open || error == std::errc::too_many_files_open_in_system;
}

// What a connection can end with through the peer's or the network's doing,
// as opposed to the server's (the reactor refused the descriptor, memory
// ran out), which is worth a warning.
bool peer_error(const std::error_code& error) noexcept {
    return error == std::errc::connection_reset || error == std::errc::broken_pipe || error == std::errc::timed_out ||
           error == std::errc::not_connected || error == std::errc::host_unreachable ||
           error == std::errc::network_unreachable;
}

// One connection of the callback server. The steady state is one read into
// the server's shared buffer and one write of it back: a write the kernel
// takes whole copies and allocates nothing.
class EchoProtocol final : public Protocol {
public:
    EchoProtocol(EchoStats& stats, const SocketAddress& peer) : stats_{stats}, peer_{peer} {}

    void connection_made(Transport& transport) override { transport_ = &transport; }
    void data_received(std::span<const std::byte> data) override {
        stats_.bytes += data.size();
        transport_->write(data);
    }
    // The write queue's high water mark is zero: anything unsent stops
    // reading until it is out, so a slow reader cannot make the server
    // buffer without end.
    void pause_writing() override { transport_->pause_reading(); }
    void resume_writing() override { transport_->resume_reading(); }
    void connection_lost(std::error_code reason) override {
        ++stats_.closed;
        // A clean end, shutdown() or the reactor closing.
        if (!reason || reason == std::errc::connection_aborted || reason == std::errc::operation_canceled) {
            return;
        }
        ++stats_.connection_errors;
        if (peer_error(reason)) {
            logger().debug("muxio-echo: connection from {}: {}", peer_, reason.message());
        } else {
            logger().warn("muxio-echo: connection from {}, closed it: {}", peer_, reason.message());
        }
    }

private:
    EchoStats& stats_;
    Transport* transport_ = nullptr;
    SocketAddress peer_;
};

ServerOptions callback_server_options() {
    ServerOptions options;
    options.transport.read_size = read_size;
    options.transport.high_water = 0;
    options.transport.low_water = 0;
    return options;
}

}  // namespace

// ----- Callbacks ----------------------------------------------------------------------

CallbackEchoServer::CallbackEchoServer(Reactor& reactor, TcpListener listener)
    : server_{reactor,
              [this](const SocketAddress& peer) -> std::unique_ptr<Protocol> {
                  return std::make_unique<EchoProtocol>(stats_, peer);
              },
              callback_server_options()} {
    server_.listen(std::move(listener));
}

CallbackEchoServer::~CallbackEchoServer() = default;

void CallbackEchoServer::shutdown() noexcept {
    server_.close();
}

EchoStats CallbackEchoServer::stats() const noexcept {
    EchoStats stats = stats_;
    const ServerStats& accepting = server_.stats();
    stats.accepted = accepting.accepted;
    // Connections the Server accepted and could not hand to a protocol.
    stats.closed += accepting.setup_failures;
    stats.connection_errors += accepting.setup_failures;
    stats.accept_errors = accepting.accept_errors;
    return stats;
}

// ----- Coroutines -----------------------------------------------------------------------

namespace {

// The connections share one read buffer, as the callback server's do:
// read_some() reads in the reactor callback and resumes this task at once,
// so no other task runs between the read and the write back. Only what the
// socket does not take at once is copied out, to wait for room; a buffer
// per connection would instead be touched (a cache and TLB miss) by every
// message of a thousand connections. On io_uring's completion path the
// message is copied out every time instead and sent with write_all(): a
// send submitted with the loop's wait costs no system call of its own,
// where try_write() would cost one per message.
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
    const bool on_ring = stream.uses_completions();
    try {
        for (;;) {
            const std::size_t got = co_await stream.read_some(*buffer);
            if (got == 0) {
                break;
            }
            const std::span<const std::byte> received{buffer->data(), got};
            if (on_ring) {
                // A send submitted with the loop's next wait, no system call
                // of its own; its bytes must stay until it completes, and
                // other connections read into the shared buffer meanwhile.
                unsent.assign(received.begin(), received.end());
                co_await stream.write_all(unsent);
                stats.bytes += got;
                continue;
            }
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
