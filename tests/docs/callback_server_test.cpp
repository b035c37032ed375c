// The callback server README.md shows, compiled and run. The code between
// the readme-begin and readme-end markers is printed in README.md verbatim;
// readme_snippets_test.cpp fails when the two differ.

// readme-begin: callback-server
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <system_error>
#include <unordered_map>
#include <vector>

#include <muxio/muxio.hpp>

// An echo server on reactor callbacks. A connection that neither sends nor
// takes a byte for `idle` is closed. While a peer does not read what it was
// sent, nothing more is read from it, so a slow peer costs one buffer.
class EchoServer {
public:
    EchoServer(muxio::Reactor& reactor, muxio::TcpListener listener, muxio::Reactor::Duration idle)
        : reactor_{reactor}, listener_{std::move(listener)}, idle_{idle} {
        reactor_.add_reader(listener_.fileno(), [this] { accept(); });
    }
    // The timers' callbacks point at this server; the sockets remove their
    // own callbacks when they close.
    ~EchoServer() {
        pause_.cancel();
        for (auto& entry : connections_) {
            entry.second->idle_timer.cancel();
        }
    }
    EchoServer(const EchoServer&) = delete;
    EchoServer& operator=(const EchoServer&) = delete;

    [[nodiscard]] std::size_t connections() const { return connections_.size(); }

private:
    struct Connection {
        muxio::TcpStream stream;
        std::vector<std::byte> unsent;  // what the peer has not taken yet
        muxio::TimerHandle idle_timer;
    };

    // One connection per call: the reactor is level-triggered, so the next
    // iteration calls again while more are queued, and the established
    // connections get their turn in between.
    void accept() {
        std::error_code error;
        std::optional<muxio::TcpStream> stream = listener_.try_accept(error);
        if (error) {
            // Out of descriptors, say. The connection stays queued and the
            // listener readable: retrying at once would spin, so pause.
            reactor_.remove_reader(listener_.fileno());
            pause_ = reactor_.call_later(std::chrono::milliseconds{100},
                                         [this] { reactor_.add_reader(listener_.fileno(), [this] { accept(); }); });
            return;
        }
        if (!stream) {
            return;  // nothing queued after all
        }
        auto connection = std::make_unique<Connection>();
        connection->stream = std::move(*stream);
        Connection& c = *connection;
        const int fd = c.stream.fileno();
        // If the reactor refuses the descriptor (select from FD_SETSIZE up),
        // this throws, the stream closes with `connection`, and the reactor's
        // exception handler logs it.
        reactor_.add_reader(fd, [this, &c] { on_readable(c); });
        connections_.emplace(fd, std::move(connection));
        restart_idle_timer(c);
    }

    void on_readable(Connection& c) {
        std::error_code error;
        const std::optional<std::size_t> got = c.stream.try_read(buffer_, error);
        if (!got && !error) {
            return;  // nothing to read after all
        }
        if (!got || *got == 0) {
            close(c);  // an error, or the peer closed
            return;
        }
        restart_idle_timer(c);
        send(c, std::span{buffer_}.first(*got));
    }

    // Back-pressure: what the socket does not take now waits in the
    // connection for a writer, and reading stops until it is out.
    void send(Connection& c, std::span<const std::byte> bytes) {
        std::error_code error;
        const std::size_t sent = c.stream.try_write(bytes, error).value_or(0);
        if (error) {
            close(c);
            return;
        }
        if (sent < bytes.size()) {
            c.unsent.assign(bytes.begin() + static_cast<std::ptrdiff_t>(sent), bytes.end());
            reactor_.remove_reader(c.stream.fileno());
            reactor_.add_writer(c.stream.fileno(), [this, &c] { on_writable(c); });
        }
    }

    void on_writable(Connection& c) {
        std::error_code error;
        const std::size_t sent = c.stream.try_write(c.unsent, error).value_or(0);
        if (error) {
            close(c);
            return;
        }
        if (sent == 0) {
            return;  // no room after all
        }
        restart_idle_timer(c);
        c.unsent.erase(c.unsent.begin(), c.unsent.begin() + static_cast<std::ptrdiff_t>(sent));
        if (c.unsent.empty()) {
            reactor_.remove_writer(c.stream.fileno());
            reactor_.add_reader(c.stream.fileno(), [this, &c] { on_readable(c); });
        }
    }

