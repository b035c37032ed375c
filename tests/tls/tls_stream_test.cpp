// TlsStream between a muxio client and a muxio server on loopback: echo,
// verification failures naming their check, SNI and ALPN, close_notify
// both ways, truncation, a stalled handshake, misuse.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <doctest/doctest.h>
#include <openssl/ssl.h>

#include "muxio/combinators.hpp"
#include "muxio/error.hpp"
#include "muxio/net.hpp"
#include "muxio/run.hpp"
#include "muxio/tls.hpp"
#include "net/net_support.hpp"
#include "support/support.hpp"
#include "tls/tls_support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::SocketAddress;
using muxio::Task;
using muxio::TcpListener;
using muxio::TcpStream;
using muxio::TlsContext;
using muxio::TlsErrc;
using muxio::TlsError;
using muxio::TlsStream;
using muxio::net_test::bytes;
using muxio::net_test::pattern;
using muxio::test::FdLeakCheck;
using muxio::tls_test::alpn_server_context;
using muxio::tls_test::client_context;
using muxio::tls_test::pki;
using muxio::tls_test::server_context;

namespace {

// A listener on 127.0.0.1 and a connected, accepted pair of TCP streams.
struct TcpPair {
    TcpStream client;
    TcpStream server;
};

Task<TcpPair> tcp_pair(Reactor& reactor, TcpListener& listener) {
    Task<TcpStream> accept = listener.accept();
    TcpStream client = co_await TcpStream::connect(reactor, listener.local_address());
    TcpStream server = co_await std::move(accept);
    co_return TcpPair{std::move(client), std::move(server)};
}

// What each side of a handshake ended with: nothing, or the error.
struct Outcome {
    bool ok = false;
    std::error_code code;
    std::string message;
};

Task<Outcome> handshake_outcome(TlsStream& stream) {
    Outcome outcome;
    try {
        co_await stream.handshake();
        outcome.ok = true;
    } catch (const TlsError& error) {
        outcome.code = error.code();
        outcome.message = error.what();
    }
    co_return outcome;
}

// Both handshakes at once, over a fresh connection.
struct Handshake {
    TlsStream client;
    TlsStream server;
    Outcome client_outcome;
    Outcome server_outcome;
};

Task<Handshake> handshake_pair(Reactor& reactor, const TlsContext& client_ctx, const TlsContext& server_ctx,
                               std::string server_name) {
    TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
    TcpPair tcp = co_await tcp_pair(reactor, listener);
    Handshake result{TlsStream::client(std::move(tcp.client), client_ctx, server_name),
                     TlsStream::server(std::move(tcp.server), server_ctx),
                     {},
                     {}};
    auto [client_outcome, server_outcome] =
        co_await muxio::when_all(handshake_outcome(result.client), handshake_outcome(result.server));
    result.client_outcome = client_outcome;
    result.server_outcome = server_outcome;
    co_return result;
}

Handshake run_handshake(const TlsContext& client_ctx, const TlsContext& server_ctx, std::string server_name) {
    Reactor reactor;
    return muxio::run_until_complete(
        reactor, muxio::with_timeout(reactor, 20s, handshake_pair(reactor, client_ctx, server_ctx, server_name)));
}

Task<std::string> read_to_end(TlsStream& stream) {
    std::string text;
    std::array<std::byte, 4096> buffer{};
    for (int i = 0; i < 100000; ++i) {
        const std::size_t got = co_await stream.read_some(buffer);
        if (got == 0) {
            co_return text;
        }
        text.append(reinterpret_cast<const char*>(buffer.data()), got);
    }
    FAIL("read_to_end: no end after 100000 reads");
    co_return text;
}

}  // namespace

