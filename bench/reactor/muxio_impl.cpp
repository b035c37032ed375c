// The muxio side of every reactor benchmark: muxio::Reactor with its default
// selector (epoll here), callbacks capturing one or two pointers (stored
// inline, no allocation); and the coroutine side (muxio::Task, spawn(),
// readable()/writable() on raw descriptors) of the echo server and of
// reactor_coro_bench.
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <span>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "bench_common.hpp"
#include "muxio/awaitables.hpp"
#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "muxio/run.hpp"
#include "muxio/task.hpp"

namespace bench {

// ----- Echo server -------------------------------------------------------------------

namespace {

char echo_buffer[echo_buffer_size];

class MuxioEcho {
public:
    explicit MuxioEcho(muxio::Reactor& reactor) : reactor_{reactor} {}

    void listen(int fd) {
        reactor_.add_reader(fd, [this, fd] { accept_all(fd); });
    }

private:
    using Connection = EchoConnection;

    void accept_all(int listener) {
        for (;;) {
            const int fd = ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                return;  // EAGAIN: accepted them all (other errors: the client retries)
            }
            set_nodelay(fd);
            auto* connection = new Connection{fd, {}, 0};
            reactor_.add_reader(fd, [this, connection] { on_readable(connection); });
        }
    }

    void on_readable(Connection* connection) {
        apply(connection, echo_on_readable(*connection, echo_buffer, sizeof echo_buffer));
    }

    void on_writable(Connection* connection) { apply(connection, echo_on_writable(*connection)); }

    void apply(Connection* connection, EchoNext next) {
        switch (next) {
            case EchoNext::nothing:
                break;
            case EchoNext::watch_writable:
                reactor_.add_writer(connection->fd, [this, connection] { on_writable(connection); });
                reactor_.remove_reader(connection->fd);
                break;
            case EchoNext::watch_readable:
                reactor_.add_reader(connection->fd, [this, connection] { on_readable(connection); });
                reactor_.remove_writer(connection->fd);
                break;
            case EchoNext::close:
                close(connection);
                break;
        }
    }

    void close(Connection* connection) {
        reactor_.remove_reader(connection->fd);
        reactor_.remove_writer(connection->fd);
        ::close(connection->fd);
        delete connection;
    }

    muxio::Reactor& reactor_;
};

}  // namespace

void echo_muxio(const EchoConfig& config) {
    muxio::Reactor reactor;
    MuxioEcho server{reactor};
    server.listen(make_listener(config.port));
    for (;;) {
        reactor.run();
    }
}

// ----- Echo server, coroutines ----------------------------------------------------------
// muxio-coro-raw: the same steps as MuxioEcho (echo_on_readable / echo_on_writable into the
// same static buffer: a read and its write never straddle a suspension), but
// each connection is a task that awaits readability, and writability while
// the socket has not taken everything.

namespace {

muxio::Task<void> serve_connection(muxio::Reactor& reactor, int fd) {
    EchoConnection connection{fd, {}, 0};
    for (;;) {
        co_await muxio::readable(reactor, fd);
        EchoNext next = echo_on_readable(connection, echo_buffer, sizeof echo_buffer);
        if (next == EchoNext::watch_writable) {
            do {
                co_await muxio::writable(reactor, fd);
                next = echo_on_writable(connection);
            } while (next == EchoNext::nothing);
        }
        if (next == EchoNext::close) {
            break;
        }
    }
    ::close(fd);
}

muxio::Task<void> accept_connections(muxio::Reactor& reactor, int listener) {
    for (;;) {
        co_await muxio::readable(reactor, listener);
        for (;;) {
            const int fd = ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                break;  // EAGAIN: accepted them all (other errors: the client retries)
            }
            set_nodelay(fd);
            muxio::spawn(reactor, serve_connection(reactor, fd));
        }
    }
}