    // Every byte read or written moves the deadline to `idle` from now. It
    // also closes a connection left with neither reader nor writer because
    // an add_reader() or add_writer() above threw.
    void restart_idle_timer(Connection& c) {
        c.idle_timer.cancel();
        c.idle_timer = reactor_.call_later(idle_, [this, &c] { close(c); });
    }

    // Destroying the stream removes its reader or writer and closes it. The
    // callback running now stays alive until it returns, but `c` is gone.
    void close(Connection& c) {
        c.idle_timer.cancel();
        connections_.erase(c.stream.fileno());
    }

    muxio::Reactor& reactor_;
    muxio::TcpListener listener_;
    muxio::Reactor::Duration idle_;
    // One buffer for every connection: each read is sent (or copied to
    // `unsent`) before the next read.
    std::vector<std::byte> buffer_ = std::vector<std::byte>(64 * 1024);
    std::unordered_map<int, std::unique_ptr<Connection>> connections_;
    muxio::TimerHandle pause_;
};
// readme-end: callback-server

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include <doctest/doctest.h>

#include "reactor/reactor_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::reactor_test::ManualClock;
using muxio::test::FdLeakCheck;
using muxio::test::UniqueFd;

namespace {

// A non-blocking client connected to `address`. The connect itself blocks,
// which on loopback ends as soon as the kernel queues the connection.
UniqueFd connect_client(const muxio::SocketAddress& address) {
    UniqueFd fd{::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0)};
    REQUIRE(fd.get() >= 0);
    REQUIRE(::connect(fd.get(), address.data(), address.size()) == 0);
    REQUIRE(::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK) == 0);
    return fd;
}

muxio::TcpListener loopback_listener(Reactor& reactor) {
    return muxio::TcpListener::bind(reactor, muxio::SocketAddress::ipv4("127.0.0.1", 0));
}

// Runs iterations (each waiting for events at most 100 ms) until `done`
// holds; at most `limit` of them.
template <class Done>
bool run_until(Reactor& reactor, Done done, int limit = 100) {
    for (int i = 0; i < limit && !done(); ++i) {
        reactor.run_once(100ms);
    }
    return done();
}

// Appends what `fd` has to read to `into`; false once the peer closed.
bool read_available(int fd, std::string& into) {
    char chunk[16 * 1024];
    for (;;) {
        const ssize_t got = ::read(fd, chunk, sizeof chunk);
        if (got > 0) {
            into.append(chunk, static_cast<std::size_t>(got));
            continue;
        }
        if (got == 0) {
            return false;
        }
        REQUIRE((errno == EAGAIN || errno == EWOULDBLOCK));
        return true;
    }
}

// Bytes a client sends: a pattern that shows a byte lost, doubled or moved.
char pattern_byte(std::size_t index) {
    return static_cast<char>('a' + index % 23);
}

}  // namespace

TEST_CASE("the README's callback server echoes what clients send") {
    FdLeakCheck leak_check;
    Reactor reactor;
    muxio::TcpListener listener = loopback_listener(reactor);
    const muxio::SocketAddress address = listener.local_address();
    EchoServer server{reactor, std::move(listener), 10s};

    UniqueFd first = connect_client(address);
    UniqueFd second = connect_client(address);
    REQUIRE(run_until(reactor, [&] { return server.connections() == 2; }));

    muxio::test::write_all(first.get(), "hello");
    muxio::test::write_all(second.get(), "world, at length");
    std::string first_got;
    std::string second_got;
    CHECK(run_until(reactor, [&] {
        read_available(first.get(), first_got);
        read_available(second.get(), second_got);
        return first_got.size() == 5 && second_got.size() == 16;
    }));
    CHECK(first_got == "hello");
    CHECK(second_got == "world, at length");

    // A client that leaves is forgotten; the other is still served.
    first.reset();
    CHECK(run_until(reactor, [&] { return server.connections() == 1; }));
    second_got.clear();
    muxio::test::write_all(second.get(), "again");
    CHECK(run_until(reactor, [&] {
        read_available(second.get(), second_got);
        return second_got.size() == 5;
    }));
    CHECK(second_got == "again");
}

