// Server on a real Reactor and loopback TCP, client and server in one
// thread: accept pauses, back-pressure, timeouts and deadlines, limits on
// what clients may hold, shutdown.

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/logger.h>

#include "handler.hpp"
#include "http_test_support.hpp"
#include "muxio/log.hpp"
#include "muxio/reactor.hpp"
#include "muxio/selectors.hpp"
#include "server.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::http::Handler;
using muxio::http::Server;
using muxio::http::ServerConfig;
using muxio::http::test::TempDir;
using muxio::test::UniqueFd;

namespace {

constexpr std::size_t big_size = std::size_t{1} << 20U;
constexpr std::string_view index_html = "<!doctype html><title>muxio</title><p>index</p>\n";

// A clock the test moves by hand: the server's deadlines pass when the test
// says so, not after real waits.
class ManualClock {
public:
    [[nodiscard]] muxio::ReactorOptions options(std::string_view selector = {}) {
        muxio::ReactorOptions options;
        options.selector = selector;
        options.clock = [this] { return now_; };
        return options;
    }
    void advance(muxio::Reactor::Duration by) noexcept { now_ += by; }

private:
    muxio::Reactor::TimePoint now_{std::chrono::hours{1}};
};

struct Fixture {
    explicit Fixture(const ServerConfig& config = {}, std::size_t file_size = big_size,
                     muxio::ReactorOptions options = {})
        : reactor{std::move(options)} {
        dir.write("root/big.bin", std::string(file_size, 'b'));
        dir.write("root/index.html", index_html);
        server.emplace(reactor, Handler{(dir.path() / "root").string()}, config);
    }

    // A non-blocking client connected to the server (the kernel completes
    // the handshake on loopback before any accept).
    [[nodiscard]] UniqueFd connect() const {
        UniqueFd fd{::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)};
        REQUIRE(fd.get() >= 0);
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_port = htons(server->port());
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        const int status = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address);
        REQUIRE((status == 0 || errno == EINPROGRESS));
        return fd;
    }

    // Runs the reactor until `done()` or `limit` passes; returns done().
    template <class Predicate>
    bool run_until(Predicate done, std::chrono::milliseconds limit = 5s) {
        const muxio::test::Stopwatch watch;
        while (!done() && watch.elapsed() < limit) {
            reactor.run_once(10ms);
        }
        return done();
    }

    TempDir dir;
    muxio::Reactor reactor;
    std::optional<Server> server;  // destroyed before the reactor
};

// Appends what is readable to `into`; true once the peer closed.
bool read_available(int fd, std::string& into) {
    char buffer[16384];
    for (;;) {
        const ssize_t got = ::recv(fd, buffer, sizeof buffer, 0);
        if (got > 0) {
            into.append(buffer, static_cast<std::size_t>(got));
            continue;
        }
        return got == 0 || (errno != EAGAIN && errno != EINTR);
    }
}

// Sends `request` and runs the reactor until the reply holds `expected`
// (and, when `until_closed`, the server closed the connection).
std::string ask(Fixture& fixture, int fd, std::string_view request, std::string_view expected,
                bool until_closed = false) {
    muxio::test::write_all(fd, request);
    std::string reply;
    CHECK(fixture.run_until([&] {
        const bool closed = read_available(fd, reply);
        return reply.find(expected) != std::string::npos && (closed || !until_closed);
    }));
    return reply;
}

// For its lifetime the next accept4 fails with EMFILE, and the muxio logger
// is quiet: formatting a message then trips UBSan, whose vptr check needs a
// pipe to probe memory.
class QuietNoFreeDescriptors {
public:
    QuietNoFreeDescriptors() : level_{muxio::logger().level()} { muxio::logger().set_level(spdlog::level::off); }
    ~QuietNoFreeDescriptors() { muxio::logger().set_level(level_); }
    QuietNoFreeDescriptors(const QuietNoFreeDescriptors&) = delete;
    QuietNoFreeDescriptors& operator=(const QuietNoFreeDescriptors&) = delete;

private:
    spdlog::level::level_enum level_;
    muxio::test::NoFreeDescriptors no_free_descriptor_;
};

}  // namespace

