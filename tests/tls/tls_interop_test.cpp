// muxio's TLS against other implementations' tools, run as child
// processes: openssl s_client against a muxio server, a muxio client
// against openssl s_server, curl against an HTTPS responder written with
// TlsStream. Each is bounded by with_timeout; a missing tool skips the case
// with a message.
#include <array>
#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "muxio/combinators.hpp"
#include "muxio/net.hpp"
#include "muxio/run.hpp"
#include "muxio/tls.hpp"
#include "support/support.hpp"
#include "tls/tls_support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::SocketAddress;
using muxio::Task;
using muxio::TcpListener;
using muxio::TlsStream;
using muxio::test::FdLeakCheck;
using muxio::tls_test::alpn_server_context;
using muxio::tls_test::Child;
using muxio::tls_test::client_context;
using muxio::tls_test::find_program;
using muxio::tls_test::pki;
using muxio::tls_test::server_context;

namespace {

// Reads from `stream` until `end` has arrived; everything read.
Task<std::string> read_until(TlsStream& stream, std::string_view end) {
    std::string text;
    std::array<std::byte, 4096> buffer{};
    while (text.find(end) == std::string::npos) {
        const std::size_t got = co_await stream.read_some(buffer);
        if (got == 0) {
            break;
        }
        text.append(reinterpret_cast<const char*>(buffer.data()), got);
    }
    co_return text;
}

bool have(const std::string& program) {
    if (program.empty()) {
        MESSAGE("skipped: the program is not installed (bash scripts/setup.sh installs it)");
        return false;
    }
    return true;
}

}  // namespace

TEST_CASE("openssl s_client verifies a muxio server's certificate, agrees on ALPN and gets its echo") {
    FdLeakCheck leak_check;
    const std::string openssl = find_program("openssl");
    if (!have(openssl)) {
        return;
    }
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
    const std::string port = std::to_string(listener.local_address().port());
    Child client{{openssl, "s_client", "-connect", "127.0.0.1:" + port, "-servername", "localhost", "-CAfile", pki().ca,
                  "-verify_return_error", "-verify_hostname", "localhost", "-alpn", "muxio/1", "-ign_eof"}};
    const muxio::TlsContext context = alpn_server_context({"muxio/1"});
    auto serve = [&]() -> Task<std::string> {
        TlsStream server = TlsStream::server(co_await listener.accept(), context);
        co_await server.handshake();
        CHECK(server.server_name() == "localhost");
        CHECK(server.alpn_protocol() == "muxio/1");
        const std::string line = co_await read_until(server, "\n");
        const std::string reply = "echo: " + line;
        co_await server.write_all(reply);
        co_await server.shutdown();  // s_client exits at the close_notify
        co_return line;
    };
    auto drive = [&]() -> Task<int> {
        CHECK(co_await client.read_until(reactor, "Verify return code: 0 (ok)"));
        client.write("hello from s_client\n");
        CHECK(co_await client.read_until(reactor, "echo: hello from s_client"));
        co_return co_await client.wait(reactor);
    };
    auto [line, status] =
        muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, muxio::when_all(serve(), drive())));
    CHECK(line == "hello from s_client\n");
    CHECK(status == 0);
    INFO(client.output());
    CHECK(client.output().find("ALPN protocol: muxio/1") != std::string::npos);
    CHECK(client.output().find("Protocol  : TLSv1.3") != std::string::npos);
}