TEST_CASE("a muxio TLS client and server echo a megabyte in both directions at once") {
    FdLeakCheck leak_check;
    Reactor reactor;
    const std::vector<std::byte> payload = pattern(1 << 20, 7);
    auto body = [&]() -> Task<void> {
        Handshake pair = co_await handshake_pair(reactor, client_context(), server_context(), "localhost");
        REQUIRE(pair.client_outcome.ok);
        REQUIRE(pair.server_outcome.ok);
        CHECK(pair.client.engine().protocol_version() == "TLSv1.3");
        CHECK_FALSE(pair.client.engine().cipher().empty());
        // The server echoes until close_notify, the client writes and reads
        // at once (full duplex): neither side's buffers may fill for good.
        auto echo = [&]() -> Task<std::size_t> {
            std::array<std::byte, 16384> buffer{};
            std::size_t total = 0;
            for (;;) {
                const std::size_t got = co_await pair.server.read_some(buffer);
                if (got == 0) {
                    co_await pair.server.shutdown();
                    co_return total;
                }
                total += got;
                co_await pair.server.write_all(std::span{buffer}.first(got));
            }
        };
        auto send = [&]() -> Task<void> {
            co_await pair.client.write_all(payload);
            co_await pair.client.shutdown();
        };
        auto receive = [&]() -> Task<std::vector<std::byte>> {
            std::vector<std::byte> received(payload.size());
            co_await pair.client.read_exact(received);
            std::array<std::byte, 1> after{};
            CHECK(co_await pair.client.read_some(after) == 0);  // the server's close_notify
            co_return received;
        };
        auto [echoed, sent, received] = co_await muxio::when_all(echo(), send(), receive());
        (void)sent;
        CHECK(echoed == payload.size());
        CHECK(received == payload);
        CHECK(pair.client.engine().shutdown_received());
        CHECK(pair.server.engine().shutdown_received());
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 60s, body()));
}

TEST_CASE("a TLS stream works over a Unix-domain stream pair") {
    FdLeakCheck leak_check;
    Reactor reactor;
    auto [a, b] = muxio::UnixStream::pair(reactor);
    TlsStream client = TlsStream::client(std::move(a), client_context(), "localhost");
    TlsStream server = TlsStream::server(std::move(b), server_context());
    auto body = [&]() -> Task<void> {
        co_await muxio::when_all(client.handshake(), server.handshake());
        co_await client.write_all("over unix");
        std::array<std::byte, 64> buffer{};
        const std::size_t got = co_await server.read_some(buffer);
        CHECK(std::string(reinterpret_cast<const char*>(buffer.data()), got) == "over unix");
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body()));
}

TEST_CASE("SNI: the server reads the name the client sent, and a client by IP address sends none") {
    FdLeakCheck leak_check;
    Handshake named = run_handshake(client_context(), server_context(), "localhost");
    REQUIRE(named.client_outcome.ok);
    CHECK(named.server.server_name() == "localhost");
    CHECK(named.client.server_name() == "localhost");

    // The certificate's IP entries are checked instead; no SNI for an address.
    Handshake by_address = run_handshake(client_context(), server_context(), "127.0.0.1");
    REQUIRE(by_address.client_outcome.ok);
    CHECK(by_address.server.server_name().empty());
}

TEST_CASE("ALPN: the server picks its most preferred protocol the client offers, and both sides see it") {
    FdLeakCheck leak_check;
    Handshake pair =
        run_handshake(client_context({"http/1.1", "h2"}), alpn_server_context({"h2", "http/1.1"}), "localhost");
    REQUIRE(pair.client_outcome.ok);
    REQUIRE(pair.server_outcome.ok);
    CHECK(pair.client.alpn_protocol() == "h2");
    CHECK(pair.server.alpn_protocol() == "h2");

    Handshake none = run_handshake(client_context(), alpn_server_context({"h2"}), "localhost");
    REQUIRE(none.client_outcome.ok);  // a client offering no ALPN is served
    CHECK(none.client.alpn_protocol().empty());
}

TEST_CASE("ALPN: a client offering only protocols the server does not speak fails with no_application_protocol") {
    FdLeakCheck leak_check;
    Handshake pair = run_handshake(client_context({"spdy/1"}), alpn_server_context({"h2"}), "localhost");
    CHECK_FALSE(pair.client_outcome.ok);
    CHECK(pair.client_outcome.code == TlsErrc::no_application_protocol);
    CHECK(pair.client_outcome.message.find("no application protocol") != std::string::npos);
    CHECK(pair.server_outcome.code == TlsErrc::no_application_protocol);
}

