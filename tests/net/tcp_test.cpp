// TCP over loopback: connect and accept, an echo server with many clients,
// partial reads and writes, and the ways a connection fails.
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "coro/coro_support.hpp"
#include "muxio/combinators.hpp"
#include "muxio/error.hpp"
#include "muxio/net.hpp"
#include "muxio/run.hpp"
#include "muxio/task_group.hpp"
#include "net/net_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::ShutdownHow;
using muxio::SocketAddress;
using muxio::Task;
using muxio::TcpListener;
using muxio::TcpStream;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::net_test::bytes;
using muxio::net_test::loopback;
using muxio::net_test::pattern;
using muxio::test::FdLeakCheck;
using muxio::test::UniqueFd;

namespace {

// Sends back what it reads until the peer ends the stream.
Task<void> echo_connection(TcpStream stream, Live /*held*/) {
    std::array<std::byte, 4096> buffer{};
    for (;;) {
        const std::size_t got = co_await stream.read_some(buffer);
        if (got == 0) {
            co_return;
        }
        co_await stream.write_all(std::span{buffer}.first(got));
    }
}

// Accepts `connections` clients and echoes for each in a child task.
Task<void> echo_server(TcpListener& listener, int connections, Live /*held*/) {
    muxio::TaskGroup group;
    for (int i = 0; i < connections; ++i) {
        TcpStream stream = co_await listener.accept();
        CHECK(stream.peer_address().is_loopback());
        group.spawn(echo_connection(std::move(stream), Live{}));
    }
    co_await group.join();
}

// Writes `data` in pieces of growing, uneven sizes, then ends its side.
Task<void> write_in_pieces(TcpStream& stream, std::span<const std::byte> data, Live /*held*/) {
    std::size_t piece = 1;
    while (!data.empty()) {
        const std::size_t count = std::min(piece, data.size());
        co_await stream.write_all(data.first(count));
        data = data.subspan(count);
        piece = piece * 3 % 65521 + 1;
    }
    stream.shutdown(ShutdownHow::write);
}

// Reads until the end of the stream; fails past `limit` bytes.
Task<std::vector<std::byte>> read_to_end(TcpStream& stream, std::size_t limit, Live /*held*/) {
    std::vector<std::byte> received;
    std::array<std::byte, 8192> buffer{};
    for (;;) {
        const std::size_t got = co_await stream.read_some(buffer);
        if (got == 0) {
            co_return received;
        }
        received.insert(received.end(), buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>(got));
        REQUIRE(received.size() <= limit);
    }
}

// Connects to `server`, sends a patterned payload while reading the echo,
// and checks every byte that comes back.
Task<void> echo_client(Reactor& reactor, SocketAddress server, std::uint32_t seed, Live /*held*/) {
    TcpStream stream = co_await TcpStream::connect(reactor, server);
    CHECK(stream.peer_address() == server);
    stream.set_nodelay(true);
    const std::vector<std::byte> payload = pattern(50'000 + seed * 7919, seed);
    auto [written, received] =
        co_await muxio::when_all(write_in_pieces(stream, payload, Live{}), read_to_end(stream, payload.size(), Live{}));
    CHECK(received.size() == payload.size());
    CHECK(received == payload);
}

// A connected client and its server side.
struct Connection {
    TcpStream client;
    TcpStream server;
};

Task<Connection> connect_pair(Reactor& reactor, TcpListener& listener) {
    // Loopback completes the handshake in the kernel: connect need not wait for accept.
    TcpStream client = co_await TcpStream::connect(reactor, listener.local_address());
    TcpStream server = co_await listener.accept();
    co_return Connection{std::move(client), std::move(server)};
}

void round_trip(int family) {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, loopback(family));
    CHECK(listener.local_address().family() == family);
    CHECK(listener.local_address().port() != 0);
    auto body = [](Reactor& loop, TcpListener& server, Live /*held*/) -> Task<void> {
        auto [client, accepted] = co_await connect_pair(loop, server);
        CHECK(accepted.peer_address() == client.local_address());
        CHECK(client.peer_address() == server.local_address());
        CHECK(accepted.local_address() == server.local_address());
        co_await client.write_all(std::string_view{"ping"});
        std::string got(4, '\0');
        co_await accepted.read_exact(muxio::net_test::writable_bytes(got));
        CHECK(got == "ping");
        co_await accepted.write_all(std::string_view{"pong!"});
        got.assign(5, '\0');
        co_await client.read_exact(muxio::net_test::writable_bytes(got));
        CHECK(got == "pong!");
        client.shutdown(ShutdownHow::write);
        std::array<std::byte, 8> buffer{};
        const std::size_t at_end = co_await accepted.read_some(buffer);
        CHECK(at_end == 0);  // the end of the stream
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(reactor, listener, Live{})));
    CHECK_FALSE(reactor.has_reader(listener.fileno()));
}

}  // namespace