TEST_CASE("a muxio client verifies openssl s_server, agrees on ALPN, and its close_notify ends the read cleanly") {
    FdLeakCheck leak_check;
    const std::string openssl = find_program("openssl");
    if (!have(openssl)) {
        return;
    }
    Reactor reactor;
    // -rev answers each line reversed; "CLOSE" makes it send close_notify.
    Child server{{openssl, "s_server", "-accept", "127.0.0.1:0", "-cert", pki().server.certificate, "-key",
                  pki().server.key, "-naccept", "1", "-rev", "-alpn", "muxio/1"}};
    server.close_input();  // it would wait for its console otherwise
    const muxio::TlsContext client_alpn = client_context({"muxio/1"});
    auto body = [&]() -> Task<void> {
        REQUIRE(co_await server.read_until(reactor, "ACCEPT 127.0.0.1:"));
        const std::size_t at = server.output().find("ACCEPT 127.0.0.1:") + 17;
        REQUIRE(co_await server.read_until(reactor, "\n", at));
        const std::string& banner = server.output();
        const auto port = static_cast<std::uint16_t>(std::stoi(banner.substr(at)));
        TlsStream client = co_await TlsStream::connect(reactor, "localhost", port, client_alpn);
        CHECK(client.alpn_protocol() == "muxio/1");
        co_await client.write_all("olleh\n");
        CHECK(co_await read_until(client, "\n") == "hello\n");
        co_await client.write_all("CLOSE\n");
        std::array<std::byte, 256> buffer{};
        std::size_t got = 1;
        for (int i = 0; i < 100 && got != 0; ++i) {
            got = co_await client.read_some(buffer);  // 0 at s_server's close_notify; TlsError if it had none
        }
        CHECK(got == 0);
        CHECK(client.engine().shutdown_received());
        co_await client.shutdown();  // s_server waits for the answer to its close_notify
        client.close();
        CHECK(co_await server.wait(reactor) == 0);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
    INFO(server.output());
    CHECK(server.output().find("ALPN protocols selected: muxio/1") != std::string::npos);
}

TEST_CASE("curl fetches a page from an HTTPS responder written with TlsStream") {
    FdLeakCheck leak_check;
    const std::string curl = find_program("curl");
    if (!have(curl)) {
        return;
    }
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
    const std::string port = std::to_string(listener.local_address().port());
    Child client{{curl, "--silent", "--show-error", "--max-time", "20", "--cacert", pki().ca, "--resolve",
                  "localhost:" + port + ":127.0.0.1", "--write-out", "\n%{http_code} %{http_version}",
                  "https://localhost:" + port + "/hello"}};
    client.close_input();
    const muxio::TlsContext context = alpn_server_context({"http/1.1"});
    auto serve = [&]() -> Task<std::string> {
        TlsStream server = TlsStream::server(co_await listener.accept(), context);
        co_await server.handshake();
        CHECK(server.alpn_protocol() == "http/1.1");
        const std::string request = co_await read_until(server, "\r\n\r\n");
        const std::string body = "hello over TLS";
        co_await server.write_all(fmt::format(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            body.size(), body));
        co_await server.shutdown();
        co_return request;
    };
    auto [request, status] = muxio::run_until_complete(
        reactor, muxio::with_timeout(reactor, 30s, muxio::when_all(serve(), client.wait(reactor))));
    INFO(client.output());
    CHECK(status == 0);
    CHECK(request.find("GET /hello HTTP/1.1\r\n") == 0);
    CHECK(request.find("Host: localhost:" + port) != std::string::npos);
    CHECK(client.output() == "hello over TLS\n200 1.1");
}

TEST_CASE("curl refuses a muxio server whose certificate it cannot verify, and the server names the alert") {
    FdLeakCheck leak_check;
    const std::string curl = find_program("curl");
    if (!have(curl)) {
        return;
    }
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
    const std::string port = std::to_string(listener.local_address().port());
    // No --cacert: the system store does not know the test CA.
    Child client{{curl, "--silent", "--show-error", "--max-time", "20", "--resolve", "localhost:" + port + ":127.0.0.1",
                  "https://localhost:" + port + "/"}};
    client.close_input();
    auto serve = [&]() -> Task<std::string> {
        TlsStream server = TlsStream::server(co_await listener.accept(), server_context());
        try {
            co_await server.handshake();
        } catch (const muxio::TlsError& error) {
            co_return error.what();
        }
        co_return "the handshake succeeded";
    };
    auto [failure, status] = muxio::run_until_complete(
        reactor, muxio::with_timeout(reactor, 30s, muxio::when_all(serve(), client.wait(reactor))));
    INFO(client.output());
    CHECK(status == 60);  // CURLE_PEER_FAILED_VERIFICATION
    CHECK(failure.find("tls handshake with 127.0.0.1:") == 0);
    CHECK(failure.find("alert unknown ca") != std::string::npos);
}
