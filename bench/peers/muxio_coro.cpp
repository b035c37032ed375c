// muxio's coroutine layer: a task per connection, the accept loop a task too.
//   (default)  as the user writes it with muxio's sockets (apps/echo's
//              coroutine mode): TcpStream::read_some() into the buffer all
//              connections share, as the callback servers do, try_write(),
//              and write_all() of a copy of what the socket did not take
//   perconn    a 64 KiB buffer per connection and write_all() from it, as
//              asio-coro does: at a thousand connections every message
//              touches a cold buffer, which the shared one does not
//   raw        muxio::readable()/writable() on raw descriptors (a reader
//              added and removed per await) around the callback servers'
//              steps: a diagnostic of the awaitables' own cost
// readable: the ping-pong through UnixStream::readable(), whose registration
// stays between awaits (raw: muxio::readable(fd)). spawn: muxio::spawn.
#include <cstdlib>
#include <exception>
#include <memory>
#include <span>
#include <stdexcept>

#include "common.hpp"
#include "muxio/awaitables.hpp"
#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "muxio/run.hpp"
#include "muxio/task.hpp"

namespace bench {
namespace {

std::span<std::byte> shared_buffer() {
    return std::as_writable_bytes(std::span{scratch.input});
}

muxio::Task<void> serve_stream(muxio::TcpStream stream, Mode mode) {
    const std::span<std::byte> buffer = shared_buffer();
    std::string carry;
    std::string unsent;
    try {
        for (;;) {
            const std::size_t got = co_await stream.read_some(buffer);
            const auto answer =
                got == 0 ? std::nullopt : respond(mode, carry, {scratch.input.data(), got}, scratch.output);
            if (!answer) {
                break;
            }
            if (answer->empty()) {
                continue;
            }
            std::error_code error;
            const std::size_t written = stream.try_write(std::as_bytes(std::span{*answer}), error).value_or(0);
            if (error) {
                break;  // a reset: the connection is over
            }
            if (written < answer->size()) {
                unsent.assign(answer->substr(written));
                co_await stream.write_all(std::as_bytes(std::span{unsent}));
            }
        }
    } catch (const std::system_error&) {
        // a reset: the connection is over (asio-coro does the same)
    }
}

muxio::Task<void> serve_stream_own_buffer(muxio::TcpStream stream, Mode mode) {
    // Uninitialised, as asio-coro's: zeroing 64 KiB would be charged to every accept.
    const auto buffer = std::make_unique_for_overwrite<char[]>(buffer_size);
    std::string carry;
    std::string out;
    try {
        for (;;) {
            const std::size_t got =
                co_await stream.read_some(std::as_writable_bytes(std::span{buffer.get(), buffer_size}));
            const auto answer = got == 0 ? std::nullopt : respond(mode, carry, {buffer.get(), got}, out);
            if (!answer) {
                break;
            }
            co_await stream.write_all(std::as_bytes(std::span{*answer}));
        }
    } catch (const std::system_error&) {
        // a reset: the connection is over
    }
}

muxio::Task<void> accept_streams(muxio::Reactor& reactor, muxio::TcpListener listener, Mode mode, bool own_buffer) {
    for (;;) {
        muxio::TcpStream stream = co_await listener.accept();
        stream.set_nodelay(true);
        muxio::spawn(reactor, own_buffer ? serve_stream_own_buffer(std::move(stream), mode)
                                         : serve_stream(std::move(stream), mode));
    }
}

muxio::Task<void> serve_raw(muxio::Reactor& reactor, int fd, Mode mode) {
    Connection connection{fd, {}, {}, 0};
    for (Next next = Next::nothing; next != Next::close;) {
        co_await muxio::readable(reactor, fd);
        next = on_readable(connection, mode);
        while (next == Next::watch_writable || (next == Next::nothing && !connection.pending.empty())) {
            co_await muxio::writable(reactor, fd);
            next = on_writable(connection);
        }
    }
    ::close(fd);
}

muxio::Task<void> accept_raw(muxio::Reactor& reactor, int listener, Mode mode) {
    for (;;) {
        co_await muxio::readable(reactor, listener);
        for (int fd; (fd = ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0;) {
            set_nodelay(fd);
            muxio::spawn(reactor, serve_raw(reactor, fd, mode));
        }
    }
}

void serve(Mode mode, const Options& options) {
    muxio::Reactor reactor;
    if (options.variant == "raw") {
        muxio::spawn(reactor, accept_raw(reactor, make_listener(options.port), mode));
    } else {
        muxio::ListenOptions listen;
        listen.backlog = backlog;
        auto listener =
            muxio::TcpListener::bind(reactor, muxio::SocketAddress::ipv4("127.0.0.1", options.port), listen);
        muxio::spawn(reactor, accept_streams(reactor, std::move(listener), mode, options.variant == "perconn"));
    }
    for (;;) {
        reactor.run();
    }
}

void check_echo(char got, std::size_t i) {
    if (got != static_cast<char>(i)) {
        throw std::runtime_error("ping: wrong byte echoed");
    }
}

muxio::Task<void> ping(muxio::UnixStream& stream, std::size_t round_trips, std::size_t& completed) {
    for (std::size_t i = 0; i < round_trips; ++i, ++completed) {
        write_byte(stream.fileno(), static_cast<char>(i));
        co_await stream.readable();
        check_echo(read_byte(stream.fileno()), i);
    }
}

muxio::Task<void> pong(muxio::UnixStream& stream, std::size_t round_trips) {
    for (std::size_t i = 0; i < round_trips; ++i) {
        co_await stream.readable();
        write_byte(stream.fileno(), read_byte(stream.fileno()));
    }
}

muxio::Task<void> ping_raw(muxio::Reactor& reactor, int fd, std::size_t round_trips, std::size_t& completed) {
    for (std::size_t i = 0; i < round_trips; ++i, ++completed) {
        write_byte(fd, static_cast<char>(i));
        co_await muxio::readable(reactor, fd);
        check_echo(read_byte(fd), i);
    }
}

muxio::Task<void> pong_raw(muxio::Reactor& reactor, int fd, std::size_t round_trips) {
    for (std::size_t i = 0; i < round_trips; ++i) {
        co_await muxio::readable(reactor, fd);
        write_byte(fd, read_byte(fd));
    }
}

Measurement readable(std::size_t round_trips, const Options& options) {
    muxio::Reactor reactor;
    reactor.set_exception_handler([](const std::exception_ptr&) { std::abort(); });  // else the other side hangs
    std::size_t completed = 0;
    if (options.variant == "raw") {
        const SocketPair pair;
        const Timing timing;
        muxio::spawn(reactor, pong_raw(reactor, pair.second(), round_trips));
        muxio::run_until_complete(reactor, ping_raw(reactor, pair.first(), round_trips, completed));
        return timing.stop(completed);
    }
    auto [ping_end, pong_end] = muxio::UnixStream::pair(reactor);
    const Timing timing;
    muxio::spawn(reactor, pong(pong_end, round_trips));
    muxio::run_until_complete(reactor, ping(ping_end, round_trips, completed));
    return timing.stop(completed);
}

struct SpawnState {
    muxio::Reactor* reactor;
    std::size_t total;
    std::size_t completed = 0;
};

muxio::Task<void> trivial_task(SpawnState& state) {
    if (++state.completed == state.total) {
        state.reactor->stop();
    }
    co_return;
}

Measurement spawn(std::size_t tasks) {
    const SocketPair pair;
    muxio::Reactor reactor;
    reactor.add_reader(pair.first(), [] {});
    SpawnState state{&reactor, tasks};
    const Timing timing;
    for (std::size_t i = 0; i < tasks; ++i) {
        muxio::spawn(reactor, trivial_task(state));
    }
    reactor.run();
    const Measurement measured = timing.stop(state.completed);
    reactor.remove_reader(pair.first());
    return measured;
}

}  // namespace

const Library library{
    .name = "muxio-coro", .variants = "perconn,raw", .serve = serve, .readable = readable, .spawn = spawn};

}  // namespace bench