TEST_CASE("accept and connect exchange bytes over IPv4") {
    round_trip(AF_INET);
}

TEST_CASE("accept and connect exchange bytes over IPv6") {
    if (!muxio::net_test::ipv6_loopback_available()) {
        MESSAGE("skipped: no IPv6 loopback here");
        return;
    }
    round_trip(AF_INET6);
}

TEST_CASE("a coroutine echo server serves many clients at once and every byte comes back") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, loopback(AF_INET));
    constexpr int clients = 24;
    auto body = [](Reactor& loop, TcpListener& server, int count) -> Task<void> {
        muxio::TaskGroup group;
        group.spawn(echo_server(server, count, Live{}));
        for (int i = 0; i < count; ++i) {
            group.spawn(echo_client(loop, server.local_address(), static_cast<std::uint32_t>(i), Live{}));
        }
        co_await group.join();
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 60s, body(reactor, listener, clients)));
}

TEST_CASE("read_exact assembles a message from many partial writes") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, loopback(AF_INET));
    auto body = [](Reactor& loop, TcpListener& server) -> Task<void> {
        auto [client, accepted] = co_await connect_pair(loop, server);
        client.set_nodelay(true);
        CHECK(client.nodelay());
        const std::vector<std::byte> message = pattern(5000, 42);
        auto writer = [](Reactor& l, TcpStream& stream, std::span<const std::byte> data) -> Task<void> {
            // Pieces of 1, 2, 3... bytes with an iteration of the loop between
            // them, so the reader sees the message arrive a little at a time.
            for (std::size_t piece = 1; !data.empty(); ++piece) {
                const std::size_t count = std::min(piece, data.size());
                const std::size_t sent = co_await stream.write_some(data.first(count));
                CHECK(sent == count);
                data = data.subspan(count);
                co_await muxio::yield(l);
            }
        };
        std::vector<std::byte> received(message.size());
        co_await muxio::when_all(writer(loop, client, message), accepted.read_exact(received));
        CHECK(received == message);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(reactor, listener)));
}

TEST_CASE("read_exact at the end of the stream throws IncompleteRead with what it got") {
    FdLeakCheck leak_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, loopback(AF_INET));
    auto body = [](Reactor& loop, TcpListener& server) -> Task<void> {
        auto [client, accepted] = co_await connect_pair(loop, server);
        co_await client.write_all(std::string_view{"abc"});
        client.close();
        std::string buffer(10, '\0');
        try {
            co_await accepted.read_exact(muxio::net_test::writable_bytes(buffer));
            FAIL("read_exact returned");
        } catch (const muxio::IncompleteRead& error) {
            CHECK(error.received() == 3);
            CHECK(error.expected() == 10);
            CHECK(std::string_view{error.what()}.find("after 3 of 10 bytes") != std::string_view::npos);
            CHECK(buffer.substr(0, 3) == "abc");
        }
    };
    muxio::run_until_complete(reactor, body(reactor, listener));
}

TEST_CASE("connecting to a port with no listener is refused, naming the address") {
    FdLeakCheck leak_check;
    Reactor reactor;
    // A socket bound but never listening holds the port for the whole test,
    // so the refusal is certain: nothing else can start listening there
    // meanwhile, as could happen on a port merely closed.
    UniqueFd holder{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    REQUIRE(holder.get() >= 0);
    const SocketAddress any = SocketAddress::ipv4("127.0.0.1", 0);
    REQUIRE(::bind(holder.get(), any.data(), any.size()) == 0);
    SocketAddress target;
    socklen_t size = SocketAddress::capacity();
    REQUIRE(::getsockname(holder.get(), target.data(), &size) == 0);
    target.resize(size);

    const int before = muxio::test::count_open_fds();
    try {
        (void)muxio::run_until_complete(reactor, TcpStream::connect(reactor, target));
        FAIL("connect succeeded");
    } catch (const std::system_error& error) {
        CHECK(error.code() == std::errc::connection_refused);
        CHECK(std::string{error.what()} == fmt::format("connect 127.0.0.1:{}: Connection refused", target.port()));
    }
    CHECK(muxio::test::count_open_fds() == before);  // the failed socket is closed

    // By name: every address of localhost is tried and named.
    try {
        (void)muxio::run_until_complete(reactor, TcpStream::connect(reactor, "localhost", target.port()));
        FAIL("connect succeeded");
    } catch (const std::system_error& error) {
        CHECK(error.code() == std::errc::connection_refused);
        const std::string what = error.what();
        CHECK(what.find(fmt::format("connect localhost:{} (tried ", target.port())) == 0);
        CHECK(what.find(fmt::format("127.0.0.1:{}", target.port())) != std::string::npos);
    }
}

TEST_CASE("connect by host name resolves localhost and connects") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, loopback(AF_INET));
    auto body = [](Reactor& loop, TcpListener& server, Live /*held*/) -> Task<void> {
        TcpStream client = co_await TcpStream::connect(loop, "localhost", server.local_address().port());
        TcpStream accepted = co_await server.accept();
        CHECK(client.peer_address() == server.local_address());
        co_await client.write_all(std::string_view{"x"});
        std::array<std::byte, 1> byte{};
        co_await accepted.read_exact(byte);
        CHECK(byte[0] == std::byte{'x'});
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(reactor, listener, Live{})));
}