TEST_CASE("the README's callback server stops reading from a peer that does not read") {
    FdLeakCheck leak_check;
    Reactor reactor;
    muxio::TcpListener listener = loopback_listener(reactor);
    const muxio::SocketAddress address = listener.local_address();
    EchoServer server{reactor, std::move(listener), 10s};
    UniqueFd client = connect_client(address);
    REQUIRE(run_until(reactor, [&] { return server.connections() == 1; }));

    // The client writes and never reads, until neither it nor the server
    // can move a byte: the echoes fill the client's receive buffer, the
    // server stops reading, and then the client's writes fill the rest.
    std::string sent;
    std::string chunk(16 * 1024, '\0');
    bool stuck = false;
    constexpr std::size_t sanity_limit = std::size_t{256} * 1024 * 1024;  // a server that buffers without end
    while (!stuck && sent.size() < sanity_limit) {
        std::size_t written_now = 0;
        for (;;) {
            for (std::size_t i = 0; i < chunk.size(); ++i) {
                chunk[i] = pattern_byte(sent.size() + i);
            }
            const ssize_t wrote = ::write(client.get(), chunk.data(), chunk.size());
            if (wrote <= 0) {
                REQUIRE((errno == EAGAIN || errno == EWOULDBLOCK));
                break;
            }
            sent.append(chunk, 0, static_cast<std::size_t>(wrote));
            written_now += static_cast<std::size_t>(wrote);
        }
        // A short wait, so that bytes still on their way count as progress.
        const std::size_t ran = reactor.run_once(10ms);
        stuck = written_now == 0 && ran == 0;
    }
    REQUIRE(stuck);
    // Bytes wait in the server's socket, yet no callback runs: the server
    // watches only for room to write.
    CHECK(reactor.run_once(50ms) == 0);
    CHECK(server.connections() == 1);

    // Once the client reads, everything comes back, in order.
    std::string received;
    CHECK(run_until(
        reactor,
        [&] {
            read_available(client.get(), received);
            return received.size() == sent.size();
        },
        10000));
    CHECK(received.size() == sent.size());
    CHECK(received == sent);
}

TEST_CASE("the README's callback server closes a connection idle for its timeout, counted from the last byte") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    muxio::TcpListener listener = loopback_listener(reactor);
    const muxio::SocketAddress address = listener.local_address();
    constexpr auto idle = 30s;
    EchoServer server{reactor, std::move(listener), idle};
    UniqueFd client = connect_client(address);
    REQUIRE(run_until(reactor, [&] { return server.connections() == 1; }));

    // Activity just before the deadline moves it.
    clock.advance(idle - 1ms);
    reactor.run_once(0s);
    REQUIRE(server.connections() == 1);
    muxio::test::write_all(client.get(), "x");
    std::string received;
    REQUIRE(run_until(reactor, [&] {
        read_available(client.get(), received);
        return received == "x";
    }));

    clock.advance(idle - 1ms);
    reactor.run_once(0s);
    CHECK(server.connections() == 1);
    CHECK(read_available(client.get(), received));  // still open

    clock.advance(1ms);
    reactor.run_once(0s);
    CHECK(server.connections() == 0);
    CHECK_FALSE(read_available(client.get(), received));  // the server closed it
}

TEST_CASE("the README's callback server leaves nothing in the reactor when it is destroyed") {
    FdLeakCheck leak_check;
    Reactor reactor;
    {
        muxio::TcpListener listener = loopback_listener(reactor);
        const muxio::SocketAddress address = listener.local_address();
        EchoServer server{reactor, std::move(listener), 10s};
        UniqueFd client = connect_client(address);
        REQUIRE(run_until(reactor, [&] { return server.connections() == 1; }));
        CHECK(reactor.scheduled_count() == 1);  // the idle timer
    }
    CHECK(reactor.scheduled_count() == 0);
    CHECK(reactor.run_once(0s) == 0);
}