TEST_CASE("a client refuses a certificate for another name, and the error says hostname mismatch") {
    FdLeakCheck leak_check;
    Handshake pair = run_handshake(client_context(), server_context(pki().other_name), "localhost");
    REQUIRE_FALSE(pair.client_outcome.ok);
    CHECK(pair.client_outcome.code == TlsErrc::hostname_mismatch);
    CHECK(pair.client_outcome.message.find("tls handshake with 127.0.0.1:") == 0);
    CHECK(pair.client_outcome.message.find("(server name localhost)") != std::string::npos);
    CHECK(pair.client_outcome.message.find("certificate verify failed: hostname mismatch") != std::string::npos);
    // The client's alert reaches the server, whose handshake fails too.
    CHECK(pair.server_outcome.code == TlsErrc::handshake_failed);
    CHECK(pair.server_outcome.message.find("alert") != std::string::npos);
}

TEST_CASE("a client refuses an expired certificate, and the error says certificate has expired") {
    FdLeakCheck leak_check;
    Handshake pair = run_handshake(client_context(), server_context(pki().expired), "localhost");
    REQUIRE_FALSE(pair.client_outcome.ok);
    CHECK(pair.client_outcome.code == TlsErrc::certificate_verify_failed);
    CHECK(pair.client_outcome.message.find("certificate has expired") != std::string::npos);
}

TEST_CASE("a client refuses a self-signed certificate it does not trust") {
    FdLeakCheck leak_check;
    Handshake pair = run_handshake(client_context(), server_context(pki().self_signed), "localhost");
    REQUIRE_FALSE(pair.client_outcome.ok);
    CHECK(pair.client_outcome.code == TlsErrc::certificate_verify_failed);
    CHECK(pair.client_outcome.message.find("self-signed certificate") != std::string::npos);
}

TEST_CASE("verification is on by default: a client with the system store refuses the test CA's certificate") {
    FdLeakCheck leak_check;
    const TlsContext system_store = TlsContext::client();
    CHECK(system_store.verifies_peer());
    Handshake pair = run_handshake(system_store, server_context(), "localhost");
    REQUIRE_FALSE(pair.client_outcome.ok);
    CHECK(pair.client_outcome.code == TlsErrc::certificate_verify_failed);
    CHECK(pair.client_outcome.message.find("unable to get local issuer certificate") != std::string::npos);
}

TEST_CASE("insecure_skip_verification accepts a certificate for another name, untrusted") {
    FdLeakCheck leak_check;
    muxio::TlsClientOptions options;
    options.insecure_skip_verification = true;
    const TlsContext insecure = TlsContext::client(options);
    CHECK_FALSE(insecure.verifies_peer());
    Handshake pair = run_handshake(insecure, server_context(pki().other_name), "");
    CHECK(pair.client_outcome.ok);
    CHECK(pair.server_outcome.ok);
}

TEST_CASE("close_notify both ways: each side's read ends with 0, and a side may still write after the peer's") {
    FdLeakCheck leak_check;
    Reactor reactor;
    auto body = [&]() -> Task<void> {
        Handshake pair = co_await handshake_pair(reactor, client_context(), server_context(), "localhost");
        REQUIRE(pair.client_outcome.ok);
        co_await pair.client.write_all("last words");
        co_await pair.client.shutdown();
        CHECK(pair.client.engine().shutdown_sent());
        CHECK(co_await read_to_end(pair.server) == "last words");
        CHECK(pair.server.engine().shutdown_received());
        // TLS 1.3 closes each direction on its own.
        co_await pair.server.write_all("reply");
        co_await pair.server.shutdown();
        CHECK(co_await read_to_end(pair.client) == "reply");
        // A second shutdown does nothing; a write after it fails naming why.
        co_await pair.client.shutdown();
        bool refused = false;
        try {
            co_await pair.client.write_all("more");
        } catch (const TlsError& error) {
            refused = true;
            CHECK(error.code() == TlsErrc::closed);
        }
        CHECK(refused);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body()));
}

