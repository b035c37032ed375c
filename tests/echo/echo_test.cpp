// muxio-echo's two servers in-process (every byte, back-pressure, shutdown)
// and muxio-loadgen's engine: its histogram, its byte pattern, and a short
// run against each server.
#include <sys/select.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <variant>
#include <vector>

#include <doctest/doctest.h>

#include "echo_server.hpp"
#include "histogram.hpp"
#include "loadgen.hpp"
#include "muxio/combinators.hpp"
#include "muxio/log.hpp"
#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "muxio/run.hpp"
#include "muxio/task.hpp"
#include "support/captured_log.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::Task;
using muxio::apps::CallbackEchoServer;
using muxio::apps::CoroutineEchoServer;
using muxio::apps::LatencyHistogram;
using muxio::test::CapturedLog;
using muxio::test::FdLeakCheck;

namespace {

const muxio::SocketAddress loopback = muxio::SocketAddress::ipv4("127.0.0.1", 0);

// One of the two servers on `reactor`, listening on an ephemeral port.
struct AnyServer {
    std::variant<std::unique_ptr<CallbackEchoServer>, std::unique_ptr<CoroutineEchoServer>> server;
    muxio::SocketAddress address;

    AnyServer(Reactor& reactor, bool coroutine) {
        muxio::TcpListener listener = muxio::TcpListener::bind(reactor, loopback);
        address = listener.local_address();
        if (coroutine) {
            server = std::make_unique<CoroutineEchoServer>(reactor, std::move(listener));
        } else {
            server = std::make_unique<CallbackEchoServer>(reactor, std::move(listener));
        }
    }
    void shutdown() {
        std::visit([](auto& s) { s->shutdown(); }, server);
    }
    [[nodiscard]] muxio::apps::EchoStats stats() const {
        return std::visit([](const auto& s) { return s->stats(); }, server);
    }
    [[nodiscard]] std::size_t connections() const {
        return std::visit([](const auto& s) { return s->connections(); }, server);
    }
};

// Writes all of `data` before reading anything back, so the server's
// writes fill the socket buffers and it must hold back (back-pressure).
Task<std::vector<std::byte>> write_then_read(Reactor& reactor, muxio::SocketAddress address,
                                             std::vector<std::byte> data) {
    muxio::TcpStream stream = co_await muxio::TcpStream::connect(reactor, address);
    // The reading side runs alongside: written from a second task, read here.
    auto writer = [](muxio::TcpStream& s, std::span<const std::byte> bytes) -> Task<void> {
        co_await s.write_all(bytes);
        s.shutdown(muxio::ShutdownHow::write);
    };
    muxio::spawn(reactor, writer(stream, data));
    std::vector<std::byte> received;
    std::vector<std::byte> buffer(64 * 1024);
    for (;;) {
        const std::size_t n = co_await stream.read_some(buffer);
        if (n == 0) {
            break;
        }
        received.insert(received.end(), buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>(n));
    }
    co_return received;
}

}  // namespace

TEST_CASE("the echo servers send back every byte, holding back for a slow reader") {
    FdLeakCheck leak_check;
    for (const bool coroutine : {false, true}) {
        CAPTURE(coroutine);
        Reactor reactor;
        AnyServer server{reactor, coroutine};
        std::vector<std::byte> data(8 * 1024 * 1024);
        for (std::size_t i = 0; i < data.size(); ++i) {
            data[i] = muxio::apps::echo_pattern(7, i);
        }
        const std::vector<std::byte> received =
            muxio::run_until_complete(reactor, write_then_read(reactor, server.address, data));
        CHECK(received.size() == data.size());
        CHECK(received == data);
        CHECK(server.stats().accepted == 1);
        CHECK(server.stats().bytes == data.size());
        server.shutdown();
        reactor.run_once(0s);
    }
}

