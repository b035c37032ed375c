// Cancellation of socket operations: accept, read, write and connect, by a
// token, by the ambient token, by a timeout and from another thread. Each
// must remove its registration, close what it opened, and leave the socket
// usable.
#include <sys/socket.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <stop_token>
#include <string>
#include <thread>

#include <doctest/doctest.h>

#include "coro/coro_support.hpp"
#include "muxio/combinators.hpp"
#include "muxio/error.hpp"
#include "muxio/net.hpp"
#include "muxio/run.hpp"
#include "net/completion_support.hpp"
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

TEST_CASE("cancelling accept frees the listener to accept afterwards") {
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
        TcpStream client = co_await TcpStream::connect(loop, server.local_address());
        TcpStream accepted = co_await server.accept();
        CHECK(accepted.peer_address() == client.local_address());
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(reactor, listener, Live{})));
}

TEST_CASE("cancelling a read loses no data and frees the socket for the next read") {
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
        co_await writer.write_all(std::string_view{"after"});
        std::string got(5, '\0');
        co_await reader.read_exact(muxio::net_test::writable_bytes(got));
        CHECK(got == "after");
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(reactor, left, right, Live{})));
}

TEST_CASE("a read given a timeout ends in TimeoutError and closing removes the reader") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto [left, right] = UnixStream::pair(reactor);
    std::array<std::byte, 8> buffer{};
    CHECK_THROWS_AS(
        (void)muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 10ms, left.read_some(buffer))),
        muxio::TimeoutError);
    const int fd = left.fileno();
    left.close();
    CHECK_FALSE(reactor.has_reader(fd));
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
    const int fd = left.fileno();
    left.close();
    CHECK_FALSE(reactor.has_reader(fd));
}

TEST_CASE("cancelling write_all on a full socket, then closing it, removes its writer") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto [left, right] = UnixStream::pair(reactor);
    muxio::test::fill_until_blocked(left.fileno());
    std::stop_source source;
    reactor.call_soon([&] { reactor.call_soon([&] { source.request_stop(); }); });
    CHECK_THROWS_AS(muxio::run_until_complete(reactor, left.write_all(std::string_view{"more"}, source.get_token())),
                    muxio::Cancelled);
    const int fd = left.fileno();
    left.close();
    CHECK_FALSE(reactor.has_writer(fd));
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

TEST_CASE("a socket keeps its reader from one read to the next and drops it when nobody waits") {
    // The registration outlives each await, so a read loop makes no
    // epoll_ctl per read; when the fd turns readable with no task waiting,
    // the reader is dropped, so the loop does not call back every iteration.
    // A detail of the readiness path: on the completion path a read registers nothing.
    const muxio::net_test::ReadinessOnly readiness_only;
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto [left, right] = UnixStream::pair(reactor);
    auto reads = [](Reactor& loop, UnixStream& reader, int writer_fd, Live /*held*/) -> Task<void> {
        std::array<std::byte, 1> byte{};
        for (int i = 0; i < 3; ++i) {
            // Written once the read below waits, so each read waits.
            loop.call_soon([writer_fd] { muxio::test::write_all(writer_fd, "x"); });
            CHECK(co_await reader.read_some(byte) == 1);
            CHECK(loop.has_reader(reader.fileno()));
        }
    };
    muxio::run_until_complete(reactor, reads(reactor, left, right.fileno(), Live{}));
    CHECK(reactor.has_reader(left.fileno()));
    muxio::test::write_all(right.fileno(), "y");
    CHECK(reactor.run_once(1s) == 1);  // readable, nobody waits: dropped
    CHECK_FALSE(reactor.has_reader(left.fileno()));
    CHECK(reactor.run_once(0s) == 0);  // and not called again
    // The next read registers again and gets the byte that waited.
    auto read_one = [](UnixStream& reader) -> Task<std::size_t> {
        std::array<std::byte, 4> buffer{};
        co_await reader.readable();
        co_return co_await reader.read_some(buffer);
    };
    CHECK(muxio::run_until_complete(reactor, read_one(left)) == 1);
}

TEST_CASE("closing a socket ends the read pending on it with Cancelled") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto [left, right] = UnixStream::pair(reactor);
    auto body = [](Reactor& loop, UnixStream& reader, Live /*held*/) -> Task<void> {
        loop.call_soon([&reader] { reader.close(); });  // runs once the read waits
        std::array<std::byte, 8> buffer{};
        CHECK_THROWS_AS((void)co_await reader.read_some(buffer), muxio::Cancelled);
    };
    const int fd = left.fileno();
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(reactor, left, Live{})));
    CHECK_FALSE(reactor.has_reader(fd));
}

TEST_CASE("a raw reader on a socket's descriptor and the socket's own waits exclude each other") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto [left, right] = UnixStream::pair(reactor);
    reactor.add_reader(left.fileno(), [] {});
    auto wait = [](UnixStream& reader) -> Task<void> { co_await reader.readable(); };
    CHECK_THROWS_AS(muxio::run_until_complete(reactor, wait(left)), std::logic_error);
    CHECK(reactor.remove_reader(left.fileno()));
}

TEST_CASE("a read after one that emptied the socket still gets data that is already there") {
    // After a short read, read_some() waits for readiness before reading;
    // data that arrived in between must end that wait at once.
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto [left, right] = UnixStream::pair(reactor);
    auto body = [](UnixStream& reader, int writer_fd, Live /*held*/) -> Task<std::string> {
        std::array<std::byte, 16> buffer{};
        muxio::test::write_all(writer_fd, "a");
        CHECK(co_await reader.read_some(buffer) == 1);  // short: the socket is empty now
        muxio::test::write_all(writer_fd, "bcd");       // before the next read starts
        const std::size_t got = co_await reader.read_some(buffer);
        std::string text(got, '\0');
        std::memcpy(text.data(), buffer.data(), got);
        muxio::test::write_all(writer_fd, "efgh");
        std::string exact(4, '\0');
        co_await reader.read_exact(muxio::net_test::writable_bytes(exact));
        co_return text + exact;
    };
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(left, right.fileno(), Live{}))) ==
          "bcdefgh");
}

TEST_CASE("two tasks reading one socket is a clear error, one reading and one writing is fine") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto [left, right] = UnixStream::pair(reactor);
    auto body = [](Reactor& loop, UnixStream& stream, int peer_fd, Live /*held*/) -> Task<std::string> {
        auto first_reader = [](UnixStream& s) -> Task<void> { co_await s.readable(); };
        muxio::spawn(loop, first_reader(stream));
        co_await muxio::yield(loop);  // the first reader waits now
        std::string error;
        try {
            co_await stream.readable();
        } catch (const std::logic_error& e) {
            error = e.what();
        }
        co_await stream.writable();            // a writer beside the waiting reader
        muxio::test::write_all(peer_fd, "z");  // lets the first reader finish
        co_return error;
    };
    const std::string error = muxio::run_until_complete(reactor, body(reactor, left, right.fileno(), Live{}));
    CHECK(error.find("already has a waiting reader") != std::string::npos);
    reactor.close();  // frees the first reader's frame if it has not run yet
}