TEST_CASE("a TLS 1.3 key update the peer requests is answered by the reader, and data flows both ways after it") {
    FdLeakCheck leak_check;
    Reactor reactor;
    auto body = [&]() -> Task<void> {
        Handshake pair = co_await handshake_pair(reactor, client_context(), server_context(), "localhost");
        REQUIRE(pair.client_outcome.ok);
        auto* client_ssl = static_cast<SSL*>(pair.client.engine().native_handle());
        REQUIRE(SSL_key_update(client_ssl, SSL_KEY_UPDATE_REQUESTED) == 1);
        co_await pair.client.write_all("after the update");  // the KeyUpdate goes first
        CHECK(SSL_get_key_update_type(client_ssl) == SSL_KEY_UPDATE_NONE);
        std::array<std::byte, 64> buffer{};
        std::size_t got = 0;
        for (int i = 0; i < 10 && got == 0; ++i) {
            got = co_await pair.server.read_some(buffer);
        }
        CHECK(std::string(reinterpret_cast<const char*>(buffer.data()), got) == "after the update");
        // The server's answering KeyUpdate went out with the read (or goes
        // with this write); the client must take it to read the reply.
        co_await pair.server.write_all("reply");
        got = co_await pair.client.read_some(buffer);
        CHECK(std::string(reinterpret_cast<const char*>(buffer.data()), got) == "reply");
        co_await pair.client.write_all("and again");
        got = co_await pair.server.read_some(buffer);
        CHECK(std::string(reinterpret_cast<const char*>(buffer.data()), got) == "and again");
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body()));
}

TEST_CASE("a connection closed without close_notify is a truncation error, not an end of stream") {
    FdLeakCheck leak_check;
    Reactor reactor;
    auto body = [&]() -> Task<void> {
        Handshake pair = co_await handshake_pair(reactor, client_context(), server_context(), "localhost");
        REQUIRE(pair.client_outcome.ok);
        co_await pair.client.write_all("complete record");
        // A FIN without close_notify. (close() with the server's session
        // tickets unread would send a reset instead: ECONNRESET.)
        pair.client.socket().shutdown(muxio::ShutdownHow::write);
        std::array<std::byte, 64> buffer{};
        CHECK(co_await pair.server.read_some(buffer) == 15);
        bool truncated = false;
        try {
            (void)co_await pair.server.read_some(buffer);
        } catch (const TlsError& error) {
            truncated = true;
            CHECK(error.code() == TlsErrc::truncated);
            CHECK(std::string{error.what()}.find("without close_notify") != std::string::npos);
        }
        CHECK(truncated);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body()));
}

TEST_CASE("a peer that sends half a record and then ends the connection gives a truncation error") {
    FdLeakCheck leak_check;
    Reactor reactor;
    auto body = [&]() -> Task<void> {
        TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
        TcpPair tcp = co_await tcp_pair(reactor, listener);
        TlsStream server = TlsStream::server(std::move(tcp.server), server_context());
        // The client is a TlsEngine driven by hand over the plain stream, so
        // that it can send part of a record.
        muxio::TlsEngine client{client_context(), "localhost"};
        auto client_handshake = [&]() -> Task<void> {
            std::array<std::byte, 4096> incoming{};
            for (int round = 0; round < 20; ++round) {
                const muxio::TlsStatus status = client.handshake();
                REQUIRE(status != muxio::TlsStatus::failed);
                for (auto out = client.output(); !out.empty(); out = client.output()) {
                    co_await tcp.client.write_all(out);
                    client.consume_output(out.size());
                }
                if (status == muxio::TlsStatus::ok) {
                    co_return;
                }
                const std::size_t got = co_await tcp.client.read_some(incoming);
                REQUIRE(got > 0);
                REQUIRE(client.feed(std::span{incoming}.first(got)) == got);
            }
            FAIL("the client's handshake did not end in 20 rounds");
        };
        co_await muxio::when_all(client_handshake(), server.handshake());
        REQUIRE(client.write(bytes("a record cut in two")).status == muxio::TlsStatus::ok);
        const std::span<const std::byte> record = client.output();
        co_await tcp.client.write_all(record.first(record.size() / 2));
        tcp.client.shutdown(muxio::ShutdownHow::write);
        std::array<std::byte, 64> buffer{};
        bool truncated = false;
        try {
            (void)co_await server.read_some(buffer);
        } catch (const TlsError& error) {
            truncated = true;
            CHECK(error.code() == TlsErrc::truncated);
            CHECK(std::string{error.what()}.find("tls read with 127.0.0.1:") == 0);
            CHECK(std::string{error.what()}.find("connection closed without close_notify (truncated)") !=
                  std::string::npos);
        }
        CHECK(truncated);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body()));
}

