// Unix-domain stream sockets: paths under a temporary directory, the
// abstract namespace, socket pairs, and what closing leaves behind.
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "coro/coro_support.hpp"
#include "muxio/combinators.hpp"
#include "muxio/net.hpp"
#include "muxio/run.hpp"
#include "net/completion_support.hpp"
#include "net/net_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::SocketAddress;
using muxio::Task;
using muxio::UnixListener;
using muxio::UnixStream;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::net_test::TempDir;
using muxio::net_test::writable_bytes;
using muxio::test::FdLeakCheck;

namespace {

// Connects to `listener`, sends `message` one way and its reverse back.
Task<void> exchange(Reactor& reactor, UnixListener& listener, std::string message, Live /*held*/) {
    UnixStream client = co_await UnixStream::connect(reactor, listener.local_address());
    UnixStream accepted = co_await listener.accept();
    CHECK(client.peer_address() == listener.local_address());
    co_await client.write_all(message);
    std::string got(message.size(), '\0');
    co_await accepted.read_exact(writable_bytes(got));
    CHECK(got == message);
    const std::string reply{message.rbegin(), message.rend()};
    co_await accepted.write_all(reply);
    co_await client.read_exact(writable_bytes(got));
    CHECK(got == reply);
}

}  // namespace

TEST_CASE("a Unix listener on a path accepts a stream, and removes its file when closed") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    TempDir dir;
    const std::string path = (dir.path() / "server.sock").string();
    Reactor reactor;
    {
        UnixListener listener = UnixListener::bind(reactor, SocketAddress::unix_path(path));
        CHECK(listener.local_address().path() == path);
        CHECK(std::filesystem::is_socket(path));
        muxio::run_until_complete(
            reactor, muxio::with_timeout(reactor, 30s, exchange(reactor, listener, "over a path", Live{})));
        UnixListener moved = std::move(listener);  // the file goes with the socket, not with the moved-from shell
        listener.close();
        CHECK(std::filesystem::exists(path));
    }
    CHECK_FALSE(std::filesystem::exists(path));
}

TEST_CASE("binding over a stale socket file replaces it, and over another file fails") {
    FdLeakCheck leak_check;
    TempDir dir;
    const std::string path = (dir.path() / "stale.sock").string();
    Reactor reactor;
    {
        // A previous run that did not clean up.
        UnixListener old = UnixListener::bind(reactor, SocketAddress::unix_path(path), {.unlink_on_close = false});
    }
    REQUIRE(std::filesystem::is_socket(path));
    CHECK_THROWS_AS((void)UnixListener::bind(reactor, SocketAddress::unix_path(path), {.remove_stale = false}),
                    std::system_error);
    {
        UnixListener fresh = UnixListener::bind(reactor, SocketAddress::unix_path(path));
        CHECK(std::filesystem::is_socket(path));
    }
    const std::string regular = (dir.path() / "regular").string();
    { std::ofstream{regular} << "not a socket"; }
    try {
        (void)UnixListener::bind(reactor, SocketAddress::unix_path(regular));
        FAIL("bind succeeded");
    } catch (const std::system_error& error) {
        CHECK(error.code() == std::errc::address_in_use);
        CHECK(std::string{error.what()}.starts_with(fmt::format("bind unix:{}: ", regular)));
    }
    CHECK(std::filesystem::is_regular_file(regular));
}

TEST_CASE("a listener leaves alone a file that replaced its own") {
    FdLeakCheck leak_check;
    TempDir dir;
    const std::string path = (dir.path() / "replaced.sock").string();
    Reactor reactor;
    {
        UnixListener first = UnixListener::bind(reactor, SocketAddress::unix_path(path));
        UnixListener second = UnixListener::bind(reactor, SocketAddress::unix_path(path));  // removes first's file
        first.close();
        CHECK(std::filesystem::is_socket(path));  // second's, untouched
    }
    CHECK_FALSE(std::filesystem::exists(path));
}

TEST_CASE("a Unix listener in the abstract namespace accepts a stream") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    const SocketAddress name = SocketAddress::unix_abstract(fmt::format("muxio-net-test-{}", ::getpid()));
    UnixListener listener = UnixListener::bind(reactor, name);
    CHECK(listener.local_address() == name);
    muxio::run_until_complete(reactor,
                              muxio::with_timeout(reactor, 30s, exchange(reactor, listener, "abstract", Live{})));
}

TEST_CASE("connecting to a missing path fails naming it") {
    FdLeakCheck leak_check;
    TempDir dir;
    const SocketAddress missing = SocketAddress::unix_path((dir.path() / "nobody.sock").string());
    Reactor reactor;
    try {
        (void)muxio::run_until_complete(reactor, UnixStream::connect(reactor, missing));
        FAIL("connect succeeded");
    } catch (const std::system_error& error) {
        CHECK(error.code() == std::errc::no_such_file_or_directory);
        CHECK(std::string{error.what()} == fmt::format("connect {}: No such file or directory", missing));
    }
    CHECK_THROWS_AS(
        (void)muxio::run_until_complete(reactor, UnixStream::connect(reactor, SocketAddress::ipv4("127.0.0.1", 1))),
        std::invalid_argument);
}

TEST_CASE("a socket pair is two connected streams with unnamed peers") {
    FdLeakCheck leak_check;
    Reactor reactor;
    auto [left, right] = UnixStream::pair(reactor);
    CHECK(left.peer_address().is_unix());
    CHECK(left.peer_address().to_string() == "unix:<unnamed>");
    auto body = [](UnixStream& a, UnixStream& b) -> Task<void> {
        co_await a.write_all(std::string_view{"hello"});
        a.shutdown(muxio::ShutdownHow::write);
        std::array<std::byte, 16> buffer{};
        const std::size_t got = co_await b.read_some(buffer);
        CHECK(got == 5);
        const std::size_t end = co_await b.read_some(buffer);
        CHECK(end == 0);
    };
    muxio::run_until_complete(reactor, body(left, right));
}