TEST_CASE("a peer reset in the middle of a read surfaces as ECONNRESET") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, loopback(AF_INET));
    auto body = [](Reactor& loop, TcpListener& server, Live /*held*/) -> Task<void> {
        auto [client, accepted] = co_await connect_pair(loop, server);
        // Runs once the read below waits: SO_LINGER with a zero timeout makes
        // close() send a reset instead of the end of the stream.
        loop.call_soon([&client = client] {
            const linger abort{1, 0};
            REQUIRE(::setsockopt(client.fileno(), SOL_SOCKET, SO_LINGER, &abort, sizeof abort) == 0);
            client.close();
        });
        std::array<std::byte, 16> buffer{};
        try {
            (void)co_await accepted.read_some(buffer);
            FAIL("read_some returned");
        } catch (const std::system_error& error) {
            CHECK(error.code() == std::errc::connection_reset);
            const std::string what = error.what();
            CHECK(what.find(fmt::format("read from {} on fd {}", accepted.peer_address(), accepted.fileno())) == 0);
        }
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(reactor, listener, Live{})));
}

TEST_CASE("writing to a peer that closed throws EPIPE or ECONNRESET and raises no SIGPIPE") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    const muxio::net_test::DefaultSigpipe sigpipe_kills;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, loopback(AF_INET));
    auto body = [](Reactor& loop, TcpListener& server, Live /*held*/) -> Task<void> {
        auto [client, accepted] = co_await connect_pair(loop, server);
        client.close();
        const std::vector<std::byte> chunk = pattern(std::size_t{1} << 20U, 7);
        // The first writes may still fit in the socket buffer; the peer's
        // reset comes back and a later one fails. Bounded: 256 MiB at most.
        for (int round = 0; round < 256; ++round) {
            try {
                co_await accepted.write_all(chunk);
            } catch (const std::system_error& error) {
                CHECK((error.code() == std::errc::broken_pipe || error.code() == std::errc::connection_reset));
                CHECK(std::string_view{error.what()}.starts_with("write to 127.0.0.1:"));
                co_return;
            }
        }
        FAIL("every write succeeded");
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(reactor, listener, Live{})));
}

TEST_CASE("accept reports EMFILE as an error instead of spinning, and accepts once descriptors are back") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, loopback(AF_INET));
    auto body = [](Reactor& loop, TcpListener& server, Live /*held*/) -> Task<void> {
        TcpStream client = co_await TcpStream::connect(loop, server.local_address());
        // UBSan's first check of a polymorphic type probes memory through a
        // pipe, which needs descriptors: the types met under the limit
        // (fmt's buffer, std::system_error) are checked once beforehand, and
        // the results are checked once the limit is restored.
        CHECK(fmt::format("{}", server.local_address()) == server.local_address().to_string());
        std::optional<std::system_error> accept_error{muxio::make_system_error(EMFILE, "warm-up")};
        CHECK(accept_error->code() == std::errc::too_many_files_open);
        accept_error.reset();
        std::error_code try_error;
        bool accepted_anyway = false;
        {
            // Every descriptor number below the limit is taken: the next one
            // cannot be made, while a connection waits in the queue.
            const muxio::net_test::ScopedFdLimit limit{static_cast<rlim_t>(muxio::net_test::lowest_free_fd())};
            accepted_anyway = server.try_accept(try_error).has_value();
            try {
                (void)co_await server.accept();
                accepted_anyway = true;
            } catch (const std::system_error& failure) {
                accept_error = failure;
            }
        }
        CHECK_FALSE(accepted_anyway);
        CHECK(try_error == std::errc::too_many_files_open);
        REQUIRE(accept_error.has_value());
        CHECK(accept_error->code() == std::errc::too_many_files_open);
        CHECK(std::string{accept_error->what()}.starts_with(fmt::format("accept on {}", server.local_address())));
        CHECK_FALSE(loop.has_reader(server.fileno()));  // thrown at once, never waited
        TcpStream accepted = co_await server.accept();
        CHECK(accepted.peer_address() == client.local_address());
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(reactor, listener, Live{})));
}

