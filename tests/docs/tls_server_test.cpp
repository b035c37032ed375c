// The TLS Server example README.md shows (the callback layer with
// tls_filter()), compiled and run against a TlsStream client; built only
// with muxio::tls. The region between the markers is printed in README.md
// verbatim (readme_snippets_test.cpp compares them).
#include <chrono>
#include <cstddef>
#include <memory>
#include <span>

#include <muxio/muxio.hpp>
#include <muxio/tls.hpp>

// readme-begin: tls-server
// An echo server over TLS on the callback layer: each connection's
// handshake runs first, then the protocol sees plaintext only.
struct TlsEcho : muxio::Protocol {
    muxio::Transport* transport = nullptr;
    void connection_made(muxio::Transport& made) override { transport = &made; }  // handshake done
    void data_received(std::span<const std::byte> data) override { transport->write(data); }
};

std::unique_ptr<muxio::Server> tls_echo_server(muxio::Reactor& reactor, const muxio::TlsContext& context) {
    muxio::ServerOptions options;
    options.transport.filter = muxio::tls_filter(context);           // TLS on every connection
    options.transport.handshake_timeout = std::chrono::seconds{10};  // a silent peer is dropped
    return std::make_unique<muxio::Server>(
        reactor, [](const muxio::SocketAddress&) { return std::make_unique<TlsEcho>(); }, options);
}
// readme-end: tls-server

#include <array>
#include <string>

#include <doctest/doctest.h>

#include "support/support.hpp"
#include "tls/tls_support.hpp"

using namespace std::chrono_literals;

TEST_CASE("the README's TLS echo server echoes to a verifying TlsStream client") {
    muxio::test::FdLeakCheck leak_check;
    muxio::Reactor reactor;
    const std::unique_ptr<muxio::Server> server = tls_echo_server(reactor, muxio::tls_test::server_context());
    const muxio::SocketAddress address = server->listen("127.0.0.1", 0);
    auto client = [&]() -> muxio::Task<std::string> {
        muxio::TlsStream tls = muxio::TlsStream::client(co_await muxio::TcpStream::connect(reactor, address),
                                                        muxio::tls_test::client_context(), "localhost");
        co_await tls.handshake();
        co_await tls.write_all("echo me");
        std::string text;
        std::array<std::byte, 64> buffer{};
        while (text.size() < 7) {
            const std::size_t got = co_await tls.read_some(buffer);
            if (got == 0) {
                break;
            }
            text.append(reinterpret_cast<const char*>(buffer.data()), got);
        }
        co_return text;
    };
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, client())) == "echo me");
}
