// Server with TLS (ServerConfig's tls_* fields) on a real Reactor and
// loopback TCP: what happens to connections that never finish their
// handshake, and the configuration errors. Whole HTTPS exchanges with curl,
// openssl s_client and Python's ssl are in http_tls_test.py.

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "handler.hpp"
#include "http_test_support.hpp"
#include "muxio/reactor.hpp"
#include "muxio/tls.hpp"
#include "server.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::http::Handler;
using muxio::http::Server;
using muxio::http::ServerConfig;
using muxio::http::test::TempDir;
using muxio::test::UniqueFd;

namespace {

// A self-signed certificate for localhost and 127.0.0.1 (valid for a
// century), its key, and a key of nothing: the server's side of a handshake
// needs no client that trusts it.
constexpr std::string_view certificate_pem = R"(-----BEGIN CERTIFICATE-----
MIIBnDCCAUGgAwIBAgIUaDwzzqerEpdPOhnTOJFsdbuFn8swCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwNzE4MTcyMVoYDzIxMjYxMTEz
MTgxNzIxWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQmt/6gjpzgXMwJKRMnp5xj1QzzeLZzsKEtHVou3eAiCIIS7Y5eVqVt
n/ghC6jFztxHk/aYUEyiyGKD4riCKqzRo28wbTAdBgNVHQ4EFgQU5oYHnaWUYYrU
G3IxP9KeRiBNW4QwHwYDVR0jBBgwFoAU5oYHnaWUYYrUG3IxP9KeRiBNW4QwDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwCgYIKoZI
zj0EAwIDSQAwRgIhAKSHP7mOdvgyzSxFu11HGwxNo3t8QxbTqVhlZd6S7b5IAiEA
pObEYV87kaIr6sNCpzsYFmzykvQ6QFgMjSwHPJDmrz8=
-----END CERTIFICATE-----
)";
constexpr std::string_view key_pem = R"(-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgtMxTBklZgIut88qy
wl5nv8b0TIl1AAoA2QtZ05XoqymhRANCAAQmt/6gjpzgXMwJKRMnp5xj1QzzeLZz
sKEtHVou3eAiCIIS7Y5eVqVtn/ghC6jFztxHk/aYUEyiyGKD4riCKqzR
-----END PRIVATE KEY-----
)";
constexpr std::string_view other_key_pem = R"(-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgGdMKQnPpeyhV+Ary
HwbAUU88i8y3dbJpgM68o1/PqzuhRANCAAR9MtE+fLUpjbQWawledYmzmThvPEnd
V4Uw6taYKlIDwu5vz/VzMSDBJaIoybtlFoOQxjjzNagz6Ofob6ee/Y4g
-----END PRIVATE KEY-----
)";

// The server's clock, moved by hand: handshake deadlines pass when the test
// says so.
class ManualClock {
public:
    [[nodiscard]] muxio::ReactorOptions options() {
        muxio::ReactorOptions options;
        options.clock = [this] { return now_; };
        return options;
    }
    void advance(muxio::Reactor::Duration by) noexcept { now_ += by; }

private:
    muxio::Reactor::TimePoint now_{std::chrono::hours{1}};
};

struct TlsFiles {
    TlsFiles() {
        dir.write("cert.pem", certificate_pem);
        dir.write("key.pem", key_pem);
        dir.write("other-key.pem", other_key_pem);
        dir.write("root/index.html", "index\n");
    }
    [[nodiscard]] std::string path(const char* name) const { return (dir.path() / name).string(); }
    [[nodiscard]] ServerConfig config() const {
        ServerConfig config;
        config.tls_certificate_file = path("cert.pem");
        config.tls_key_file = path("key.pem");
        return config;
    }

    TempDir dir;
};

struct Fixture {
    // A server with `config` and the certificate and key of `files`.
    explicit Fixture(ServerConfig config = {}, muxio::ReactorOptions options = {}) : reactor{std::move(options)} {
        config.tls_certificate_file = files.path("cert.pem");
        config.tls_key_file = files.path("key.pem");
        server.emplace(reactor, Handler{(files.dir.path() / "root").string()}, config);
    }

    // A non-blocking client connected to the server (the kernel completes
    // the TCP handshake on loopback before any accept).
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

    TlsFiles files;
    muxio::Reactor reactor;
    std::optional<Server> server;  // destroyed before the reactor
};

// Appends what is readable to `into`; true once the peer closed (or reset).
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

}  // namespace