// Writes to `stream` until the server stops reading it: the writes make no
// progress while the loop runs on (the server is then holding back bytes it
// could not send). Returns how many bytes went out.
Task<std::size_t> fill_until_held_back(Reactor& reactor, muxio::TcpStream& stream) {
    constexpr int idle_iterations = 50;
    constexpr std::size_t limit = 256 * 1024 * 1024;
    std::vector<std::byte> chunk(64 * 1024);
    std::size_t sent = 0;
    int idle = 0;
    while (idle < idle_iterations && sent < limit) {
        for (std::size_t i = 0; i < chunk.size(); ++i) {
            chunk[i] = muxio::apps::echo_pattern(3, sent + i);
        }
        std::error_code error;
        const std::size_t n = stream.try_write(chunk, error).value_or(0);
        REQUIRE_FALSE(error);
        if (n == 0) {
            ++idle;
            co_await muxio::yield(reactor);
        } else {
            sent += n;
            idle = 0;
        }
    }
    REQUIRE(idle == idle_iterations);  // held back before the limit
    co_return sent;
}

Task<bool> read_pattern(muxio::TcpStream& stream, std::size_t count) {
    std::vector<std::byte> buffer(64 * 1024);
    std::size_t offset = 0;
    bool same = true;
    while (offset < count) {
        const std::size_t n =
            co_await stream.read_some(std::span{buffer}.first(std::min(buffer.size(), count - offset)));
        REQUIRE(n > 0);
        for (std::size_t i = 0; i < n; ++i) {
            same = same && buffer[i] == muxio::apps::echo_pattern(3, offset + i);
        }
        offset += n;
    }
    co_return same;
}

Task<void> held_back_while_others_are_served(Reactor& reactor, muxio::SocketAddress address) {
    muxio::TcpStream slow = co_await muxio::TcpStream::connect(reactor, address);
    const std::size_t held = co_await fill_until_held_back(reactor, slow);
    // Another connection's traffic goes through the same read buffer.
    std::vector<std::byte> data(2 * 1024 * 1024);
    for (std::size_t i = 0; i < data.size(); ++i) {
        data[i] = muxio::apps::echo_pattern(9, i);
    }
    CHECK(co_await write_then_read(reactor, address, data) == data);
    CHECK(co_await read_pattern(slow, held));  // every byte the server held back, intact
}

TEST_CASE("bytes held back for a slow reader survive other connections' traffic") {
    FdLeakCheck leak_check;
    for (const bool coroutine : {false, true}) {
        CAPTURE(coroutine);
        Reactor reactor;
        AnyServer server{reactor, coroutine};
        muxio::run_until_complete(
            reactor, muxio::with_timeout(reactor, 60s, held_back_while_others_are_served(reactor, server.address)));
        server.shutdown();
        reactor.run_once(0s);
    }
}

TEST_CASE("the echo servers close their connections at shutdown") {
    FdLeakCheck leak_check;
    for (const bool coroutine : {false, true}) {
        CAPTURE(coroutine);
        Reactor reactor;
        AnyServer server{reactor, coroutine};
        auto client = [](Reactor& loop, muxio::SocketAddress address, AnyServer& s) -> Task<std::size_t> {
            muxio::TcpStream stream = co_await muxio::TcpStream::connect(loop, address);
            co_await stream.write_all(std::string_view{"ping"});
            std::array<std::byte, 4> echoed{};
            co_await stream.read_exact(echoed);
            s.shutdown();  // the server closes this connection
            std::array<std::byte, 16> rest{};
            co_return co_await stream.read_some(rest);
        };
        CHECK(muxio::run_until_complete(reactor, client(reactor, server.address, server)) == 0);
    }
}

namespace {

// A non-blocking TCP client socket, connecting to `address` (on loopback
// the connection is queued at once, before the server accepts it).
muxio::test::UniqueFd connect_to(const muxio::SocketAddress& address) {
    muxio::test::UniqueFd fd{::socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)};
    REQUIRE(fd.get() >= 0);
    const int status = ::connect(fd.get(), address.data(), address.size());
    REQUIRE((status == 0 || errno == EINPROGRESS));
    return fd;
}

