// Standalone asio, written the textbook way: a session per connection that
// async_read_some()s into its own buffer (a read completes into it before its
// handler runs, so two connections cannot share one) and async_write()s the
// answer, then reads again; steady_timer for timers, asio::post for
// call_soon and, from another thread, for call_soon_threadsafe. Every
// io_context is told it runs on one thread (concurrency hint 1), asio's own
// setting for this use. The variant coro: asio::awaitable, co_spawn(...,
// detached) and use_awaitable (C++20 coroutines).
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <memory>

#include <asio.hpp>

#include "common.hpp"

namespace bench {
namespace {

using asio::ip::tcp;
Mode mode = Mode::echo;

class Session : public std::enable_shared_from_this<Session> {
public:
    explicit Session(tcp::socket socket) : socket_{std::move(socket)}, input_{new char[buffer_size]} {}

    void read() {
        socket_.async_read_some(asio::buffer(input_.get(), buffer_size),
                                [self = shared_from_this()](const std::error_code& error, std::size_t got) {
                                    if (!error) {
                                        self->answer(got);
                                    }
                                });
    }

private:
    void answer(std::size_t got) {
        const auto answer = respond(mode, carry_, {input_.get(), got}, output_);
        if (!answer || answer->empty()) {
            if (answer) {
                read();
            }
            return;  // otherwise the session ends with its last reference
        }
        asio::async_write(socket_, asio::buffer(answer->data(), answer->size()),
                          [self = shared_from_this()](const std::error_code& error, std::size_t /*sent*/) {
                              if (!error) {
                                  self->read();
                              }
                          });
    }

    tcp::socket socket_;
    std::unique_ptr<char[]> input_;
    std::string carry_;
    std::string output_;
};

void accept(tcp::acceptor& acceptor) {
    acceptor.async_accept([&acceptor](const std::error_code& error, tcp::socket socket) {
        if (!error) {
            socket.set_option(tcp::no_delay{true});
            socket.non_blocking(true);
            std::make_shared<Session>(std::move(socket))->read();
        }
        accept(acceptor);
    });
}

asio::awaitable<void> serve_coro(tcp::socket socket) {
    const std::unique_ptr<char[]> input{new char[buffer_size]};
    std::string carry;
    std::string output;
    try {
        for (;;) {
            const std::size_t got =
                co_await socket.async_read_some(asio::buffer(input.get(), buffer_size), asio::use_awaitable);
            const auto answer = respond(mode, carry, {input.get(), got}, output);
            if (!answer) {
                break;
            }
            co_await asio::async_write(socket, asio::buffer(answer->data(), answer->size()), asio::use_awaitable);
        }
    } catch (const std::system_error&) {
        // end of file or a reset: the connection is over
    }
}

asio::awaitable<void> accept_coro(tcp::acceptor& acceptor) {
    for (;;) {
        try {
            tcp::socket socket = co_await acceptor.async_accept(asio::use_awaitable);
            socket.set_option(tcp::no_delay{true});
            socket.non_blocking(true);
            asio::co_spawn(acceptor.get_executor(), serve_coro(std::move(socket)), asio::detached);
        } catch (const std::system_error&) {
            // a failed accept: the client retries, as with the callback server
        }
    }
}

void serve(Mode served, const Options& options) {
    mode = served;
    asio::io_context context{1};
    tcp::acceptor acceptor{context};
    const tcp::endpoint endpoint{asio::ip::address_v4::loopback(), options.port};
    acceptor.open(endpoint.protocol());
    acceptor.set_option(tcp::acceptor::reuse_address{true});
    acceptor.bind(endpoint);
    acceptor.listen(backlog);
    if (options.variant == "coro") {
        asio::co_spawn(context, accept_coro(acceptor), asio::detached);
    } else {
        accept(acceptor);
    }
    for (;;) {
        context.run();
        context.restart();
    }
}

Measurement timers(const TimerWorkload& workload) {
    asio::io_context context{1};
    std::vector<asio::steady_timer> handles;
    handles.reserve(workload.delays_ms.size());
    std::size_t fired = 0;
    const Timing timing;
    for (const std::uint32_t ms : workload.delays_ms) {
        handles.emplace_back(context, std::chrono::milliseconds{ms}).async_wait([n = &fired](const std::error_code& e) {
            if (!e) {
                ++*n;
            }
        });
    }
    for (const std::uint32_t index : workload.cancel_order) {
        handles[index].cancel();  // the handler still runs, with operation_aborted
    }
    context.run();  // returns when no handler is pending
    return timing.stop(fired);
}

// An io_context watching the idle end of a socket pair (asio owns a dup of it).
struct Loop {
    SocketPair pair;
    asio::io_context context{1};
    asio::posix::stream_descriptor idle{context, ::dup(pair.first())};
    Loop() {
        idle.async_wait(asio::posix::stream_descriptor::wait_read, [](const std::error_code&) {});
    }
    template <class F>
    void post(F f) {
        asio::post(context, std::move(f));
    }
    void run() { context.run(); }
    void stop() { context.stop(); }
};

Measurement soon(const SoonWorkload& workload) {
    Loop loop;
    return soon_chains(
        workload, [&](auto&& callback) { loop.post(std::forward<decltype(callback)>(callback)); }, [&] { loop.stop(); },
        [&] { loop.run(); });
}

using Local = asio::local::stream_protocol::socket;

// A failed check must not leave the other side waiting forever.
void check_or_abort(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "bench-asio: %s\n", what);
        std::abort();
    }
}

