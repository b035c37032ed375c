// The asio side (standalone asio): the textbook callback echo server
// (async_read_some into the connection's buffer, async_write of what was
// read), steady_timer for timers, asio::post for call_soon and, from another
// thread, for call_soon_threadsafe. Every io_context is told it runs on one
// thread (concurrency hint 1), asio's own setting for this use. The coroutine
// side: asio::awaitable, co_spawn(..., detached) and use_awaitable (C++20
// coroutines), for the asio-coro echo server and reactor_coro_bench.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#include <asio.hpp>

#include "bench_common.hpp"

namespace bench {

namespace {

// Watches the idle descriptor (see IdlePair) for reading; asio owns a dup of it.
class IdleWatch {
public:
    IdleWatch(asio::io_context& context, int fd) : descriptor_{context, ::dup(fd)} {
        descriptor_.async_wait(asio::posix::stream_descriptor::wait_read, [](const std::error_code&) {});
    }

private:
    asio::posix::stream_descriptor descriptor_;
};

}  // namespace

// ----- Echo server -------------------------------------------------------------------------

namespace {

using asio::ip::tcp;

class Session : public std::enable_shared_from_this<Session> {
public:
    explicit Session(tcp::socket socket) : socket_{std::move(socket)}, buffer_{new char[echo_buffer_size]} {}

    void start() { read(); }

private:
    // Each connection needs its own buffer: a read completes into it before
    // its handler runs, so two connections cannot share one.
    void read() {
        socket_.async_read_some(asio::buffer(buffer_.get(), echo_buffer_size),
                                [self = shared_from_this()](const std::error_code& error, std::size_t got) {
                                    if (!error) {
                                        self->write(got);
                                    }
                                });
    }

    void write(std::size_t length) {
        asio::async_write(socket_, asio::buffer(buffer_.get(), length),
                          [self = shared_from_this()](const std::error_code& error, std::size_t /*sent*/) {
                              if (!error) {
                                  self->read();
                              }
                          });
    }

    tcp::socket socket_;
    std::unique_ptr<char[]> buffer_;
};

void accept(tcp::acceptor& acceptor) {
    acceptor.async_accept([&acceptor](const std::error_code& error, tcp::socket socket) {
        if (!error) {
            socket.set_option(tcp::no_delay{true});
            socket.non_blocking(true);
            std::make_shared<Session>(std::move(socket))->start();
        }
        accept(acceptor);
    });
}

}  // namespace

void echo_asio(const EchoConfig& config) {
    asio::io_context context{1};
    tcp::acceptor acceptor{context};
    const tcp::endpoint endpoint{asio::ip::address_v4::loopback(), config.port};
    acceptor.open(endpoint.protocol());
    acceptor.set_option(tcp::acceptor::reuse_address{true});
    acceptor.bind(endpoint);
    acceptor.listen(echo_backlog);
    accept(acceptor);
    for (;;) {
        context.run();
        context.restart();
    }
}

// ----- Echo server, coroutines ---------------------------------------------------------------
// The same server as a coroutine per connection: co_await async_read_some,
// co_await async_write of what was read. As in Session, each connection has
// its own buffer.

namespace {

asio::awaitable<void> serve_connection(tcp::socket socket) {
    const std::unique_ptr<char[]> buffer{new char[echo_buffer_size]};
    try {
        for (;;) {
            const std::size_t got =
                co_await socket.async_read_some(asio::buffer(buffer.get(), echo_buffer_size), asio::use_awaitable);
            co_await asio::async_write(socket, asio::buffer(buffer.get(), got), asio::use_awaitable);
        }
    } catch (const std::system_error&) {
        // end of file or a reset: the connection is over
    }
}

asio::awaitable<void> accept_connections(tcp::acceptor& acceptor) {
    for (;;) {
        try {
            tcp::socket socket = co_await acceptor.async_accept(asio::use_awaitable);
            socket.set_option(tcp::no_delay{true});
            socket.non_blocking(true);
            asio::co_spawn(acceptor.get_executor(), serve_connection(std::move(socket)), asio::detached);
        } catch (const std::system_error&) {
            // a failed accept: the client retries, as with the callback server
        }
    }
}

}  // namespace

void echo_asio_coro(const EchoConfig& config) {
    asio::io_context context{1};
    tcp::acceptor acceptor{context};
    const tcp::endpoint endpoint{asio::ip::address_v4::loopback(), config.port};
    acceptor.open(endpoint.protocol());
    acceptor.set_option(tcp::acceptor::reuse_address{true});
    acceptor.bind(endpoint);
    acceptor.listen(echo_backlog);
    asio::co_spawn(context, accept_connections(acceptor), asio::detached);
    for (;;) {
        context.run();
        context.restart();
    }
}

// ----- Timers -----------------------------------------------------------------------------------

namespace {

struct TimerState {
    std::size_t fired = 0;
};

}  // namespace

Measurement timers_asio(const TimerWorkload& workload) {
    asio::io_context context{1};
    std::vector<asio::steady_timer> timers;
    timers.reserve(workload.delays_ms.size());
    TimerState state;

    const std::int64_t wall_start = wall_ns();
    const std::int64_t cpu_start = process_cpu_ns();
    for (const std::uint32_t ms : workload.delays_ms) {
        auto& timer = timers.emplace_back(context, std::chrono::milliseconds{ms});
        timer.async_wait([s = &state](const std::error_code& error) {
            if (!error) {
                ++s->fired;
            }
        });
    }
    for (const std::uint32_t index : workload.cancel_order) {
        timers[index].cancel();  // the handler still runs, with operation_aborted
    }
    context.run();  // returns when no handler is pending
    return {wall_ns() - wall_start, process_cpu_ns() - cpu_start, state.fired};
}

// ----- call_soon -----------------------------------------------------------------------------------

namespace {

struct SoonState {
    asio::io_context* context;
    std::size_t scheduled = 0;
    std::size_t ran = 0;
    std::size_t total = 0;