// Runs `reactor` until `done` holds; fails the test after `limit`.
void run_until(Reactor& reactor, const std::function<bool()>& done, std::chrono::seconds limit = 10s) {
    const muxio::test::Stopwatch stopwatch;
    while (!done()) {
        REQUIRE_MESSAGE(stopwatch.elapsed() < limit, "timed out");
        reactor.run_once(10ms);
    }
}

// True once the server has closed `fd`'s connection (end of stream or
// reset); reads and discards whatever came before.
bool closed_by_server(int fd) {
    std::array<char, 256> buffer{};
    for (;;) {
        const ssize_t got = ::recv(fd, buffer.data(), buffer.size(), 0);
        if (got == 0 || (got < 0 && errno == ECONNRESET)) {
            return true;
        }
        if (got < 0) {
            REQUIRE((errno == EAGAIN || errno == EWOULDBLOCK));
            return false;
        }
    }
}

}  // namespace

TEST_CASE("a connection the selector cannot watch is closed at once, and the echo servers go on serving") {
    FdLeakCheck leak_check;
    for (const bool coroutine : {false, true}) {
        CAPTURE(coroutine);
        // select cannot watch a descriptor from FD_SETSIZE up: the accepted
        // socket gets such a number while the low ones are all taken.
        Reactor reactor{muxio::ReactorOptions{"select", {}}};
        std::size_t escaped = 0;  // exceptions that reached the reactor
        reactor.set_exception_handler([&escaped](const std::exception_ptr&) { ++escaped; });
        CapturedLog log{spdlog::level::warn};
        AnyServer server{reactor, coroutine};
        const muxio::test::UniqueFd refused = connect_to(server.address);
        {
            const muxio::test::OccupyDescriptorsBelow occupied{FD_SETSIZE};
            const int open_before = muxio::test::count_open_fds();
            run_until(reactor, [&] { return closed_by_server(refused.get()); });
            CHECK(server.stats().accepted == 1);
            CHECK(server.stats().closed == 1);
            CHECK(server.stats().connection_errors == 1);
            CHECK(server.connections() == 0);
            CHECK(muxio::test::count_open_fds() == open_before);  // the accepted socket is closed
            CHECK_MESSAGE(log.text().find("closed it") != std::string::npos, log.text());
        }
        // A later connection, numbered low again, is served.
        muxio::test::UniqueFd client = connect_to(server.address);
        run_until(reactor, [&] { return server.connections() == 1; });
        muxio::test::write_all(client.get(), "ping");
        std::string echoed;
        run_until(reactor, [&] {
            std::array<char, 16> buffer{};
            const ssize_t got = ::recv(client.get(), buffer.data(), buffer.size(), 0);
            if (got > 0) {
                echoed.append(buffer.data(), static_cast<std::size_t>(got));
            }
            return echoed.size() >= 4;
        });
        CHECK(echoed == "ping");
        client.reset();
        run_until(reactor, [&] { return server.connections() == 0; });
        CHECK(server.stats().accepted == 2);
        CHECK(server.stats().connection_errors == 1);
        CHECK(escaped == 0);
        server.shutdown();
        reactor.run_once(0s);
    }
}

