// The network glue in-process: a Server on a real reactor and loopback TCP
// clients driven from the same thread.

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/spdlog.h>

#include <fmt/format.h>

#include "commands.hpp"
#include "muxio/reactor.hpp"
#include "resp_test_support.hpp"
#include "server.hpp"
#include "store.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::test::UniqueFd;
using resp::test::encode;

namespace {

// A non-blocking loopback client that sends what it is given and keeps
// what arrives, a little at each step.
class Client {
public:
    explicit Client(std::uint16_t port) : fd_{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)} {
        REQUIRE(fd_.get() >= 0);
        connect_to(port);
    }
    // A socket made now and connected later, when descriptors may be short.
    struct Deferred {};
    explicit Client(Deferred) : fd_{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)} { REQUIRE(fd_.get() >= 0); }

    void connect_to(std::uint16_t port) {
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_port = htons(port);
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        // Blocking: the kernel completes the handshake from the listen
        // backlog, before the server accepts.
        REQUIRE(::connect(fd_.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0);
        REQUIRE(::fcntl(fd_.get(), F_SETFL, ::fcntl(fd_.get(), F_GETFL) | O_NONBLOCK) == 0);
    }

    void send(std::string_view bytes) { outbox_ += bytes; }
    void shut_write() { REQUIRE(::shutdown(fd_.get(), SHUT_WR) == 0); }
    void set_reading(bool reading) { reading_ = reading; }

    void step() {
        while (sent_ < outbox_.size()) {
            const ssize_t n = ::send(fd_.get(), outbox_.data() + sent_, outbox_.size() - sent_, MSG_NOSIGNAL);
            if (n <= 0) {
                break;
            }
            sent_ += static_cast<std::size_t>(n);
        }
        while (reading_ && !eof_) {
            char buffer[65536];
            const ssize_t n = ::recv(fd_.get(), buffer, sizeof buffer, 0);
            if (n > 0) {
                received_.append(buffer, static_cast<std::size_t>(n));
            } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                eof_ = true;
            } else {
                break;
            }
        }
    }

    [[nodiscard]] const std::string& received() const { return received_; }
    [[nodiscard]] bool eof() const { return eof_; }
    [[nodiscard]] bool all_sent() const { return sent_ == outbox_.size(); }

private:
    UniqueFd fd_;
    std::string outbox_;
    std::size_t sent_ = 0;
    std::string received_;
    bool reading_ = true;
    bool eof_ = false;
};

struct ServerFixture {
    explicit ServerFixture(resp::ServerOptions options = make_options(), std::string_view selector = {})
        : reactor{muxio::ReactorOptions{selector, {}}}, server{reactor, dispatcher, options} {
        port = server.start();
    }
    static resp::ServerOptions make_options() {
        resp::ServerOptions options;
        options.port = 0;
        return options;
    }

    // Runs the reactor and steps the clients until `done` or 10 s pass.
    template <class Done>
    bool run_until(std::vector<Client*> clients, Done done) {
        const auto deadline = std::chrono::steady_clock::now() + 10s;
        while (std::chrono::steady_clock::now() < deadline) {
            for (Client* client : clients) {
                client->step();
            }
            if (done()) {
                return true;
            }
            reactor.run_once(2ms);
        }
        return false;
    }

    muxio::Reactor reactor;
    resp::Store store{[this] { return reactor.time(); }};
    resp::ExpiryTimer expiry{reactor, store};
    resp::Dispatcher dispatcher{store};
    resp::Server server;
    std::uint16_t port = 0;
};

}  // namespace

TEST_CASE("pipelined requests in one write get every reply, in order") {
    muxio::test::FdLeakCheck leak_check;
    ServerFixture fixture;
    Client client{fixture.port};
    std::string request;
    std::string expected;
    for (int i = 0; i < 200; ++i) {
        request += encode({"INCR", "n"});
        expected += fmt::format(":{}\r\n", i + 1);
    }
    request += "GET n\r\nECHO \"a b\"\r\n";
    expected += "$3\r\n200\r\n$3\r\na b\r\n";
    client.send(request);
    CHECK(fixture.run_until({&client}, [&] { return client.received().size() >= expected.size(); }));
    CHECK(client.received() == expected);
    CHECK(fixture.server.connection_count() == 1);
}