TEST_CASE("a request over loopback gets its answer and keep-alive keeps the connection") {
    muxio::test::FdLeakCheck leak_check;
    Fixture fixture;
    const UniqueFd client = fixture.connect();
    REQUIRE(fixture.run_until([&] { return fixture.server->connection_count() == 1; }));
    muxio::test::write_all(client.get(), "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    std::string reply;
    CHECK(fixture.run_until([&] {
        read_available(client.get(), reply);
        return reply.find("Hello, World!", reply.find("Hello, World!") + 1) != std::string::npos;
    }));
    CHECK(reply.starts_with("HTTP/1.1 200 OK\r\n"));
    CHECK(fixture.server->connection_count() == 1);
    CHECK(fixture.server->stats().requests == 2);
}

TEST_CASE("a client that waits with its body for 100 Continue gets it, then the answer") {
    muxio::test::FdLeakCheck leak_check;
    Fixture fixture;
    const UniqueFd client = fixture.connect();
    // A request first, so the 100 must queue behind its answer.
    muxio::test::write_all(client.get(),
                           "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
                           "POST /upload HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    std::string reply;
    const std::string_view interim = "HTTP/1.1 100 Continue\r\n\r\n";
    CHECK(fixture.run_until([&] {
        read_available(client.get(), reply);
        return reply.find(interim) != std::string::npos;
    }));
    CHECK(reply.starts_with("HTTP/1.1 200 OK\r\n"));
    CHECK(reply.ends_with(interim));  // and nothing after it: the server waits for the body
    reply.clear();
    muxio::test::write_all(client.get(), "hello");
    CHECK(fixture.run_until([&] {
        read_available(client.get(), reply);
        return reply.find("\r\n\r\n") != std::string::npos;
    }));
    CHECK(reply.starts_with("HTTP/1.1 405 "));
    CHECK(fixture.server->stats().requests == 2);
}

TEST_CASE("out of descriptors, accepting pauses instead of spinning, then resumes") {
    muxio::test::FdLeakCheck leak_check;
    Fixture fixture;
    const UniqueFd client = fixture.connect();

    std::uint64_t pauses = 0;
    std::uint64_t accepted = 0;
    std::chrono::nanoseconds elapsed{};
    {
        const QuietNoFreeDescriptors tight;
        const muxio::test::Stopwatch watch;
        for (int i = 0; i < 20; ++i) {
            fixture.reactor.run_once(5ms);
        }
        elapsed = watch.elapsed();
        pauses = fixture.server->stats().accept_pauses;
        accepted = fixture.server->stats().accepted;
    }
    // One try per 100 ms back-off at most; a busy loop would have tried (and
    // paused) on each of the 20 iterations.
    CHECK(pauses >= 1);
    CHECK(pauses <= 1 + static_cast<std::uint64_t>(elapsed / 100ms));
    CHECK(accepted == 0);
    CHECK(fixture.run_until([&] { return fixture.server->stats().accepted == 1; }));
}

TEST_CASE("a client that does not read stops the server from reading its requests") {
    muxio::test::FdLeakCheck leak_check;
    Fixture fixture;
    const UniqueFd client = fixture.connect();
    std::string requests;
    for (int i = 0; i < 1000; ++i) {
        requests += "GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n";
    }
    // Without back-pressure the server would take everything the client
    // writes; with it the server stops reading and the client's writes
    // block once the kernel's buffers are full.
    std::size_t written = 0;
    bool blocked = false;
    constexpr std::size_t cap = std::size_t{256} << 20U;
    while (!blocked && written < cap) {
        const ssize_t sent = ::send(client.get(), requests.data(), requests.size(), MSG_NOSIGNAL);
        if (sent > 0) {
            written += static_cast<std::size_t>(sent);
        } else {
            REQUIRE(errno == EAGAIN);
            // Let the server catch up; blocked only if it still is after that.
            for (int i = 0; i < 5; ++i) {
                fixture.reactor.run_once(2ms);
            }
            blocked = ::send(client.get(), requests.data(), 1, MSG_NOSIGNAL) < 0 && errno == EAGAIN;
            written += blocked ? 0 : 1;
        }
        fixture.reactor.run_once(0ms);
    }
    CHECK(blocked);
    // Each answered request queues a megabyte: only a few may have been,
    // as many as the kernel's socket buffers take. Those grow by themselves,
    // up to several megabytes, so the count depends on timing (4 is typical
    // here). Without back-pressure the server would answer every request
    // the client managed to write: thousands.
    CHECK(fixture.server->stats().requests <= 12);
    MESSAGE("client blocked after " << written << " bytes, " << fixture.server->stats().requests
                                    << " requests answered");
}

TEST_CASE("an idle connection is closed by its timer, not before the timeout") {
    muxio::test::FdLeakCheck leak_check;
    ServerConfig config;
    // Far longer than the first wait, so that a loaded machine (sanitizers,
    // parallel tests) cannot stretch that wait past the timeout.
    config.idle_timeout = 600ms;
    Fixture fixture{config};
    const UniqueFd client = fixture.connect();
    REQUIRE(fixture.run_until([&] { return fixture.server->connection_count() == 1; }));
    const muxio::test::Stopwatch watch;
    std::string reply;
    // Activity before the timeout pushes the deadline back; between requests
    // the connection then closes without a word.
    CHECK_FALSE(fixture.run_until([&] { return read_available(client.get(), reply); }, 100ms));
    muxio::test::write_all(client.get(), "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(fixture.run_until([&] { return read_available(client.get(), reply); }));
    CHECK(watch.elapsed() >= 690ms);  // the request's activity + the timeout
    CHECK(reply.starts_with("HTTP/1.1 200 OK\r\n"));
    CHECK(reply.ends_with("Hello, World!"));
    CHECK(fixture.server->stats().timed_out == 1);
    CHECK(fixture.server->connection_count() == 0);
}

TEST_CASE("shutdown closes idle connections, finishes busy ones and stops the reactor") {
    muxio::test::FdLeakCheck leak_check;
    // Larger than loopback's socket buffers, so the response is still being
    // sent when shutdown() comes.
    constexpr std::size_t file_size = std::size_t{32} << 20U;
    Fixture fixture{ServerConfig{}, file_size};
    const UniqueFd idle = fixture.connect();
    const UniqueFd busy = fixture.connect();
    REQUIRE(fixture.run_until([&] { return fixture.server->connection_count() == 2; }));
    muxio::test::write_all(busy.get(), "GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(fixture.run_until([&] { return fixture.server->stats().requests == 1; }));

    fixture.server->shutdown();
    CHECK(fixture.server->connection_count() == 1);  // the idle one is gone at once

    // run() returns once the last connection is gone, which needs the busy
    // client to read its response: read it from a timer while run() runs.
    std::string busy_reply;
    std::function<void()> pump_client = [&] {
        read_available(busy.get(), busy_reply);
        fixture.reactor.call_later(1ms, [&] { pump_client(); });
    };
    fixture.reactor.call_later(1ms, [&] { pump_client(); });
    const muxio::test::Stopwatch watch;
    fixture.reactor.run();
    CHECK(watch.elapsed() < 4s);  // not the 5 s grace period
    CHECK(fixture.server->connection_count() == 0);

    std::string idle_reply;
    CHECK(read_available(idle.get(), idle_reply));
    CHECK(idle_reply.empty());
    CHECK(read_available(busy.get(), busy_reply));
    const std::size_t head_end = busy_reply.find("\r\n\r\n");
    REQUIRE(head_end != std::string::npos);
    CHECK(busy_reply.size() - head_end - 4 == file_size);  // the whole response, then the end
}

TEST_CASE("keep-alive requests on several connections allocate nothing once they are warm") {
    if (!muxio::test::counts_allocations) {
        return;  // not counted under ThreadSanitizer
    }
    muxio::test::FdLeakCheck leak_check;
    Fixture fixture;
    constexpr std::string_view request = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    const UniqueFd first = fixture.connect();
    const UniqueFd second = fixture.connect();
    REQUIRE(fixture.run_until([&] { return fixture.server->connection_count() == 2; }));
    std::string reply;
    reply.reserve(4096);  // the client side allocates nothing either
    const auto ask = [&](int fd) {
        reply.clear();
        muxio::test::write_all(fd, request);
        return fixture.run_until([&] {
            read_available(fd, reply);
            return reply.ends_with("Hello, World!");
        });
    };
    for (int round = 0; round < 2; ++round) {  // warm: buffers, date, timers
        REQUIRE(ask(first.get()));
        REQUIRE(ask(second.get()));
    }
    const std::size_t before = muxio::test::allocation_count();
    for (int round = 0; round < 10; ++round) {
        REQUIRE(ask(first.get()));
        REQUIRE(ask(second.get()));
    }
    CHECK(muxio::test::allocation_count() - before == 0);
    CHECK(fixture.server->stats().requests == 24);
}

// ----- What one client, or many, may hold ------------------------------------

TEST_CASE("a client that pipelines file requests and never reads holds one open file at most") {
    muxio::test::FdLeakCheck leak_check;
    Fixture fixture;
    const int before = muxio::test::count_open_fds();
    const UniqueFd client = fixture.connect();
    REQUIRE(fixture.run_until([&] { return fixture.server->connection_count() == 1; }));
    std::string requests;
    for (int i = 0; i < 1000; ++i) {
        requests += "GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n";
    }
    // Writes until the server stops reading, counting the process's
    // descriptors all along: the client's socket, the server's, and the
    // files the server holds open for its queued answers.
    int most = 0;
    std::size_t written = 0;
    bool blocked = false;
    constexpr std::size_t cap = std::size_t{64} << 20U;
    while (!blocked && written < cap) {
        const ssize_t sent = ::send(client.get(), requests.data(), requests.size(), MSG_NOSIGNAL);
        if (sent > 0) {
            written += static_cast<std::size_t>(sent);
        } else {
            REQUIRE(errno == EAGAIN);
            for (int i = 0; i < 5; ++i) {
                fixture.reactor.run_once(2ms);
            }
            blocked = ::send(client.get(), requests.data(), 1, MSG_NOSIGNAL) < 0 && errno == EAGAIN;
            written += blocked ? 0 : 1;
        }
        fixture.reactor.run_once(0ms);
        most = std::max(most, muxio::test::count_open_fds() - before);
    }
    CHECK(blocked);
    CHECK(most <= 3);
    CHECK(fixture.server->stats().requests > 0);
    MESSAGE("client blocked after " << written << " bytes, " << fixture.server->stats().requests
                                    << " requests answered, at most " << most << " descriptors");
}

TEST_CASE("pipelined file requests are all answered, one file at a time") {
    muxio::test::FdLeakCheck leak_check;
    Fixture fixture;
    const UniqueFd client = fixture.connect();
    constexpr int count = 200;
    std::string requests;
    for (int i = 0; i < count; ++i) {
        requests += "GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n";
    }
    requests += "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    const std::string reply = ask(fixture, client.get(), requests, "Hello, World!", true);
    std::size_t answers = 0;
    for (std::size_t at = reply.find(index_html); at != std::string::npos; at = reply.find(index_html, at + 1)) {
        ++answers;
    }
    CHECK(answers == count);
    CHECK(fixture.server->stats().requests == count + 1);
}

TEST_CASE("over --max-connections a connection is answered 503 and closed, and the others are served") {
    muxio::test::FdLeakCheck leak_check;
    ServerConfig config;
    config.max_connections = 3;
    Fixture fixture{config};
    constexpr std::string_view hello = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    std::vector<UniqueFd> clients;
    for (std::size_t i = 0; i < 3; ++i) {
        clients.push_back(fixture.connect());
        REQUIRE(fixture.run_until([&] { return fixture.server->connection_count() == i + 1; }));
    }
    const UniqueFd extra = fixture.connect();
    REQUIRE(fixture.run_until([&] { return fixture.server->stats().refused == 1; }));
    std::string refusal;
    CHECK(fixture.run_until([&] { return read_available(extra.get(), refusal); }));  // closed
    CHECK(refusal.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
    CHECK(refusal.find("Connection: close\r\n") != std::string::npos);
    CHECK(fixture.server->connection_count() == 3);
    CHECK(fixture.server->stats().accepted == 4);
    for (const UniqueFd& client : clients) {
        CHECK(ask(fixture, client.get(), hello, "Hello, World!").starts_with("HTTP/1.1 200 OK\r\n"));
    }
    // Once one closes, a new one is served.
    clients.front().reset();
    REQUIRE(fixture.run_until([&] { return fixture.server->connection_count() == 2; }));
    const UniqueFd later = fixture.connect();
    CHECK(ask(fixture, later.get(), hello, "Hello, World!").starts_with("HTTP/1.1 200 OK\r\n"));
    CHECK(fixture.server->connection_count() == 3);
    CHECK(fixture.server->stats().refused == 1);
}

TEST_CASE("a connection the selector refuses is closed at once and the listener goes on (select)") {
    muxio::test::FdLeakCheck leak_check;
    if (muxio::test::raise_fd_limit(FD_SETSIZE + 256) < FD_SETSIZE + 64) {
        MESSAGE("skipped: RLIMIT_NOFILE too low to get a descriptor past FD_SETSIZE");
        return;
    }
    Fixture fixture{ServerConfig{}, big_size, muxio::ReactorOptions{"select", {}}};
    // Every number below FD_SETSIZE taken, so the next accepted connection
    // gets one select() cannot watch.
    const muxio::test::Pipe pipe;
    std::vector<UniqueFd> low;
    for (;;) {
        UniqueFd copy{::fcntl(pipe.read_end.get(), F_DUPFD_CLOEXEC, 0)};
        REQUIRE(copy.get() >= 0);
        if (copy.get() >= FD_SETSIZE) {
            break;
        }
        low.push_back(std::move(copy));
    }
    const UniqueFd refused = fixture.connect();
    REQUIRE(refused.get() >= FD_SETSIZE);
    REQUIRE(fixture.run_until([&] { return fixture.server->stats().register_failures == 1; }));
    CHECK(fixture.server->stats().accepted == 1);
    CHECK(fixture.server->connection_count() == 0);
    CHECK(fixture.reactor.scheduled_count() == 0);  // no timer left behind
    for (int fd = FD_SETSIZE; fd < FD_SETSIZE + 64; ++fd) {
        CHECK_FALSE(fixture.reactor.has_reader(fd));
        CHECK_FALSE(fixture.reactor.has_writer(fd));
    }
    std::string nothing;
    CHECK(fixture.run_until([&] { return read_available(refused.get(), nothing); }));  // closed
    CHECK(nothing.empty());

    low.clear();
    const UniqueFd served = fixture.connect();
    REQUIRE(served.get() < FD_SETSIZE);
    CHECK(ask(fixture, served.get(), "GET / HTTP/1.1\r\nHost: a\r\n\r\n", "Hello, World!")
              .starts_with("HTTP/1.1 200 OK\r\n"));
    CHECK(fixture.server->connection_count() == 1);
}

// ----- Deadlines for a head and a body ---------------------------------------

namespace {

// Head and body deadlines of 10 s and an idle timeout of 3 s, on a clock
// the test moves: a client sending a byte a second is never idle.
ServerConfig deadline_config() {
    ServerConfig config;
    config.idle_timeout = 3s;
    config.header_timeout = 10s;
    config.body_timeout = 10s;
    config.linger_timeout = 1s;
    return config;
}

// Sends `bytes` one a second from now on (the first at once) until the
// server answers or closes; returns the seconds passed from the first byte
// to the answer, checking that the connection's single timer is all the
// reactor has scheduled all along.
int trickle(Fixture& fixture, ManualClock& clock, int fd, std::string_view bytes, std::string& reply) {
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        muxio::test::write_all(fd, bytes.substr(i, 1));
        const std::uint64_t read_before = fixture.server->stats().bytes_read;
        REQUIRE(fixture.run_until([&] { return fixture.server->stats().bytes_read > read_before; }));
        CHECK(fixture.reactor.scheduled_count() == 1);
        clock.advance(1s);
        const std::uint64_t timeouts_before = fixture.server->stats().timed_out;
        fixture.reactor.run_once(0ms);
        if (fixture.server->stats().timed_out > timeouts_before) {
            CHECK(fixture.run_until([&] { return read_available(fd, reply) || !reply.empty(); }));
            return static_cast<int>(i) + 1;
        }
        CHECK_FALSE(read_available(fd, reply));
        CHECK(reply.empty());
    }
    return -1;
}

}  // namespace

TEST_CASE("a head trickled a byte at a time is answered 408 at the head deadline, on every selector") {
    for (const std::string_view selector : muxio::available_selectors()) {
        CAPTURE(selector);
        muxio::test::FdLeakCheck leak_check;
        ManualClock clock;
        Fixture fixture{deadline_config(), 16, clock.options(selector)};
        const UniqueFd client = fixture.connect();
        REQUIRE(fixture.run_until([&] { return fixture.server->connection_count() == 1; }));
        std::string reply;
        const std::string head = "GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: slow" + std::string(40, '.') + "\r\n\r\n";
        CHECK(trickle(fixture, clock, client.get(), head, reply) == 10);
        CHECK(reply.starts_with("HTTP/1.1 408 Request Timeout\r\n"));
        CHECK(reply.find("Connection: close\r\n") != std::string::npos);
        CHECK(fixture.run_until([&] { return read_available(client.get(), reply); }));  // then the end
        CHECK(fixture.server->stats().head_timeouts == 1);
        CHECK(fixture.server->stats().requests == 0);
        // The rest of the connection is its linger, bounded by its own timer.
        clock.advance(1s);
        CHECK(fixture.run_until([&] { return fixture.server->connection_count() == 0; }));
    }
}

TEST_CASE("a body trickled a byte at a time is answered 408 at the body deadline, on every selector") {
    for (const std::string_view selector : muxio::available_selectors()) {
        CAPTURE(selector);
        muxio::test::FdLeakCheck leak_check;
        ManualClock clock;
        Fixture fixture{deadline_config(), 16, clock.options(selector)};
        const UniqueFd client = fixture.connect();
        REQUIRE(fixture.run_until([&] { return fixture.server->connection_count() == 1; }));
        // A head that arrives whole, and a slow start on the body in the
        // same read: the body's deadline runs from the end of the head.
        muxio::test::write_all(client.get(), "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nab");
        REQUIRE(fixture.run_until([&] { return fixture.server->stats().bytes_read > 0; }));
        std::string reply;
        CHECK(trickle(fixture, clock, client.get(), std::string(98, 'b'), reply) == 10);
        CHECK(reply.starts_with("HTTP/1.1 408 Request Timeout\r\n"));
        CHECK(fixture.server->stats().body_timeouts == 1);
        CHECK(fixture.run_until([&] { return read_available(client.get(), reply); }));
    }
}

TEST_CASE("a request that arrives within its deadlines is served, and the next one gets deadlines of its own") {
    muxio::test::FdLeakCheck leak_check;
    ManualClock clock;
    Fixture fixture{deadline_config(), 16, clock.options()};
    const UniqueFd client = fixture.connect();
    REQUIRE(fixture.run_until([&] { return fixture.server->connection_count() == 1; }));
    // Three heads of 8 s each, back to back: 24 s on one connection, each
    // head within its own 10 s deadline, never 3 s without a byte.
    const std::string head = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for (int round = 0; round < 3; ++round) {
        std::string reply;
        for (std::size_t second = 0; second < 8; ++second) {
            muxio::test::write_all(client.get(), head.substr(second, 1));
            const std::uint64_t read_before = fixture.server->stats().bytes_read;
            REQUIRE(fixture.run_until([&] { return fixture.server->stats().bytes_read > read_before; }));
            clock.advance(1s);
            fixture.reactor.run_once(0ms);
            CHECK_FALSE(read_available(client.get(), reply));
            CHECK(reply.empty());
        }
        reply = ask(fixture, client.get(), head.substr(8), "Hello, World!");
        CHECK(reply.starts_with("HTTP/1.1 200 OK\r\n"));
    }
    CHECK(fixture.server->stats().requests == 3);
    CHECK(fixture.server->stats().timed_out == 0);
}

TEST_CASE("500 connections trickling their heads are all answered 408 at the head deadline") {
    muxio::test::FdLeakCheck leak_check;
    constexpr std::size_t count = 500;
    if (muxio::test::raise_fd_limit(2 * count + 256) < static_cast<long>(2 * count + 64)) {
        MESSAGE("skipped: RLIMIT_NOFILE too low for " << count << " connections");
        return;
    }
    ManualClock clock;
    ServerConfig config = deadline_config();
    config.idle_timeout = 60s;
    Fixture fixture{config, 16, clock.options()};
    std::vector<UniqueFd> clients;
    for (std::size_t i = 0; i < count; ++i) {
        clients.push_back(fixture.connect());
        if (clients.size() % 50 == 0) {  // within any listen backlog
            REQUIRE(fixture.run_until([&] { return fixture.server->connection_count() == clients.size(); }));
        }
    }
    constexpr std::string_view start = "GET / HTTP/1.1\r\nX-Slow: ";
    std::uint64_t sent = 0;
    const auto send_everywhere = [&](std::string_view bytes) {
        for (const UniqueFd& client : clients) {
            muxio::test::write_all(client.get(), bytes);
        }
        sent += count * bytes.size();
        REQUIRE(fixture.run_until([&] { return fixture.server->stats().bytes_read == sent; }));
    };
    send_everywhere(start);
    CHECK(fixture.reactor.scheduled_count() == count);  // a timer per connection, no more
    // A byte a second from each: nothing closes before the deadline.
    for (int second = 1; second < 10; ++second) {
        clock.advance(1s);
        send_everywhere("a");
        CHECK(fixture.server->stats().timed_out == 0);
    }
    clock.advance(999ms);
    fixture.reactor.run_once(0ms);
    CHECK(fixture.server->stats().timed_out == 0);
    CHECK(fixture.reactor.scheduled_count() == count);
    clock.advance(1ms);
    REQUIRE(fixture.run_until([&] { return fixture.server->stats().head_timeouts == count; }));
    std::size_t answered = 0;
    for (const UniqueFd& client : clients) {
        std::string reply;
        CHECK(fixture.run_until([&] { return read_available(client.get(), reply); }));
        answered += reply.starts_with("HTTP/1.1 408 ") ? 1U : 0U;
    }
    CHECK(answered == count);
    clock.advance(1s);  // the linger after each answer
    CHECK(fixture.run_until([&] { return fixture.server->connection_count() == 0; }));
    CHECK(fixture.reactor.scheduled_count() == 0);
}