TEST_CASE("an HTTPS server given a certificate and no key, or a key and no certificate, refuses to start") {
    const TlsFiles files;
    muxio::Reactor reactor;
    ServerConfig config = files.config();
    config.tls_key_file.clear();
    CHECK_THROWS_AS(Server(reactor, Handler{std::nullopt}, config), std::invalid_argument);
    config = files.config();
    config.tls_certificate_file.clear();
    CHECK_THROWS_AS(Server(reactor, Handler{std::nullopt}, config), std::invalid_argument);
}

TEST_CASE("an HTTPS server whose key does not match its certificate throws a TlsError naming the key file") {
    const TlsFiles files;
    muxio::Reactor reactor;
    ServerConfig config = files.config();
    config.tls_key_file = files.path("other-key.pem");
    try {
        const Server server{reactor, Handler{std::nullopt}, config};
        FAIL("the server started");
    } catch (const muxio::TlsError& error) {
        CHECK(error.code() == muxio::TlsErrc::bad_configuration);
        CHECK(std::string_view{error.what()}.find(config.tls_key_file) != std::string_view::npos);
    }
    config = files.config();
    config.tls_certificate_file = files.path("missing.pem");
    try {
        const Server server{reactor, Handler{std::nullopt}, config};
        FAIL("the server started");
    } catch (const muxio::TlsError& error) {
        CHECK(std::string_view{error.what()}.find(config.tls_certificate_file) != std::string_view::npos);
    }
}

TEST_CASE("a TLS client that never sends its hello is closed at the handshake timeout, not before, and counted") {
    ManualClock clock;
    ServerConfig config;
    config.tls_handshake_timeout = 2s;
    Fixture fixture{config, clock.options()};
    const UniqueFd client = fixture.connect();
    REQUIRE(fixture.run_until([&] { return fixture.server->stats().accepted == 1; }));
    std::string got;
    clock.advance(1900ms);
    fixture.reactor.run_once(20ms);
    CHECK_FALSE(read_available(client.get(), got));
    clock.advance(200ms);
    CHECK(fixture.run_until([&] { return read_available(client.get(), got); }));
    CHECK(got.empty());
    const muxio::http::ServerStats stats = fixture.server->stats();
    CHECK(stats.handshake_timeouts == 1);
    CHECK(stats.timed_out == 1);
    CHECK(stats.handshake_failures == 0);
    CHECK(stats.requests == 0);
    CHECK(fixture.server->connection_count() == 0);
}

TEST_CASE("plain HTTP to an HTTPS server fails the handshake, is counted and gets no HTTP answer") {
    Fixture fixture;
    const UniqueFd client = fixture.connect();
    muxio::test::write_all(client.get(), "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    std::string got;
    CHECK(fixture.run_until([&] { return read_available(client.get(), got); }));
    CHECK(got.rfind("HTTP/", 0) == std::string::npos);
    CHECK(fixture.run_until([&] { return fixture.server->stats().handshake_failures == 1; }));
    CHECK(fixture.server->stats().handshake_timeouts == 0);
    CHECK(fixture.server->connection_count() == 0);
}

TEST_CASE("shutdown closes connections still in their TLS handshake and stops the reactor at once") {
    Fixture fixture;
    const UniqueFd first = fixture.connect();
    const UniqueFd second = fixture.connect();
    REQUIRE(fixture.run_until([&] { return fixture.server->stats().accepted == 2; }));
    fixture.server->shutdown();
    const muxio::test::Stopwatch watch;
    fixture.reactor.run();  // returns once the server drained: no wait for the handshake timeout
    CHECK(watch.elapsed() < 2s);
    std::string got;
    CHECK(read_available(first.get(), got));
    CHECK(read_available(second.get(), got));
    CHECK(got.empty());
    CHECK(fixture.server->stats().handshake_failures == 0);  // ended by shutdown, not failed
}

TEST_CASE("over max_connections an HTTPS server closes the new connection without a plain-text 503") {
    ServerConfig config;
    config.max_connections = 1;
    Fixture fixture{config};
    const UniqueFd held = fixture.connect();
    REQUIRE(fixture.run_until([&] { return fixture.server->stats().accepted == 1; }));
    const UniqueFd refused = fixture.connect();
    std::string got;
    CHECK(fixture.run_until([&] { return read_available(refused.get(), got); }));
    CHECK(got.empty());
    CHECK(fixture.server->stats().refused == 1);
}