TEST_CASE("a malformed request is answered with a protocol error, then the connection closes") {
    muxio::test::FdLeakCheck leak_check;
    ServerFixture fixture;
    Client bad{fixture.port};
    bad.send(encode({"PING"}) + "*1\r\n$x\r\n" + encode({"PING"}));
    CHECK(fixture.run_until({&bad}, [&] { return bad.eof(); }));
    CHECK(bad.received() == "+PONG\r\n-ERR Protocol error: invalid bulk length\r\n");
    CHECK(fixture.run_until({}, [&] { return fixture.server.connection_count() == 0; }));
    CHECK(fixture.server.stats().protocol_errors == 1);

    Client good{fixture.port};
    good.send("PING\r\n");
    CHECK(fixture.run_until({&good}, [&] { return good.received() == "+PONG\r\n"; }));
}

TEST_CASE("a bulk string over --max-bulk is refused as Redis refuses it") {
    muxio::test::FdLeakCheck leak_check;
    resp::ServerOptions options = ServerFixture::make_options();
    options.limits.max_bulk = 16;
    ServerFixture fixture{options};
    Client client{fixture.port};
    client.send(encode({"SET", "k", "0123456789abcdef"}) + "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$17\r\n");
    CHECK(fixture.run_until({&client}, [&] { return client.eof(); }));
    CHECK(client.received() == "+OK\r\n-ERR Protocol error: invalid bulk length\r\n");
}

TEST_CASE("QUIT closes after its reply, and requests after it are not run") {
    muxio::test::FdLeakCheck leak_check;
    ServerFixture fixture;
    Client client{fixture.port};
    client.send("QUIT\r\nSET after quit\r\n");
    CHECK(fixture.run_until({&client}, [&] { return client.eof(); }));
    CHECK(client.received() == "+OK\r\n");
    CHECK(fixture.store.find("after") == nullptr);
}

TEST_CASE("a client that shuts down its side still gets its replies") {
    muxio::test::FdLeakCheck leak_check;
    ServerFixture fixture;
    Client client{fixture.port};
    client.send("PING\r\nECHO done\r\nPING unfinished");
    CHECK(fixture.run_until({&client}, [&] { return client.all_sent(); }));
    client.shut_write();
    CHECK(fixture.run_until({&client}, [&] { return client.eof(); }));
    CHECK(client.received() == "+PONG\r\n$4\r\ndone\r\n");
    CHECK(fixture.run_until({}, [&] { return fixture.server.connection_count() == 0; }));
}

TEST_CASE("a client that does not read stops being read from, then gets everything") {
    muxio::test::FdLeakCheck leak_check;
    ServerFixture fixture;
    const std::string value(std::size_t{1} << 20U, 'v');
    fixture.store.set("big", value, std::nullopt);
    Client client{fixture.port};
    client.set_reading(false);
    constexpr int requests = 40;  // 40 MiB of replies: far more than socket buffers hold
    for (int i = 0; i < requests; ++i) {
        client.send(encode({"GET", "big"}));
    }
    client.send("PING\r\n");
    CHECK(fixture.run_until({&client}, [&] { return fixture.server.stats().read_pauses > 0; }));
    client.set_reading(true);
    const std::string one = fmt::format("${}\r\n{}\r\n", value.size(), value);
    const std::size_t total = one.size() * requests + 7;
    CHECK(fixture.run_until({&client}, [&] { return client.received().size() >= total; }));
    REQUIRE(client.received().size() == total);
    for (int i = 0; i < requests; ++i) {
        CHECK(std::string_view{client.received()}.substr(one.size() * static_cast<std::size_t>(i), one.size()) == one);
    }
    CHECK(client.received().substr(total - 7) == "+PONG\r\n");
}