asio::awaitable<void> ping(Local& socket, std::size_t round_trips, std::size_t& completed) {
    char byte = 0;
    for (std::size_t i = 0; i < round_trips; ++i, ++completed) {
        write_byte(socket.native_handle(), static_cast<char>(i));
        const std::size_t got = co_await socket.async_read_some(asio::buffer(&byte, 1), asio::use_awaitable);
        check_or_abort(got == 1 && byte == static_cast<char>(i), "ping: wrong byte echoed");
    }
}

asio::awaitable<void> pong(Local& socket, std::size_t round_trips) {
    char byte = 0;
    for (std::size_t i = 0; i < round_trips; ++i) {
        const std::size_t got = co_await socket.async_read_some(asio::buffer(&byte, 1), asio::use_awaitable);
        check_or_abort(got == 1, "pong: short read");
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
        ping_socket->async_read_some(asio::buffer(&ping_byte, 1), [this](const std::error_code& error,
                                                                         std::size_t got) {
            check_or_abort(!error && got == 1 && ping_byte == static_cast<char>(completed), "ping: wrong byte echoed");
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
                                         check_or_abort(!error && got == 1, "pong: short read");
                                         write_byte(pong_socket->native_handle(), pong_byte);
                                         read_pong();
                                     });
    }
};

Measurement readable(std::size_t round_trips, const Options& options) {
    asio::io_context context{1};
    Local ping_socket{context};
    Local pong_socket{context};
    asio::local::connect_pair(ping_socket, pong_socket);
    if (options.variant == "coro") {
        std::size_t completed = 0;
        const auto abort_on_exception = [](const std::exception_ptr& error) { check_or_abort(!error, "exception"); };
        const Timing timing;
        asio::co_spawn(context, pong(pong_socket, round_trips), abort_on_exception);
        asio::co_spawn(context, ping(ping_socket, round_trips, completed), abort_on_exception);
        context.run();  // returns when both coroutines have ended
        return timing.stop(completed);
    }
    CallbackPingPong state{&context, &ping_socket, &pong_socket, round_trips};
    const Timing timing;
    state.read_pong();
    state.read_ping();
    write_byte(ping_socket.native_handle(), 0);
    context.run();  // until the last round trip stops it
    return timing.stop(state.completed);
}

struct SpawnState {
    asio::io_context* context;
    std::size_t total;
    std::size_t completed = 0;
};

asio::awaitable<void> trivial_task(SpawnState& state) {
    if (++state.completed == state.total) {
        state.context->stop();
    }
    co_return;
}

Measurement spawn(std::size_t tasks) {
    Loop loop;
    SpawnState state{&loop.context, tasks};
    const Timing timing;
    for (std::size_t i = 0; i < tasks; ++i) {
        asio::co_spawn(loop.context, trivial_task(state), asio::detached);
    }
    loop.run();  // until the last task stops it
    return timing.stop(state.completed);
}

}  // namespace

const Library library{.name = "asio",
                      .variants = "coro",
                      .serve = serve,
                      .timers = timers,
                      .soon = soon,
                      .threadsafe = threadsafe_throughput<Loop>,
                      .latency = threadsafe_latency<Loop>,
                      .readable = readable,
                      .spawn = spawn};

}  // namespace bench
