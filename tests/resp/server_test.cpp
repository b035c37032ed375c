// The network glue in-process: a Server on a real reactor and loopback TCP
// clients driven from the same thread.

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/spdlog.h>

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
    explicit ServerFixture(resp::ServerOptions options = make_options()) : server{reactor, dispatcher, options} {
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
        expected += ":" + std::to_string(i + 1) + "\r\n";
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

TEST_CASE("QUIT closes after its reply; requests after it are not run") {
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
    const std::string one = "$" + std::to_string(value.size()) + "\r\n" + value + "\r\n";
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
    {
        // The server's next accept() fails with EMFILE.
        const muxio::test::NoFreeDescriptors no_free_descriptor;
        second.connect_to(fixture.port);
        paused = fixture.run_until({}, [&] { return !fixture.server.accepting(); });
        // Waiting out part of the pause runs no callback: the listener is not
        // watched, so its pending connection does not wake the loop.
        for (int i = 0; i < 10; ++i) {
            callbacks += fixture.reactor.run_once(2ms);
        }
    }
    CHECK(paused);
    CHECK(fixture.server.stats().accept_pauses >= 1);
    CHECK(callbacks <= 1);
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