TEST_CASE("the callback echo server allocates nothing per message once warm") {
    FdLeakCheck leak_check;
    if (!muxio::test::counts_allocations) {
        return;
    }
    Reactor reactor;
    AnyServer server{reactor, false};
    const muxio::test::UniqueFd client = connect_to(server.address);
    std::array<char, 64> message{};
    message.fill('m');
    std::array<char, 64> echoed{};
    // One message there and back; false if it did not come back in time.
    // Nothing here asserts, so the count sees the server's allocations only.
    const auto round_trip = [&]() -> bool {
        if (::send(client.get(), message.data(), message.size(), MSG_NOSIGNAL) !=
            static_cast<ssize_t>(message.size())) {
            return false;
        }
        std::size_t got = 0;
        for (int iteration = 0; iteration < 1000 && got < message.size(); ++iteration) {
            reactor.run_once(10ms);
            const ssize_t n = ::recv(client.get(), echoed.data() + got, echoed.size() - got, 0);
            if (n > 0) {
                got += static_cast<std::size_t>(n);
            }
        }
        return got == message.size();
    };
    for (int i = 0; i < 10; ++i) {  // accepted, connected, warm
        REQUIRE(round_trip());
    }
    const std::size_t before = muxio::test::allocation_count();
    int echoed_back = 0;
    for (int i = 0; i < 200; ++i) {
        echoed_back += round_trip() ? 1 : 0;
    }
    const std::size_t allocations = muxio::test::allocation_count() - before;
    REQUIRE(echoed_back == 200);
    CHECK(allocations == 0);
    CHECK(echoed == message);
    CHECK(server.stats().bytes == 210 * message.size());
    server.shutdown();
    reactor.run_once(0s);
}

TEST_CASE("loadgen drives each echo server with every byte checked") {
    FdLeakCheck leak_check;
    for (const bool coroutine : {false, true}) {
        CAPTURE(coroutine);
        Reactor reactor;
        AnyServer server{reactor, coroutine};
        muxio::apps::LoadConfig config;
        config.server = server.address;
        config.connections = 8;
        config.message_size = 3000;  // not a divisor of the read size
        config.pipeline = 3;
        config.count = 30;      // a fixed amount of work: the same under TSan
        config.duration = 60s;  // an upper bound only
        const muxio::apps::LoadResult result = muxio::apps::run_load(reactor, config);
        CHECK(result.errors == 0);
        CHECK(result.mismatches == 0);
        CHECK(result.connected == 8);
        CHECK(result.messages == 8 * 30);
        CHECK(result.latency_ns.count() == result.messages);
        CHECK(result.first_error.empty());
    }
}

TEST_CASE("loadgen counts a refused connection as an error") {
    FdLeakCheck leak_check;
    Reactor reactor;
    muxio::SocketAddress closed_port;
    {
        muxio::TcpListener listener = muxio::TcpListener::bind(reactor, loopback);
        closed_port = listener.local_address();
    }
    muxio::apps::LoadConfig config;
    config.server = closed_port;
    config.connections = 2;
    config.duration = 100ms;
    const muxio::apps::LoadResult result = muxio::apps::run_load(reactor, config);
    CHECK(result.errors == 2);
    CHECK(result.connected == 0);
    CHECK(result.connect_failed == 2);
    CHECK(result.connect_pending == 0);
    CHECK(result.connect_seconds == 0);
    CHECK(result.first_error.find("refused") != std::string::npos);
}