    void step() {
        ++ran;
        if (scheduled < total) {
            ++scheduled;
            asio::post(*context, [this] { step(); });
        } else if (ran == total) {
            context->stop();
        }
    }
};

}  // namespace

Measurement soon_asio(const SoonWorkload& workload) {
    const IdlePair pair;
    asio::io_context context{1};
    const IdleWatch idle{context, pair.idle()};
    SoonState state{&context, 0, 0, workload.total};

    const std::int64_t wall_start = wall_ns();
    const std::int64_t cpu_start = process_cpu_ns();
    for (std::size_t i = 0; i < workload.chains; ++i) {
        ++state.scheduled;
        asio::post(context, [s = &state] { s->step(); });
    }
    context.run();
    return {wall_ns() - wall_start, process_cpu_ns() - cpu_start, state.ran};
}

// ----- call_soon_threadsafe ---------------------------------------------------------------------------

namespace {

struct ThreadsafeState {
    asio::io_context* context;
    std::size_t total = 0;
    std::size_t ran = 0;
    std::int64_t last_ns = 0;

    void step() {
        if (++ran == total) {
            last_ns = wall_ns();
            context->stop();
        }
    }
};

}  // namespace

// asio::post is thread-safe as it is. The idle watch keeps run() from
// returning while the queue is empty between two posts.
Measurement threadsafe_asio(const ThreadsafeWorkload& workload) {
    pin_this_thread(workload.loop_core);
    const IdlePair pair;
    asio::io_context context{1};
    const IdleWatch idle{context, pair.idle()};
    ThreadsafeState state{&context, workload.total};
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
            asio::post(context, [s = &state] { s->step(); });
        }
    }};
    asio::post(context, [&running] { running.store(true, std::memory_order_release); });
    context.run();
    const std::int64_t cpu_end = process_cpu_ns();
    producer.join();
    return {state.last_ns - first_ns, cpu_end - cpu_start, state.ran};
}

std::vector<std::int64_t> latency_asio(const LatencyWorkload& workload) {
    pin_this_thread(workload.loop_core);
    const IdlePair pair;
    asio::io_context context{1};
    const IdleWatch idle{context, pair.idle()};
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
            asio::post(context, [s = &state, sent] { s->record(sent); });
            state.wait();
            spin_until(wall_ns() + workload.gap_ns);
        }
        asio::post(context, [c = &context] { c->stop(); });
    }};
    asio::post(context, [&running] { running.store(true, std::memory_order_release); });
    context.run();
    producer.join();
    return std::move(state.latencies);
}

// ----- Coroutine micro-benchmarks -----------------------------------------------------------------