TEST_CASE("running out of descriptors pauses accepting instead of spinning") {
    muxio::test::FdLeakCheck leak_check;
    resp::ServerOptions options = ServerFixture::make_options();
    options.accept_pause = 100ms;
    ServerFixture fixture{options};
    // The pause is logged as a warning; expected here.
    const auto saved_level = resp::logger().level();
    resp::logger().set_level(spdlog::level::err);
    Client first{fixture.port};
    Client second{Client::Deferred{}};
    bool paused = false;
    std::size_t callbacks = 0;
    std::chrono::steady_clock::duration waited{};
    {
        // The server's next accept() fails with EMFILE.
        const muxio::test::NoFreeDescriptors no_free_descriptor;
        second.connect_to(fixture.port);
        paused = fixture.run_until({}, [&] { return !fixture.server.accepting(); });
        // Waiting out part of the pause runs no callback: the listener is not
        // watched, so its pending connection does not wake the loop.
        const auto started = std::chrono::steady_clock::now();
        for (int i = 0; i < 10; ++i) {
            callbacks += fixture.reactor.run_once(2ms);
        }
        waited = std::chrono::steady_clock::now() - started;
    }
    CHECK(paused);
    CHECK(fixture.server.stats().accept_pauses >= 1);
    // Only telling while the pause lasted: on a loaded machine the loop may
    // outlast it, and then the listener is rightly watched again.
    if (waited < options.accept_pause) {
        CHECK(callbacks <= 1);
    }
    second.send("PING\r\n");
    first.send("PING\r\n");
    CHECK(fixture.run_until({&first, &second},
                            [&] { return second.received() == "+PONG\r\n" && first.received() == "+PONG\r\n"; }));
    CHECK(fixture.server.accepting());
    resp::logger().set_level(saved_level);
}

TEST_CASE("close() drops every connection and the listener") {
    muxio::test::FdLeakCheck leak_check;
    ServerFixture fixture;
    Client client{fixture.port};
    CHECK(fixture.run_until({&client}, [&] { return fixture.server.connection_count() == 1; }));
    fixture.server.close();
    CHECK(fixture.server.connection_count() == 0);
    CHECK(fixture.run_until({&client}, [&] { return client.eof(); }));
}

namespace {

// Keeps the server's warnings (a client closed over a limit: expected in
// these tests) off stderr while it lives.
class QuietLog {
public:
    QuietLog() : saved_{resp::logger().level()} { resp::logger().set_level(spdlog::level::err); }
    ~QuietLog() { resp::logger().set_level(saved_); }
    QuietLog(const QuietLog&) = delete;
    QuietLog& operator=(const QuietLog&) = delete;

private:
    spdlog::level::level_enum saved_;
};

// Options with limits small enough to reach in a test.
resp::ServerOptions small_limits() {
    resp::ServerOptions options = ServerFixture::make_options();
    options.limits.max_bulk = std::size_t{1} << 20U;
    options.max_query_buffer = std::size_t{2} << 20U;
    options.max_output_buffer = std::size_t{8} << 20U;
    return options;
}

}  // namespace