TEST_CASE("a handshake that stalls is ended by with_timeout, and closing the stream ends the connection") {
    FdLeakCheck leak_check;
    Reactor reactor;
    auto body = [&]() -> Task<void> {
        TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
        TcpPair tcp = co_await tcp_pair(reactor, listener);  // the client sends nothing
        TlsStream server = TlsStream::server(std::move(tcp.server), server_context());
        bool timed_out = false;
        try {
            co_await muxio::with_timeout(reactor, 100ms, server.handshake());
        } catch (const muxio::TimeoutError&) {
            timed_out = true;
        }
        CHECK(timed_out);
        CHECK_FALSE(server.engine().handshake_done());
        server.close();
        CHECK_FALSE(server.is_open());
        std::array<std::byte, 16> buffer{};
        CHECK(co_await tcp.client.read_some(buffer) == 0);  // the server hung up
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body()));
}

TEST_CASE(
    "a write_all cancelled while the peer does not read leaves the stream usable: the peer gets a prefix, then the "
    "rest") {
    FdLeakCheck leak_check;
    Reactor reactor;
    const std::vector<std::byte> payload = pattern(8 << 20, 11);
    auto body = [&]() -> Task<void> {
        Handshake pair = co_await handshake_pair(reactor, client_context(), server_context(), "localhost");
        REQUIRE(pair.client_outcome.ok);
        bool timed_out = false;
        try {
            co_await muxio::with_timeout(reactor, 50ms, pair.client.write_all(payload));
        } catch (const muxio::TimeoutError&) {
            timed_out = true;
        }
        REQUIRE(timed_out);  // the server reads nothing: the socket buffers fill
        auto finish = [&]() -> Task<void> {
            co_await pair.client.write_all("tail");
            co_await pair.client.shutdown();
        };
        auto drain = [&]() -> Task<std::vector<std::byte>> {
            std::vector<std::byte> received;
            std::vector<std::byte> buffer(65536);
            for (;;) {
                const std::size_t got = co_await pair.server.read_some(buffer);
                if (got == 0) {
                    co_return received;
                }
                received.insert(received.end(), buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>(got));
            }
        };
        auto [finished, received] = co_await muxio::when_all(finish(), drain());
        (void)finished;
        REQUIRE(received.size() >= 4);
        const std::size_t prefix = received.size() - 4;
        CHECK(prefix > 0);
        CHECK(prefix < payload.size());
        CHECK(std::equal(received.begin(), received.begin() + static_cast<std::ptrdiff_t>(prefix), payload.begin()));
        CHECK(std::string(reinterpret_cast<const char*>(received.data() + prefix), 4) == "tail");
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
}

TEST_CASE("a handshake cancelled through its stop token throws Cancelled, and may be awaited again") {
    FdLeakCheck leak_check;
    Reactor reactor;
    auto body = [&]() -> Task<void> {
        TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
        TcpPair tcp = co_await tcp_pair(reactor, listener);
        TlsStream client = TlsStream::client(std::move(tcp.client), client_context(), "localhost");
        std::stop_source stop;
        reactor.call_later(20ms, [&stop] { stop.request_stop(); });
        bool cancelled = false;
        try {
            co_await client.handshake(stop.get_token());  // the server does not answer yet
        } catch (const muxio::Cancelled&) {
            cancelled = true;
        }
        CHECK(cancelled);
        TlsStream server = TlsStream::server(std::move(tcp.server), server_context());
        co_await muxio::when_all(client.handshake(), server.handshake());
        CHECK(client.engine().handshake_done());
        CHECK(server.engine().handshake_done());
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body()));
}

TEST_CASE("a client handshake with a server that does not speak TLS fails naming the reason") {
    FdLeakCheck leak_check;
    Reactor reactor;
    auto body = [&]() -> Task<void> {
        TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
        TcpPair tcp = co_await tcp_pair(reactor, listener);
        co_await tcp.server.write_all(bytes("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"));
        TlsStream client = TlsStream::client(std::move(tcp.client), client_context(), "localhost");
        const Outcome outcome = co_await handshake_outcome(client);
        CHECK_FALSE(outcome.ok);
        CHECK(outcome.code == TlsErrc::handshake_failed);
        CHECK(outcome.message.find("wrong version number") != std::string::npos);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body()));
}