// The same server as the user writes it with muxio's sockets (apps/echo's
// coroutine mode): read_some() on a TcpStream, whose readiness registration
// stays from one await to the next, into the buffer every connection shares,
// as the callback servers do. read_some() reads in the reactor callback and
// resumes the task at once, so nothing else runs before the bytes are
// written back; only what the socket does not take is copied, to wait for
// room with write_all().
muxio::Task<void> serve_stream(muxio::TcpStream stream) {
    const std::span<std::byte> buffer = std::as_writable_bytes(std::span{echo_buffer});
    std::vector<std::byte> unsent;
    try {
        for (;;) {
            const std::size_t got = co_await stream.read_some(buffer);
            if (got == 0) {
                break;
            }
            std::error_code error;
            const std::size_t written = stream.try_write(buffer.first(got), error).value_or(0);
            if (error) {
                break;  // a reset: the connection is over
            }
            if (written < got) {
                unsent.assign(buffer.begin() + static_cast<std::ptrdiff_t>(written),
                              buffer.begin() + static_cast<std::ptrdiff_t>(got));
                co_await stream.write_all(unsent);
            }
        }
    } catch (const std::system_error&) {
        // a reset: the connection is over (asio-coro does the same)
    }
}

// muxio-coro-perconn: as asio-coro's session, a buffer per connection and
// write_all() from it. At a thousand connections every message then touches
// a cold buffer (and its page), which the shared buffer does not.
muxio::Task<void> serve_stream_own_buffer(muxio::TcpStream stream) {
    // Uninitialised, as asio-coro's: zeroing 64 KiB per connection would be
    // charged to every accept.
    const auto buffer = std::make_unique_for_overwrite<std::byte[]>(sizeof echo_buffer);
    try {
        for (;;) {
            const std::size_t got = co_await stream.read_some({buffer.get(), sizeof echo_buffer});
            if (got == 0) {
                break;
            }
            co_await stream.write_all(std::span<const std::byte>{buffer.get(), got});
        }
    } catch (const std::system_error&) {
        // a reset: the connection is over (asio-coro does the same)
    }
}

using ServeStream = muxio::Task<void> (*)(muxio::TcpStream);

muxio::Task<void> accept_streams(muxio::Reactor& reactor, muxio::TcpListener listener, ServeStream serve) {
    for (;;) {
        muxio::TcpStream stream = co_await listener.accept();
        stream.set_nodelay(true);
        muxio::spawn(reactor, serve(std::move(stream)));
    }
}

[[noreturn]] void run_stream_server(const EchoConfig& config, ServeStream serve) {
    muxio::Reactor reactor;
    muxio::ListenOptions options;
    options.backlog = echo_backlog;
    muxio::spawn(reactor, accept_streams(reactor,
                                         muxio::TcpListener::bind(
                                             reactor, muxio::SocketAddress::ipv4("127.0.0.1", config.port), options),
                                         serve));
    for (;;) {
        reactor.run();
    }
}

}  // namespace

void echo_muxio_coro(const EchoConfig& config) {
    run_stream_server(config, &serve_stream);
}

void echo_muxio_coro_perconn(const EchoConfig& config) {
    run_stream_server(config, &serve_stream_own_buffer);
}

void echo_muxio_coro_raw(const EchoConfig& config) {
    muxio::Reactor reactor;
    muxio::spawn(reactor, accept_connections(reactor, make_listener(config.port)));
    for (;;) {
        reactor.run();
    }
}

// ----- Timers ------------------------------------------------------------------------------

namespace {

struct TimerState {
    muxio::Reactor* reactor;
    std::size_t fired = 0;
    std::size_t expected = 0;
};

}  // namespace

Measurement timers_muxio(const TimerWorkload& workload) {
    muxio::Reactor reactor;
    TimerState state{&reactor, 0, workload.expected_fires()};
    std::vector<muxio::TimerHandle> handles;
    handles.reserve(workload.delays_ms.size());

    const std::int64_t wall_start = wall_ns();
    const std::int64_t cpu_start = process_cpu_ns();
    for (const std::uint32_t ms : workload.delays_ms) {
        handles.push_back(reactor.call_later(std::chrono::milliseconds{ms}, [s = &state] {
            if (++s->fired == s->expected) {
                s->reactor->stop();
            }
        }));
    }
    for (const std::uint32_t index : workload.cancel_order) {
        handles[index].cancel();
    }
    if (state.expected > 0) {
        reactor.run();
    }
    return {wall_ns() - wall_start, process_cpu_ns() - cpu_start, state.fired};
}

// ----- call_soon -----------------------------------------------------------------------------

namespace {

struct SoonState {
    muxio::Reactor* reactor;
    std::size_t scheduled = 0;
    std::size_t ran = 0;
    std::size_t total = 0;

    void step() {
        ++ran;
        if (scheduled < total) {
            ++scheduled;
            reactor->call_soon([this] { step(); });
        } else if (ran == total) {
            reactor->stop();
        }
    }
};

}  // namespace