TEST_CASE("a bulk string announced but not sent costs its connection only the bytes that arrived") {
    muxio::test::FdLeakCheck leak_check;
    ServerFixture fixture;  // the default limits allow a bulk string of 8 MiB
    // Thirty-odd bytes, then one of data, as an attacker would send them.
    constexpr std::size_t announced = std::size_t{8} << 20U;
    const std::string request = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$" + std::to_string(announced) + "\r\n";
    constexpr std::size_t clients = 50;
    std::vector<Client> attackers;
    attackers.reserve(clients);
    std::vector<Client*> stepped;
    for (std::size_t i = 0; i < clients; ++i) {
        attackers.emplace_back(fixture.port);
        attackers.back().send(request);
        stepped.push_back(&attackers.back());
    }
    CHECK(
        fixture.run_until(stepped, [&] { return fixture.server.stats().bytes_received == clients * request.size(); }));
    for (Client& attacker : attackers) {
        attacker.send("v");
    }
    CHECK(fixture.run_until(stepped,
                            [&] { return fixture.server.stats().bytes_received == clients * (request.size() + 1); }));
    CHECK(fixture.server.connection_count() == clients);
    // A few dozen bytes each, where reserving for the announced length would
    // have taken megabytes each.
    CHECK(fixture.server.buffer_capacity() <= clients * 256);
    CHECK(fixture.server.stats().peak_input_buffer <= 256);

    // As the data comes, the buffer grows with it, not towards the length announced.
    Client& feeder = attackers.front();
    const std::size_t sent = std::size_t{1} << 20U;
    feeder.send(std::string(sent, 'v'));
    CHECK(fixture.run_until(
        stepped, [&] { return fixture.server.stats().bytes_received == clients * (request.size() + 1) + sent; }));
    CHECK(fixture.server.stats().peak_input_buffer <= 4 * sent);
    CHECK(fixture.server.buffer_capacity() <= 4 * sent + clients * 256);

    // The rest still completes the request.
    const std::string rest(announced - 1 - sent, 'v');  // the one byte sent first, then `sent`
    feeder.send(rest + "\r\nGET k\r\n");
    const std::string reply_head = "+OK\r\n$" + std::to_string(announced) + "\r\nv";
    CHECK(
        fixture.run_until(stepped, [&] { return feeder.received().size() >= reply_head.size() - 1 + announced + 2; }));
    CHECK(std::string_view{feeder.received()}.substr(0, reply_head.size()) == reply_head);
    // Not twice the request, as doubling the buffer as it fills would give.
    CHECK(fixture.server.stats().peak_input_buffer <= request.size() + announced + (std::size_t{64} << 10U));
}