namespace {

// A listening socket that never accepts, with the smallest backlog: once
// its accept queue holds one connection, the kernel drops further SYNs and
// those connections stay pending (the next SYN retransmission is 1 s away).
struct NeverAccepting {
    muxio::test::UniqueFd fd{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    muxio::SocketAddress address;

    NeverAccepting() {
        REQUIRE(fd.get() >= 0);
        const muxio::SocketAddress any_port = loopback;
        REQUIRE(::bind(fd.get(), any_port.data(), any_port.size()) == 0);
        REQUIRE(::listen(fd.get(), 0) == 0);
        muxio::SocketAddress bound;
        socklen_t size = muxio::SocketAddress::capacity();
        REQUIRE(::getsockname(fd.get(), bound.data(), &size) == 0);
        bound.resize(size);
        address = bound;
    }
};

}  // namespace

TEST_CASE("loadgen counts connections still pending at the end of the run as errors") {
    FdLeakCheck leak_check;
    Reactor reactor;
    const NeverAccepting server;
    muxio::apps::LoadConfig config;
    config.server = server.address;
    config.connections = 4;
    config.duration = 200ms;
    config.connect_timeout = 60s;  // longer than the run: they are still pending at its end
    const muxio::apps::LoadResult result = muxio::apps::run_load(reactor, config);
    CAPTURE(result.connected);
    CAPTURE(result.first_error);
    // How many got into the accept queue depends on the kernel (SYN cookies,
    // the order of the handshakes); at most one of four normally.
    CHECK(result.connected + result.connect_failed + result.connect_pending == 4);
    CHECK(result.connect_failed == 0);
    CHECK(result.connect_pending >= 1);
    CHECK(result.errors == result.connect_pending);  // the established ones only waited for echoes
    CHECK(result.messages == 0);
    CHECK(result.first_error.find("still connecting to " + server.address.to_string() + " when the run ended") !=
          std::string::npos);
    CHECK(result.connect_seconds <= result.seconds);
}

TEST_CASE("loadgen counts connections that time out as errors") {
    FdLeakCheck leak_check;
    Reactor reactor;
    const NeverAccepting server;
    muxio::apps::LoadConfig config;
    config.server = server.address;
    config.connections = 4;
    config.connect_timeout = 50ms;  // the run ends later: they time out first
    config.duration = 300ms;
    const muxio::apps::LoadResult result = muxio::apps::run_load(reactor, config);
    CAPTURE(result.connected);
    CAPTURE(result.first_error);
    CHECK(result.connected + result.connect_failed + result.connect_pending == 4);
    CHECK(result.connect_failed >= 1);
    CHECK(result.connect_pending == 0);
    CHECK(result.errors == result.connect_failed);
    CHECK(result.first_error.find("timed out after 0.05 s") != std::string::npos);
}

TEST_CASE("the latency histogram reports values within 1/64 and exact extremes") {
    LatencyHistogram histogram;
    CHECK(histogram.quantile(0.5) == 0);
    for (std::uint64_t v = 1; v <= 100'000; ++v) {
        histogram.record(v * 1000);
    }
    CHECK(histogram.count() == 100'000);
    CHECK(histogram.min() == 1000);
    CHECK(histogram.max() == 100'000'000);
    for (const double q : {0.5, 0.9, 0.99, 0.999}) {
        const double exact = q * 100'000'000;
        const auto reported = static_cast<double>(histogram.quantile(q));
        CHECK(reported >= exact);
        CHECK(reported <= exact * (1.0 + 1.0 / 64));
    }
    CHECK(histogram.quantile(1.0) == 100'000'000);

    // Every value maps to a bucket whose range holds it.
    for (std::uint64_t v : {0ULL, 1ULL, 63ULL, 64ULL, 65ULL, 127ULL, 128ULL, 129ULL, 1'000'000ULL, 1ULL << 40U}) {
        const std::size_t index = LatencyHistogram::index_of(v);
        CHECK(LatencyHistogram::highest_in(index) >= v);
        if (index > 0) {
            CHECK(LatencyHistogram::highest_in(index - 1) < v);
        }
    }

    LatencyHistogram other;
    other.record(5);
    other.merge(histogram);
    CHECK(other.count() == 100'001);
    CHECK(other.min() == 5);
    CHECK(other.max() == 100'000'000);
}

TEST_CASE("the echo pattern differs between connections and along a stream") {
    std::size_t same_connection_repeats = 0;
    std::size_t cross_connection_equal = 0;
    for (std::uint64_t i = 0; i < 4096; ++i) {
        same_connection_repeats += muxio::apps::echo_pattern(1, i) == muxio::apps::echo_pattern(1, i + 1) ? 1U : 0U;
        cross_connection_equal += muxio::apps::echo_pattern(1, i) == muxio::apps::echo_pattern(2, i) ? 1U : 0U;
    }
    // Random bytes agree 1 time in 256: allow a few, never most.
    CHECK(same_connection_repeats < 64);
    CHECK(cross_connection_equal < 64);
}