TEST_CASE("closing a socket removes its reactor registrations and release gives the fd up") {
    FdLeakCheck leak_check;
    Reactor reactor;
    auto [left, right] = UnixStream::pair(reactor);
    const int fd = left.fileno();
    reactor.add_reader(fd, [] {});
    reactor.add_writer(fd, [] {});
    left.close();
    CHECK_FALSE(left.is_open());
    CHECK_FALSE(reactor.has_reader(fd));
    CHECK_FALSE(reactor.has_writer(fd));
    CHECK_FALSE(muxio::test::is_open_fd(fd));
    left.close();  // twice is harmless

    const int kept = right.release();
    CHECK_FALSE(right.is_open());
    CHECK(muxio::test::is_open_fd(kept));
    UnixStream adopted = UnixStream::adopt(reactor, kept);  // and back
    CHECK(adopted.fileno() == kept);
}

TEST_CASE("a moved socket takes its lasting reader along and the old place gets no callback") {
    // The reactor's callback points into the socket: a move must re-point it,
    // or the next read waits forever (and ASan sees the old place read).
    // A detail of the readiness path: on the completion path a read registers nothing.
    const muxio::net_test::ReadinessOnly readiness_only;
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto [left, right] = UnixStream::pair(reactor);
    auto read_then_move = [](Reactor& loop, UnixStream first, int writer_fd, Live /*held*/) -> Task<std::string> {
        std::array<std::byte, 8> buffer{};
        loop.call_soon([writer_fd] { muxio::test::write_all(writer_fd, "a"); });
        CHECK(co_await first.read_some(buffer) == 1);  // waited, so the reader stays registered
        const int fd = first.fileno();
        CHECK(loop.has_reader(fd));
        std::string got;
        {
            UnixStream second = std::move(first);
            CHECK(loop.has_reader(fd));
            loop.call_soon([writer_fd] { muxio::test::write_all(writer_fd, "bc"); });
            const std::size_t count = co_await second.read_some(buffer);
            got.assign(reinterpret_cast<const char*>(buffer.data()), count);
            first = std::move(second);  // and back, by assignment
        }
        loop.call_soon([writer_fd] { muxio::test::write_all(writer_fd, "d"); });
        const std::size_t count = co_await first.read_some(buffer);
        got.append(reinterpret_cast<const char*>(buffer.data()), count);
        co_return got;
    };
    CHECK(muxio::run_until_complete(
              reactor, muxio::with_timeout(reactor, 30s,
                                           read_then_move(reactor, std::move(left), right.fileno(), Live{}))) == "bcd");
}

TEST_CASE("a readable() await pending while its socket moves resumes through the new place") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto [left, right] = UnixStream::pair(reactor);
    std::optional<UnixStream> moved;
    auto wait_readable = [](UnixStream& stream, Live /*held*/) -> Task<void> { co_await stream.readable(); };
    auto body = [&](UnixStream& stream, int writer_fd, Live /*held*/) -> Task<std::string> {
        muxio::spawn(reactor, wait_readable(stream, Live{}));
        co_await muxio::yield(reactor);  // it waits now
        moved.emplace(std::move(stream));
        stream = UnixStream{};  // the old place is reset, as a moved-from local would be destroyed
        muxio::test::write_all(writer_fd, "x");
        co_await muxio::yield(reactor);  // the waiter resumes, and frees the new place's reader slot
        std::array<std::byte, 4> buffer{};
        muxio::test::write_all(writer_fd, "y");
        const std::size_t count = co_await moved->read_some(buffer);  // would throw "already has a waiting reader"
        co_return std::string(reinterpret_cast<const char*>(buffer.data()), count);
    };
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(left, right.fileno(), Live{}))) ==
          "xy");
}

TEST_CASE("assigning over a socket with a registration removes it and closes the old descriptor") {
    FdLeakCheck leak_check;
    Reactor reactor;
    auto [left, right] = UnixStream::pair(reactor);
    auto [spare, spare_peer] = UnixStream::pair(reactor);
    auto wait_writable = [](UnixStream& stream) -> Task<void> { co_await stream.writable(); };
    muxio::run_until_complete(reactor, wait_writable(left));  // a writer that outlives the await
    const int old_fd = left.fileno();
    CHECK(reactor.has_writer(old_fd));
    left = std::move(spare);
    CHECK_FALSE(reactor.has_writer(old_fd));
    CHECK_FALSE(muxio::test::is_open_fd(old_fd));
    muxio::run_until_complete(reactor, wait_writable(left));
    CHECK(reactor.has_writer(left.fileno()));
}

TEST_CASE("writing to a closed Unix peer throws EPIPE and raises no SIGPIPE") {
    FdLeakCheck leak_check;
    const muxio::net_test::DefaultSigpipe sigpipe_kills;
    Reactor reactor;
    auto [left, right] = UnixStream::pair(reactor);
    right.close();
    try {
        muxio::run_until_complete(reactor, left.write_all(std::string_view{"into the void"}));
        FAIL("write_all succeeded");
    } catch (const std::system_error& error) {
        CHECK(error.code() == std::errc::broken_pipe);
        CHECK(std::string{error.what()}.starts_with("write to unix:<unnamed> on fd "));
    }
}