TEST_CASE("a request over the query buffer limit closes that client only") {
    muxio::test::FdLeakCheck leak_check;
    const QuietLog quiet;
    resp::ServerOptions options = small_limits();
    options.limits.max_bulk = std::size_t{64} << 10U;
    options.max_query_buffer = std::size_t{128} << 10U;
    ServerFixture fixture{options};
    Client good{fixture.port};
    const std::string value(std::size_t{32} << 10U, 'v');

    SUBCASE("a request that grows past it") {
        Client greedy{fixture.port};
        // Six values of half --max-bulk: each within it, the request is not.
        std::string request = "*13\r\n$4\r\nMSET\r\n";
        for (int i = 0; i < 6; ++i) {
            request += "$1\r\nk\r\n$" + std::to_string(value.size()) + "\r\n" + value + "\r\n";
        }
        greedy.send(request + "PING\r\n");
        CHECK(fixture.run_until({&greedy}, [&] { return greedy.eof(); }));
        CHECK(greedy.received().empty());
    }
    SUBCASE("a request that announces more than it") {
        Client greedy{fixture.port};
        // 64 KiB sent, then a header for 64 KiB more: refused at the header.
        greedy.send("*5\r\n$4\r\nMSET\r\n$1\r\na\r\n$" + std::to_string(value.size() * 2) + "\r\n" + value + value +
                    "\r\n$1\r\nb\r\n$65536\r\n");
        CHECK(fixture.run_until({&greedy}, [&] { return greedy.eof(); }));
        CHECK(greedy.received().empty());
    }
    CHECK(fixture.server.stats().query_limit_disconnects == 1);
    CHECK(fixture.store.size() == 0);
    // Pipelined requests are not one request: many of them in one write,
    // more bytes than the limit, are all answered.
    std::string pings;
    for (int i = 0; i < 40'000; ++i) {
        pings += "PING\r\n";
    }
    good.send(pings);
    CHECK(fixture.run_until({&good}, [&] { return good.received().size() == 40'000 * 7; }));
    CHECK(fixture.server.stats().query_limit_disconnects == 1);
    CHECK(fixture.server.connection_count() == 1);
}

TEST_CASE("a request over the query buffer limit is refused even when it arrives in one read") {
    muxio::test::FdLeakCheck leak_check;
    const QuietLog quiet;
    resp::ServerOptions options = small_limits();
    options.limits.max_bulk = 1024;
    options.max_query_buffer = 4096;
    ServerFixture fixture{options};
    Client greedy{fixture.port};
    const std::string value(1000, 'v');
    greedy.send(encode({"MSET", "a", value, "b", value, "c", value, "d", value, "e", value}) + "PING\r\n");
    CHECK(fixture.run_until({&greedy}, [&] { return greedy.eof(); }));
    CHECK(greedy.received().empty());
    CHECK(fixture.store.size() == 0);
    CHECK(fixture.server.stats().query_limit_disconnects == 1);
    // One within the limit, the same way, is run.
    Client good{fixture.port};
    good.send(encode({"MSET", "a", value, "b", value, "c", value}) + "PING\r\n");
    CHECK(fixture.run_until({&good}, [&] { return good.received() == "+OK\r\n+PONG\r\n"; }));
}

TEST_CASE("a reply over the output buffer limit closes that client without being built") {
    muxio::test::FdLeakCheck leak_check;
    const QuietLog quiet;
    ServerFixture fixture{small_limits()};  // 8 MiB of output buffer
    const std::string value(std::size_t{1} << 20U, 'v');
    fixture.store.set("big", value, std::nullopt);
    Client greedy{fixture.port};
    Client good{fixture.port};
    // 100 MiB of reply asked for in a 1.5 kB request.
    std::vector<std::string_view> words{"MGET"};
    for (int i = 0; i < 100; ++i) {
        words.emplace_back("big");
    }
    std::string request = fmt::format("*{}\r\n", words.size());
    for (const std::string_view word : words) {
        request += fmt::format("${}\r\n{}\r\n", word.size(), word);
    }
    greedy.send("PING\r\n" + request + "PING\r\n");
    good.send(encode({"MGET", "big", "big", "nothing"}) + "PING\r\n");
    const std::string one = "$1048576\r\n" + value + "\r\n";
    const std::string expected = "*3\r\n" + one + one + "$-1\r\n+PONG\r\n";
    CHECK(
        fixture.run_until({&greedy, &good}, [&] { return greedy.eof() && good.received().size() >= expected.size(); }));
    // The replies before it may or may not have gone out; none after it.
    CHECK((greedy.received().empty() || greedy.received() == "+PONG\r\n"));
    CHECK(good.received() == expected);
    CHECK(fixture.server.stats().output_limit_disconnects == 1);
    // The refused reply was never built: no buffer came near the limit.
    CHECK(fixture.server.stats().peak_output_buffer <= 3 * one.size());
    CHECK(fixture.server.connection_count() == 1);
}

TEST_CASE("replies that stay over the soft output limit close the client") {
    muxio::test::FdLeakCheck leak_check;
    const QuietLog quiet;
    resp::ServerOptions options = small_limits();
    options.max_output_buffer = std::size_t{64} << 20U;
    options.output_soft_limit = std::size_t{1} << 20U;
    options.output_soft_time = 50ms;
    ServerFixture fixture{options};
    // Far more than the kernel's socket buffers take: the rest stays pending.
    fixture.store.set("big", std::string(std::size_t{32} << 20U, 'v'), std::nullopt);
    Client stalled{fixture.port};
    stalled.set_reading(false);
    stalled.send(encode({"GET", "big"}));
    CHECK(fixture.run_until({&stalled}, [&] { return fixture.server.stats().output_limit_disconnects == 1; }));
    CHECK(fixture.server.connection_count() == 0);

    Client good{fixture.port};
    good.send("PING\r\n");
    CHECK(fixture.run_until({&good}, [&] { return good.received() == "+PONG\r\n"; }));
}

TEST_CASE("a connection beyond max_clients is told so and closed, and the others go on") {
    muxio::test::FdLeakCheck leak_check;
    resp::ServerOptions options = ServerFixture::make_options();
    options.max_clients = 2;
    ServerFixture fixture{options};
    Client first{fixture.port};
    Client second{fixture.port};
    first.send("PING\r\n");
    second.send("PING\r\n");
    CHECK(fixture.run_until({&first, &second},
                            [&] { return first.received() == "+PONG\r\n" && second.received() == "+PONG\r\n"; }));
    {
        Client extra{fixture.port};
        CHECK(fixture.run_until({&extra}, [&] { return extra.eof(); }));
        CHECK(extra.received() == "-ERR max number of clients reached\r\n");
    }
    CHECK(fixture.server.stats().rejected_connections == 1);
    CHECK(fixture.server.connection_count() == 2);
    first.send("ECHO still\r\n");
    CHECK(fixture.run_until({&first}, [&] { return first.received() == "+PONG\r\n$5\r\nstill\r\n"; }));

    // A slot freed is a slot taken.
    second.shut_write();
    CHECK(fixture.run_until({&second}, [&] { return fixture.server.connection_count() == 1; }));
    Client later{fixture.port};
    later.send("PING\r\n");
    CHECK(fixture.run_until({&later}, [&] { return later.received() == "+PONG\r\n"; }));
}

TEST_CASE("a connection the selector refuses is closed at once and the listener goes on") {
    muxio::test::FdLeakCheck leak_check;
    const QuietLog quiet;
    if (muxio::test::raise_fd_limit(FD_SETSIZE + 64) < FD_SETSIZE + 16) {
        MESSAGE("skipped: RLIMIT_NOFILE cannot reach FD_SETSIZE");
        return;
    }
    ServerFixture fixture{ServerFixture::make_options(), "select"};
    {
        // Every number below FD_SETSIZE taken: the next accept() returns one
        // that select() cannot watch.
        std::vector<UniqueFd> low;
        for (int i = 0; i < FD_SETSIZE; ++i) {
            UniqueFd fd{::fcntl(0, F_DUPFD_CLOEXEC, 0)};
            REQUIRE(fd.get() >= 0);
            if (fd.get() >= FD_SETSIZE) {
                break;
            }
            low.push_back(std::move(fd));
        }
        Client refused{fixture.port};
        refused.send("PING\r\n");
        CHECK(fixture.run_until({&refused}, [&] { return refused.eof(); }));
        CHECK(refused.received().empty());
        CHECK(fixture.server.stats().registration_failures == 1);
        CHECK(fixture.server.connection_count() == 0);
        CHECK(fixture.server.accepting());
    }
    Client later{fixture.port};
    later.send("PING\r\n");
    CHECK(fixture.run_until({&later}, [&] { return later.received() == "+PONG\r\n"; }));
    CHECK(fixture.server.connection_count() == 1);
    CHECK(fixture.server.stats().accepted == 1);
}

TEST_CASE("a warm connection answers GET and PING one at a time without allocating") {
    muxio::test::FdLeakCheck leak_check;
    ServerFixture fixture;
    fixture.store.set("key", "value", std::nullopt);
    UniqueFd fd{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    REQUIRE(fd.get() >= 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(fixture.port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0);
    // A client that allocates nothing itself: fixed buffers, no strings.
    const auto exchange = [&](std::string_view request, std::string_view reply) {
        if (::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
            return false;
        }
        std::array<char, 64> received{};
        std::size_t got = 0;
        for (int i = 0; i < 5000 && got < reply.size(); ++i) {
            fixture.reactor.run_once(2ms);
            const ssize_t n = ::recv(fd.get(), received.data() + got, received.size() - got, MSG_DONTWAIT);
            if (n > 0) {
                got += static_cast<std::size_t>(n);
            }
        }
        return std::string_view{received.data(), got} == reply;
    };
    constexpr std::string_view get = "*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
    constexpr std::string_view ping = "*1\r\n$4\r\nPING\r\n";
    for (int i = 0; i < 3; ++i) {
        REQUIRE(exchange(get, "$5\r\nvalue\r\n"));
        REQUIRE(exchange(ping, "+PONG\r\n"));
    }
    const std::size_t before = muxio::test::allocation_count();
    bool answered = true;
    for (int i = 0; i < 50; ++i) {
        answered = answered && exchange(get, "$5\r\nvalue\r\n") && exchange(ping, "+PONG\r\n");
    }
    const std::size_t after = muxio::test::allocation_count();
    CHECK(answered);
    CHECK(after == before);
}
