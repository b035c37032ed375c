// The error_code forms of connect, bind and accept (asio's convention): the
// kernel's refusals come back in the error_code, not as exceptions, and
// leave nothing open; mistakes still throw.
#include <sys/resource.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "coro/coro_support.hpp"
#include "muxio/combinators.hpp"
#include "muxio/error.hpp"
#include "muxio/net.hpp"
#include "muxio/run.hpp"
#include "net/net_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::SocketAddress;
using muxio::Task;
using muxio::TcpListener;
using muxio::TcpStream;
using muxio::UnixListener;
using muxio::UnixStream;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::net_test::loopback;
using muxio::test::FdLeakCheck;

namespace {

// A loopback address nobody listens on: a listener's, closed.
SocketAddress refusing_address(Reactor& reactor) {
    TcpListener listener = TcpListener::bind(reactor, loopback(AF_INET));
    return listener.local_address();
}

}  // namespace

TEST_CASE("connect with an error_code reports a refused connection there and leaves nothing open") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    const SocketAddress address = refusing_address(reactor);
    auto body = [](Reactor& loop, SocketAddress to, Live /*held*/) -> Task<void> {
        std::error_code error;
        TcpStream stream = co_await TcpStream::connect(loop, to, error);
        CHECK(error == std::errc::connection_refused);
        CHECK_FALSE(stream.is_open());
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(reactor, address, Live{})));
}

TEST_CASE("connect with an error_code clears it on success") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, loopback(AF_INET));
    auto body = [](Reactor& loop, TcpListener& server, Live /*held*/) -> Task<void> {
        std::error_code error = std::make_error_code(std::errc::io_error);
        TcpStream client = co_await TcpStream::connect(loop, server.local_address(), error);
        CHECK_FALSE(error);
        REQUIRE(client.is_open());
        std::error_code accept_error = std::make_error_code(std::errc::io_error);
        TcpStream accepted = co_await server.accept(accept_error);
        CHECK_FALSE(accept_error);
        CHECK(accepted.peer_address() == client.local_address());
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(reactor, listener, Live{})));
}

TEST_CASE("connect with an error_code still throws for an address of the wrong family") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    std::error_code error;
    CHECK_THROWS_AS((void)muxio::run_until_complete(
                        reactor, TcpStream::connect(reactor, SocketAddress::unix_path("/nonexistent"), error)),
                    std::invalid_argument);
    CHECK_THROWS_AS((void)muxio::run_until_complete(
                        reactor, UnixStream::connect(reactor, SocketAddress::ipv4("127.0.0.1", 1), error)),
                    std::invalid_argument);
}

TEST_CASE("a Unix connect with an error_code reports a missing path there") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    muxio::net_test::TempDir dir;
    const SocketAddress address = SocketAddress::unix_path((dir.path() / "nobody").string());
    std::error_code error;
    UnixStream stream = muxio::run_until_complete(reactor, UnixStream::connect(reactor, address, error));
    CHECK(error == std::errc::no_such_file_or_directory);
    CHECK_FALSE(stream.is_open());
}

TEST_CASE("bind with an error_code reports an address in use there and leaves nothing open") {
    FdLeakCheck leak_check;
    Reactor reactor;
    TcpListener first = TcpListener::bind(reactor, loopback(AF_INET));
    std::error_code error;
    std::optional<TcpListener> second = TcpListener::bind(reactor, first.local_address(), error);
    CHECK_FALSE(second.has_value());
    CHECK(error == std::errc::address_in_use);
    // The throwing form names the address, as before.
    CHECK_THROWS_WITH_AS((void)TcpListener::bind(reactor, first.local_address()),
                         fmt::format("bind {}: Address already in use", first.local_address()).c_str(),
                         std::system_error);
    std::optional<TcpListener> fresh = TcpListener::bind(reactor, loopback(AF_INET), error);
    REQUIRE(fresh.has_value());
    CHECK_FALSE(error);
    CHECK(fresh->local_address().port() != 0);
    CHECK_THROWS_AS((void)TcpListener::bind(reactor, SocketAddress::unix_path("/x"), error), std::invalid_argument);
}

TEST_CASE("a Unix bind with an error_code reports a path taken by a file there and leaves the file") {
    FdLeakCheck leak_check;
    Reactor reactor;
    muxio::net_test::TempDir dir;
    const std::string regular = (dir.path() / "regular").string();
    { std::ofstream{regular} << "not a socket"; }
    std::error_code error;
    CHECK_FALSE(UnixListener::bind(reactor, SocketAddress::unix_path(regular), error).has_value());
    CHECK(error == std::errc::address_in_use);
    CHECK(std::filesystem::is_regular_file(regular));
    const std::string path = (dir.path() / "listener").string();
    std::optional<UnixListener> listener = UnixListener::bind(reactor, SocketAddress::unix_path(path), error);
    REQUIRE(listener.has_value());
    CHECK_FALSE(error);
    CHECK(std::filesystem::is_socket(path));
}

TEST_CASE("accept with an error_code reports EMFILE at once, without waiting, and accepts once descriptors are back") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, loopback(AF_INET));
    auto body = [](Reactor& loop, TcpListener& server, Live /*held*/) -> Task<void> {
        TcpStream client = co_await TcpStream::connect(loop, server.local_address());
        // As in tcp_test.cpp: UBSan's first check of a polymorphic type
        // needs descriptors, so the types met under the limit are met once
        // beforehand.
        std::error_code warm_up = std::make_error_code(std::errc::too_many_files_open);
        CHECK(warm_up.message().empty() == false);
        std::error_code error;
        bool open_under_limit = true;
        {
            const muxio::net_test::ScopedFdLimit limit{static_cast<rlim_t>(muxio::net_test::lowest_free_fd())};
            TcpStream refused = co_await server.accept(error);
            open_under_limit = refused.is_open();
        }
        CHECK_FALSE(open_under_limit);
        CHECK(error == std::errc::too_many_files_open);
        CHECK_FALSE(loop.has_reader(server.fileno()));       // returned at once, never waited
        TcpStream accepted = co_await server.accept(error);  // the connection stayed queued
        CHECK_FALSE(error);
        CHECK(accepted.peer_address() == client.local_address());
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(reactor, listener, Live{})));
}

TEST_CASE("a Unix accept with an error_code waits for a connection and clears the error") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    UnixListener listener =
        UnixListener::bind(reactor, SocketAddress::unix_abstract(fmt::format("muxio-error-code-{}", ::getpid())));
    auto body = [](Reactor& loop, UnixListener& server, Live /*held*/) -> Task<void> {
        auto connect_later = [](Reactor& l, SocketAddress to) -> Task<UnixStream> {
            co_await muxio::yield(l);  // after accept() waits
            co_return co_await UnixStream::connect(l, to);
        };
        std::error_code error = std::make_error_code(std::errc::io_error);
        auto [accepted, client] =
            co_await muxio::when_all(server.accept(error), connect_later(loop, server.local_address()));
        CHECK_FALSE(error);
        CHECK(accepted.is_open());
        CHECK(client.is_open());
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(reactor, listener, Live{})));
}