TEST_CASE("a peer that closes during the handshake fails it with handshake_failed") {
    FdLeakCheck leak_check;
    Reactor reactor;
    auto body = [&]() -> Task<void> {
        TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
        TcpPair tcp = co_await tcp_pair(reactor, listener);
        tcp.server.close();
        TlsStream client = TlsStream::client(std::move(tcp.client), client_context(), "localhost");
        bool failed = false;
        try {
            co_await client.handshake();
        } catch (const TlsError& error) {
            failed = true;
            CHECK(error.code() == TlsErrc::handshake_failed);
        } catch (const std::system_error& error) {
            failed = true;  // the ClientHello met the reset: the socket's own error
            CHECK(error.code().category() == std::system_category());
        }
        CHECK(failed);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body()));
}

TEST_CASE("a write to a peer that vanished fails with the socket's error instead of hanging") {
    FdLeakCheck leak_check;
    muxio::net_test::DefaultSigpipe sigpipe;
    Reactor reactor;
    const std::vector<std::byte> payload = pattern(8 << 20, 3);
    auto body = [&]() -> Task<void> {
        Handshake pair = co_await handshake_pair(reactor, client_context(), server_context(), "localhost");
        REQUIRE(pair.client_outcome.ok);
        reactor.call_later(10ms, [&pair] { pair.client.close(); });
        bool failed = false;
        try {
            co_await pair.server.write_all(payload);
        } catch (const std::system_error& error) {
            failed = true;
            CHECK(error.code().category() == std::system_category());
            CHECK(std::string{error.what()}.find("tls write with 127.0.0.1:") == 0);
        }
        CHECK(failed);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body()));
}

TEST_CASE("misuse of a TLS stream is a logic_error naming the operation") {
    FdLeakCheck leak_check;
    Reactor reactor;
    auto body = [&]() -> Task<void> {
        TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
        TcpPair tcp = co_await tcp_pair(reactor, listener);
        TlsStream client = TlsStream::client(std::move(tcp.client), client_context(), "localhost");
        TlsStream server = TlsStream::server(std::move(tcp.server), server_context());
        std::array<std::byte, 16> buffer{};
        CHECK_THROWS_WITH_AS(co_await client.read_some(buffer),
                             doctest::Contains("tls read: the handshake is not done"), std::logic_error);
        co_await muxio::when_all(client.handshake(), server.handshake());
        CHECK_THROWS_WITH_AS(co_await client.handshake(), "tls handshake: done already", std::logic_error);
        // A second read while one waits.
        std::stop_source stop;
        bool first_cancelled = false;
        auto first = [&]() -> Task<void> {
            try {
                (void)co_await client.read_some(buffer, stop.get_token());
            } catch (const muxio::Cancelled&) {
                first_cancelled = true;
            }
        };
        muxio::spawn(reactor, first());
        co_await muxio::yield(reactor);
        CHECK_THROWS_WITH_AS(co_await client.read_some(buffer), doctest::Contains("another task is reading"),
                             std::logic_error);
        stop.request_stop();
        for (int i = 0; i < 10 && !first_cancelled; ++i) {
            co_await muxio::yield(reactor);
        }
        CHECK(first_cancelled);
        client.close();
        CHECK_THROWS_WITH_AS(co_await client.write_all("x"), "tls write: TLS stream is closed", std::logic_error);
        TlsStream empty;
        CHECK_FALSE(empty.is_open());
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body()));
}

TEST_CASE("TlsStream::connect resolves, connects and completes the handshake") {
    FdLeakCheck leak_check;
    Reactor reactor;
    auto body = [&]() -> Task<void> {
        TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
        auto serve = [&]() -> Task<std::string> {
            TlsStream server = TlsStream::server(co_await listener.accept(), server_context());
            co_await server.handshake();
            co_return server.server_name();
        };
        auto [client, sni] = co_await muxio::when_all(
            TlsStream::connect(reactor, "127.0.0.1", listener.local_address().port(), client_context()), serve());
        CHECK(client.engine().handshake_done());
        CHECK(sni.empty());
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body()));
}