Measurement soon_muxio(const SoonWorkload& workload) {
    const IdlePair pair;
    muxio::Reactor reactor;
    reactor.add_reader(pair.idle(), [] {});
    SoonState state{&reactor, 0, 0, workload.total};

    const std::int64_t wall_start = wall_ns();
    const std::int64_t cpu_start = process_cpu_ns();
    for (std::size_t i = 0; i < workload.chains; ++i) {
        ++state.scheduled;
        reactor.call_soon([s = &state] { s->step(); });
    }
    reactor.run();
    return {wall_ns() - wall_start, process_cpu_ns() - cpu_start, state.ran};
}

// ----- call_soon_threadsafe -------------------------------------------------------------------

namespace {

// What each cross-thread callback captures: one pointer, as with the peers.
struct ThreadsafeState {
    muxio::Reactor* reactor;
    std::size_t total = 0;
    std::size_t ran = 0;
    std::int64_t last_ns = 0;

    void step() {
        if (++ran == total) {
            last_ns = wall_ns();
            reactor->stop();
        }
    }
};

}  // namespace

Measurement threadsafe_muxio(const ThreadsafeWorkload& workload) {
    pin_this_thread(workload.loop_core);
    const IdlePair pair;
    muxio::Reactor reactor;
    reactor.add_reader(pair.idle(), [] {});
    ThreadsafeState state{&reactor, workload.total};
    std::atomic<bool> running{false};
    std::int64_t first_ns = 0;
    std::int64_t cpu_start = 0;

    std::thread producer{[&] {
        pin_this_thread(workload.producer_core);
        while (!running.load(std::memory_order_acquire)) {
        }
        cpu_start = process_cpu_ns();
        first_ns = wall_ns();
        for (std::size_t i = 0; i < workload.total; ++i) {
            reactor.call_soon_threadsafe([s = &state] { s->step(); });
        }
    }};
    reactor.call_soon([&running] { running.store(true, std::memory_order_release); });
    reactor.run();
    const std::int64_t cpu_end = process_cpu_ns();
    producer.join();
    return {state.last_ns - first_ns, cpu_end - cpu_start, state.ran};
}

std::vector<std::int64_t> latency_muxio(const LatencyWorkload& workload) {
    pin_this_thread(workload.loop_core);
    const IdlePair pair;
    muxio::Reactor reactor;
    reactor.add_reader(pair.idle(), [] {});
    LatencyState state;
    state.latencies.reserve(workload.samples);
    std::atomic<bool> running{false};

    std::thread producer{[&] {
        pin_this_thread(workload.producer_core);
        while (!running.load(std::memory_order_acquire)) {
        }
        for (std::size_t i = 0; i < workload.samples; ++i) {
            state.done.store(false, std::memory_order_relaxed);
            const std::int64_t sent = wall_ns();
            reactor.call_soon_threadsafe([s = &state, sent] { s->record(sent); });
            state.wait();
            spin_until(wall_ns() + workload.gap_ns);
        }
        reactor.stop_threadsafe();
    }};
    reactor.call_soon([&running] { running.store(true, std::memory_order_release); });
    reactor.run();
    producer.join();
    return std::move(state.latencies);
}

// ----- Coroutine micro-benchmarks --------------------------------------------------------------

namespace {

// A failed check in a callback or a spawned task would otherwise be logged
// and leave the other side waiting forever.
void abort_on_exception(std::exception_ptr error) {
    try {
        std::rethrow_exception(std::move(error));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "reactor_coro_bench: %s\n", e.what());
    }
    std::abort();
}

muxio::Task<void> ping(muxio::Reactor& reactor, int fd, std::size_t round_trips, std::size_t& completed) {
    for (std::size_t i = 0; i < round_trips; ++i) {
        write_byte(fd, static_cast<char>(i));
        co_await muxio::readable(reactor, fd);
        if (read_byte(fd) != static_cast<char>(i)) {
            throw std::runtime_error("ping: wrong byte echoed");
        }
        ++completed;
    }
}

// Through UnixStream's readable(), whose registration stays between awaits.
muxio::Task<void> ping_stream(muxio::UnixStream& stream, std::size_t round_trips, std::size_t& completed) {
    for (std::size_t i = 0; i < round_trips; ++i) {
        write_byte(stream.fileno(), static_cast<char>(i));
        co_await stream.readable();
        if (read_byte(stream.fileno()) != static_cast<char>(i)) {
            throw std::runtime_error("ping: wrong byte echoed");
        }
        ++completed;
    }
}

