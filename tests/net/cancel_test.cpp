// Cancellation of socket operations: accept, read, write and connect, by a
// token, by the ambient token, by a timeout and from another thread. Each
// must remove its registration, close what it opened, and leave the socket
// usable.
#include <sys/socket.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <stop_token>
#include <string>
#include <thread>

#include <doctest/doctest.h>

#include "coro/coro_support.hpp"
#include "muxio/combinators.hpp"
#include "muxio/error.hpp"
#include "muxio/net.hpp"
#include "muxio/run.hpp"
#include "net/net_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::Task;
using muxio::TcpListener;
using muxio::TcpStream;
using muxio::UnixStream;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::net_test::loopback;
using muxio::test::FdLeakCheck;

TEST_CASE("cancelling accept removes its reader, and the listener accepts afterwards") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, loopback(AF_INET));
    auto body = [](Reactor& loop, TcpListener& server, Live /*held*/) -> Task<void> {
        std::stop_source source;
        loop.call_soon([&source] { source.request_stop(); });  // runs once accept waits
        try {
            (void)co_await server.accept(source.get_token());
            FAIL("accept returned");
        } catch (const muxio::Cancelled&) {
        }
        CHECK_FALSE(loop.has_reader(server.fileno()));
        TcpStream client = co_await TcpStream::connect(loop, server.local_address());
        TcpStream accepted = co_await server.accept();
        CHECK(accepted.peer_address() == client.local_address());
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(reactor, listener, Live{})));
}

TEST_CASE("cancelling a read removes its reader and loses no data") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto [left, right] = UnixStream::pair(reactor);
    auto body = [](Reactor& loop, UnixStream& reader, UnixStream& writer, Live /*held*/) -> Task<void> {
        std::stop_source source;
        loop.call_soon([&source] { source.request_stop(); });
        std::array<std::byte, 8> buffer{};
        try {
            (void)co_await reader.read_some(buffer, source.get_token());
            FAIL("read_some returned");
        } catch (const muxio::Cancelled&) {
        }
        CHECK_FALSE(loop.has_reader(reader.fileno()));
        co_await writer.write_all(std::string_view{"after"});
        std::string got(5, '\0');
        co_await reader.read_exact(muxio::net_test::writable_bytes(got));
        CHECK(got == "after");
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(reactor, left, right, Live{})));
}

TEST_CASE("a read given a timeout ends in TimeoutError with its reader removed") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto [left, right] = UnixStream::pair(reactor);
    std::array<std::byte, 8> buffer{};
    CHECK_THROWS_AS(
        (void)muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 10ms, left.read_some(buffer))),
        muxio::TimeoutError);
    CHECK_FALSE(reactor.has_reader(left.fileno()));
}

TEST_CASE("a stop requested from another thread ends a pending read") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto [left, right] = UnixStream::pair(reactor);
    std::stop_source source;
    std::jthread stopper;
    reactor.call_soon([&] { stopper = std::jthread{[&source] { source.request_stop(); }}; });
    std::array<std::byte, 8> buffer{};
    CHECK_THROWS_AS((void)muxio::run_until_complete(reactor, left.read_some(buffer), source.get_token()),
                    muxio::Cancelled);
    CHECK_FALSE(reactor.has_reader(left.fileno()));
}

TEST_CASE("cancelling write_all on a full socket removes its writer") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto [left, right] = UnixStream::pair(reactor);
    muxio::test::fill_until_blocked(left.fileno());
    std::stop_source source;
    reactor.call_soon([&] { reactor.call_soon([&] { source.request_stop(); }); });
    CHECK_THROWS_AS(muxio::run_until_complete(reactor, left.write_all(std::string_view{"more"}, source.get_token())),
                    muxio::Cancelled);
    CHECK_FALSE(reactor.has_writer(left.fileno()));
}

TEST_CASE("cancelling a connect that cannot complete closes the half-open socket") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    // A loopback blackhole: a listener with backlog 0 whose accept queue
    // already holds one connection (Linux admits one more than the backlog).
    // While the queue is full the kernel drops every SYN, and the client
    // retransmits after 1 s, 3 s, 7 s...: the connect stays in progress as
    // long as nobody accepts. The stop below comes in the next iteration,
    // queued before any readiness of that iteration, so it wins in any case.
    TcpListener listener = TcpListener::bind(reactor, loopback(AF_INET), {.backlog = 0});
    auto body = [](Reactor& loop, TcpListener& server, Live /*held*/) -> Task<void> {
        TcpStream filler = co_await TcpStream::connect(loop, server.local_address());
        const int predicted = muxio::net_test::lowest_free_fd();  // the connecting socket's number
        std::stop_source source;
        loop.call_soon([&source] { source.request_stop(); });
        try {
            (void)co_await TcpStream::connect(loop, server.local_address(), source.get_token());
            FAIL("connect returned");
        } catch (const muxio::Cancelled&) {
        }
        CHECK_FALSE(loop.has_writer(predicted));
        CHECK_FALSE(muxio::test::is_open_fd(predicted));

        // The same blackhole ends a connect given a deadline.
        try {
            (void)co_await muxio::with_timeout(loop, 20ms, TcpStream::connect(loop, server.local_address()));
            FAIL("connect returned");
        } catch (const muxio::TimeoutError&) {
        }
        CHECK_FALSE(muxio::test::is_open_fd(predicted));
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(reactor, listener, Live{})));
}

TEST_CASE("a connect whose task is already cancelled opens no socket") {
    FdLeakCheck leak_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, loopback(AF_INET));
    std::stop_source source;
    source.request_stop();
    const int before = muxio::test::count_open_fds();
    CHECK_THROWS_AS((void)muxio::run_until_complete(
                        reactor, TcpStream::connect(reactor, listener.local_address(), source.get_token())),
                    muxio::Cancelled);
    CHECK_THROWS_AS((void)muxio::run_until_complete(reactor, TcpStream::connect(reactor, listener.local_address()),
                                                    source.get_token()),
                    muxio::Cancelled);
    CHECK(muxio::test::count_open_fds() == before);
    std::error_code error;
    CHECK_FALSE(listener.try_accept(error).has_value());  // nothing reached the listener
    CHECK_FALSE(error);
}