namespace {

using Local = asio::local::stream_protocol::socket;

// A failed check must not leave the other side waiting forever.
[[noreturn]] void abort_with(const char* what) {
    std::fprintf(stderr, "reactor_coro_bench: %s\n", what);
    std::abort();
}

// co_spawn's completion: an exception that escaped a coroutine ends the run.
void abort_on_exception(const std::exception_ptr& error) {
    if (!error) {
        return;
    }
    try {
        std::rethrow_exception(error);
    } catch (const std::exception& e) {
        abort_with(e.what());
    }
}

asio::awaitable<void> ping(Local& socket, std::size_t round_trips, std::size_t& completed) {
    char byte = 0;
    for (std::size_t i = 0; i < round_trips; ++i) {
        write_byte(socket.native_handle(), static_cast<char>(i));
        const std::size_t got = co_await socket.async_read_some(asio::buffer(&byte, 1), asio::use_awaitable);
        if (got != 1 || byte != static_cast<char>(i)) {
            abort_with("ping: wrong byte echoed");
        }
        ++completed;
    }
}

asio::awaitable<void> pong(Local& socket, std::size_t round_trips) {
    char byte = 0;
    for (std::size_t i = 0; i < round_trips; ++i) {
        const std::size_t got = co_await socket.async_read_some(asio::buffer(&byte, 1), asio::use_awaitable);
        if (got != 1) {
            abort_with("pong: short read");
        }
        write_byte(socket.native_handle(), byte);
    }
}

// The callback version: async_read_some with a handler that starts the next read.
struct CallbackPingPong {
    asio::io_context* context;
    Local* ping_socket;
    Local* pong_socket;
    std::size_t round_trips;
    std::size_t completed = 0;
    char ping_byte = 0;
    char pong_byte = 0;

    void read_ping() {
        ping_socket->async_read_some(asio::buffer(&ping_byte, 1),
                                     [this](const std::error_code& error, std::size_t got) {
                                         if (error || got != 1 || ping_byte != static_cast<char>(completed)) {
                                             abort_with("ping: wrong byte echoed");
                                         }
                                         if (++completed == round_trips) {
                                             context->stop();
                                             return;
                                         }
                                         write_byte(ping_socket->native_handle(), static_cast<char>(completed));
                                         read_ping();
                                     });
    }
    void read_pong() {
        pong_socket->async_read_some(asio::buffer(&pong_byte, 1),
                                     [this](const std::error_code& error, std::size_t got) {
                                         if (error || got != 1) {
                                             abort_with("pong: short read");
                                         }
                                         write_byte(pong_socket->native_handle(), pong_byte);
                                         read_pong();
                                     });
    }
};

struct SpawnState {
    asio::io_context* context;
    std::size_t total = 0;
    std::size_t completed = 0;
};

asio::awaitable<void> trivial_task(SpawnState& state) {
    if (++state.completed == state.total) {
        state.context->stop();
    }
    co_return;
}

}  // namespace

Measurement pingpong_asio_coro(const PingPongWorkload& workload) {
    asio::io_context context{1};
    Local ping_socket{context};
    Local pong_socket{context};
    asio::local::connect_pair(ping_socket, pong_socket);
    std::size_t completed = 0;

    const std::int64_t wall_start = wall_ns();
    const std::int64_t cpu_start = process_cpu_ns();
    asio::co_spawn(context, pong(pong_socket, workload.round_trips), abort_on_exception);
    asio::co_spawn(context, ping(ping_socket, workload.round_trips, completed), abort_on_exception);
    context.run();  // returns when both coroutines have ended
    return {wall_ns() - wall_start, process_cpu_ns() - cpu_start, completed};
}

Measurement pingpong_asio(const PingPongWorkload& workload) {
    asio::io_context context{1};
    Local ping_socket{context};
    Local pong_socket{context};
    asio::local::connect_pair(ping_socket, pong_socket);
    CallbackPingPong state{&context, &ping_socket, &pong_socket, workload.round_trips};

    const std::int64_t wall_start = wall_ns();
    const std::int64_t cpu_start = process_cpu_ns();
    state.read_pong();
    state.read_ping();
    write_byte(ping_socket.native_handle(), 0);
    context.run();  // until the last round trip stops it
    return {wall_ns() - wall_start, process_cpu_ns() - cpu_start, state.completed};
}

Measurement spawn_asio_coro(const SpawnWorkload& workload) {
    const IdlePair pair;
    asio::io_context context{1};
    const IdleWatch idle{context, pair.idle()};
    SpawnState state{&context, workload.tasks};

    const std::int64_t wall_start = wall_ns();
    const std::int64_t cpu_start = process_cpu_ns();
    for (std::size_t i = 0; i < workload.tasks; ++i) {
        asio::co_spawn(context, trivial_task(state), asio::detached);
    }
    context.run();  // until the last task stops it
    return {wall_ns() - wall_start, process_cpu_ns() - cpu_start, state.completed};
}

}  // namespace bench