muxio::Task<void> pong_stream(muxio::UnixStream& stream, std::size_t round_trips) {
    for (std::size_t i = 0; i < round_trips; ++i) {
        co_await stream.readable();
        write_byte(stream.fileno(), read_byte(stream.fileno()));
    }
}

muxio::Task<void> pong(muxio::Reactor& reactor, int fd, std::size_t round_trips) {
    for (std::size_t i = 0; i < round_trips; ++i) {
        co_await muxio::readable(reactor, fd);
        write_byte(fd, read_byte(fd));
    }
}

// The callback version: both readers stay registered for the whole run.
struct CallbackPingPong {
    muxio::Reactor* reactor;
    int ping_fd;
    int pong_fd;
    std::size_t round_trips;
    std::size_t completed = 0;

    void on_ping_readable() {
        if (read_byte(ping_fd) != static_cast<char>(completed)) {
            throw std::runtime_error("ping: wrong byte echoed");
        }
        if (++completed == round_trips) {
            reactor->stop();
        } else {
            write_byte(ping_fd, static_cast<char>(completed));
        }
    }
    void on_pong_readable() const { write_byte(pong_fd, read_byte(pong_fd)); }
};

struct SpawnState {
    muxio::Reactor* reactor;
    std::size_t total = 0;
    std::size_t completed = 0;
};

muxio::Task<void> trivial_task(SpawnState& state) {
    if (++state.completed == state.total) {
        state.reactor->stop();
    }
    co_return;
}

}  // namespace

Measurement pingpong_muxio_coro(const PingPongWorkload& workload) {
    muxio::Reactor reactor;
    reactor.set_exception_handler(abort_on_exception);
    auto [ping_end, pong_end] = muxio::UnixStream::pair(reactor);
    std::size_t completed = 0;

    const std::int64_t wall_start = wall_ns();
    const std::int64_t cpu_start = process_cpu_ns();
    muxio::spawn(reactor, pong_stream(pong_end, workload.round_trips));
    muxio::run_until_complete(reactor, ping_stream(ping_end, workload.round_trips, completed));
    return {wall_ns() - wall_start, process_cpu_ns() - cpu_start, completed};
}

Measurement pingpong_muxio_coro_raw(const PingPongWorkload& workload) {
    const SocketPair pair;
    muxio::Reactor reactor;
    reactor.set_exception_handler(abort_on_exception);
    std::size_t completed = 0;

    const std::int64_t wall_start = wall_ns();
    const std::int64_t cpu_start = process_cpu_ns();
    muxio::spawn(reactor, pong(reactor, pair.second(), workload.round_trips));
    muxio::run_until_complete(reactor, ping(reactor, pair.first(), workload.round_trips, completed));
    return {wall_ns() - wall_start, process_cpu_ns() - cpu_start, completed};
}

Measurement pingpong_muxio(const PingPongWorkload& workload) {
    const SocketPair pair;
    muxio::Reactor reactor;
    reactor.set_exception_handler(abort_on_exception);
    CallbackPingPong state{&reactor, pair.first(), pair.second(), workload.round_trips};

    const std::int64_t wall_start = wall_ns();
    const std::int64_t cpu_start = process_cpu_ns();
    reactor.add_reader(state.pong_fd, [s = &state] { s->on_pong_readable(); });
    reactor.add_reader(state.ping_fd, [s = &state] { s->on_ping_readable(); });
    write_byte(state.ping_fd, 0);
    reactor.run();
    const Measurement measured{wall_ns() - wall_start, process_cpu_ns() - cpu_start, state.completed};
    reactor.remove_reader(state.ping_fd);
    reactor.remove_reader(state.pong_fd);
    return measured;
}

Measurement spawn_muxio_coro(const SpawnWorkload& workload) {
    const IdlePair pair;
    muxio::Reactor reactor;
    reactor.add_reader(pair.idle(), [] {});
    SpawnState state{&reactor, workload.tasks};

    const std::int64_t wall_start = wall_ns();
    const std::int64_t cpu_start = process_cpu_ns();
    for (std::size_t i = 0; i < workload.tasks; ++i) {
        muxio::spawn(reactor, trivial_task(state));
    }
    reactor.run();
    const Measurement measured{wall_ns() - wall_start, process_cpu_ns() - cpu_start, state.completed};
    reactor.remove_reader(pair.idle());
    return measured;
}

}  // namespace bench