TEST_CASE("try_accept with nothing queued returns nothing and no error") {
    FdLeakCheck leak_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, loopback(AF_INET));
    std::error_code error = std::make_error_code(std::errc::io_error);
    CHECK_FALSE(listener.try_accept(error).has_value());
    CHECK_FALSE(error);
}

TEST_CASE("try_read and try_write report would-block without throwing") {
    FdLeakCheck leak_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, loopback(AF_INET));
    auto [client, accepted] = muxio::run_until_complete(reactor, connect_pair(reactor, listener));
    std::array<std::byte, 4> buffer{};
    std::error_code error = std::make_error_code(std::errc::io_error);
    CHECK_FALSE(accepted.try_read(buffer, error).has_value());
    CHECK_FALSE(error);
    const auto sent = client.try_write(bytes("data"), error);
    REQUIRE(sent.has_value());
    CHECK(*sent == 4);
    // The bytes cross loopback within the send; wait for them all the same.
    muxio::run_until_complete(reactor, [](TcpStream& s) -> Task<void> { co_await s.readable(); }(accepted));
    CHECK(accepted.try_read(buffer, error) == std::optional<std::size_t>{4});
    CHECK_FALSE(error);
}

TEST_CASE("binding a port in use fails with a message naming the address") {
    FdLeakCheck leak_check;
    Reactor reactor;
    TcpListener first = TcpListener::bind(reactor, loopback(AF_INET));
    const SocketAddress taken = first.local_address();
    CHECK_THROWS_WITH_AS((void)TcpListener::bind(reactor, taken),
                         fmt::format("bind {}: Address already in use", taken).c_str(), std::system_error);
    // Unless both ask for SO_REUSEPORT.
    TcpListener a = TcpListener::bind(reactor, loopback(AF_INET), {.reuse_port = true});
    TcpListener b = TcpListener::bind(reactor, a.local_address(), {.reuse_port = true});
    CHECK(a.local_address() == b.local_address());
    CHECK_THROWS_AS((void)TcpListener::bind(reactor, SocketAddress::unix_path("/tmp/x")), std::invalid_argument);
}

TEST_CASE("adopt takes a connected TCP socket and refuses anything else") {
    FdLeakCheck leak_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, loopback(AF_INET));
    UniqueFd raw{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};  // blocking, as from elsewhere
    REQUIRE(::connect(raw.get(), listener.local_address().data(), listener.local_address().size()) == 0);

    muxio::test::Pipe pipe;
    CHECK_THROWS_AS((void)TcpStream::adopt(reactor, pipe.read_end.get()), std::invalid_argument);
    CHECK(muxio::test::is_open_fd(pipe.read_end.get()));  // still the caller's
    CHECK_THROWS_AS((void)muxio::UnixStream::adopt(reactor, raw.get()), std::invalid_argument);
    CHECK_THROWS_AS((void)TcpStream::adopt(reactor, -1), std::invalid_argument);

    TcpStream adopted = TcpStream::adopt(reactor, raw.release());
    CHECK((::fcntl(adopted.fileno(), F_GETFL) & O_NONBLOCK) != 0);
    CHECK(adopted.peer_address() == listener.local_address());
    auto body = [](TcpStream& stream, TcpListener& server) -> Task<void> {
        TcpStream accepted = co_await server.accept();
        co_await stream.write_all(std::string_view{"adopted"});
        std::string got(7, '\0');
        co_await accepted.read_exact(muxio::net_test::writable_bytes(got));
        CHECK(got == "adopted");
    };
    muxio::run_until_complete(reactor, body(adopted, listener));
}

TEST_CASE("operations on a closed stream throw logic_error") {
    FdLeakCheck leak_check;
    Reactor reactor;
    TcpStream closed;
    CHECK_FALSE(closed.is_open());
    CHECK(closed.fileno() == -1);
    std::array<std::byte, 1> buffer{};
    CHECK_THROWS_AS((void)muxio::run_until_complete(reactor, closed.read_some(buffer)), std::logic_error);
    CHECK_THROWS_AS(muxio::run_until_complete(reactor, closed.write_all(buffer)), std::logic_error);
    CHECK_THROWS_AS((void)closed.local_address(), std::logic_error);
    CHECK_THROWS_AS(closed.shutdown(), std::logic_error);
    CHECK(closed.release() == -1);
    closed.close();  // harmless
}
