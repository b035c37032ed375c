// TLS on the callback Transport and Server (tls_filter()): handshake before
// connection_made(), echo against TlsStream and openssl s_client, clients
// verifying servers, failures (bad certificates, plain text, truncation,
// stalls), back-pressure, pause/resume, close_notify both ways, send_file,
// reentrancy, and allocations once warm.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/combinators.hpp"
#include "muxio/net.hpp"
#include "muxio/run.hpp"
#include "muxio/server.hpp"
#include "muxio/tls.hpp"
#include "muxio/transport.hpp"
#include "net/net_support.hpp"
#include "support/support.hpp"
#include "tls/tls_support.hpp"
#include "transport/transport_support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::Server;
using muxio::ServerOptions;
using muxio::SocketAddress;
using muxio::Task;
using muxio::TcpListener;
using muxio::TcpStream;
using muxio::TlsContext;
using muxio::TlsErrc;
using muxio::TlsError;
using muxio::TlsStream;
using muxio::Transport;
using muxio::TransportOptions;
using muxio::test::bytes_of;
using muxio::test::FdLeakCheck;
using muxio::test::Recorder;
using muxio::test::run_until;
using muxio::tls_test::Child;
using muxio::tls_test::client_context;
using muxio::tls_test::find_program;
using muxio::tls_test::pki;
using muxio::tls_test::server_context;

namespace {

// What a server's protocols were told, kept after the server freed them.
struct Events {
    int made = 0;
    int lost = 0;
    int eofs = 0;
    std::vector<std::error_code> reasons;
    std::string received;
    std::string server_name;
    std::string version;
};

// A protocol factory for a Server: each connection a Recorder that echoes
// (unless `echo` is false) and reports to `events`.
Server::ProtocolFactory recording_factory(Events& events, bool echo = true) {
    return [&events, echo](const SocketAddress&) {
        auto protocol = std::make_unique<Recorder>();
        protocol->echo = echo;
        protocol->on_made = [&events](Recorder& self) {
            ++events.made;
            if (const muxio::TlsEngine* engine = muxio::tls_engine(*self.transport); engine != nullptr) {
                events.server_name = engine->server_name();
                events.version = engine->protocol_version();
            }
        };
        protocol->on_lost = [&events](Recorder& self) {
            ++events.lost;
            events.eofs += self.eofs;
            events.reasons.push_back(self.reason.value_or(std::error_code{}));
            events.received += self.received;
        };
        return protocol;
    };
}

ServerOptions tls_server_options(const TlsContext& context = server_context()) {
    ServerOptions options;
    options.transport.filter = muxio::tls_filter(context);
    return options;
}

// Reads from `stream` until `size` bytes came or the stream ended.
Task<std::string> read_bytes(TlsStream& stream, std::size_t size) {
    std::string text;
    std::array<std::byte, 16384> buffer{};
    while (text.size() < size) {
        const std::size_t got = co_await stream.read_some(buffer);
        if (got == 0) {
            break;
        }
        text.append(reinterpret_cast<const char*>(buffer.data()), got);
    }
    co_return text;
}

// A TLS client over a fresh TCP connection to `address`, handshake done.
Task<TlsStream> tls_client(Reactor& reactor, const SocketAddress& address) {
    TlsStream client = TlsStream::client(co_await TcpStream::connect(reactor, address), client_context(), "localhost");
    co_await client.handshake();
    co_return client;
}

bool have(const std::string& program) {
    if (program.empty()) {
        MESSAGE("skipped: the program is not installed (bash scripts/setup.sh installs it)");
        return false;
    }
    return true;
}

}  // namespace

// ----- Server side --------------------------------------------------------------

TEST_CASE(
    "a TLS Server runs the handshake before connection_made, echoes to a TlsStream client and answers its "
    "close_notify with its own") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Events events;
    Server server{reactor, recording_factory(events), tls_server_options()};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    auto body = [&]() -> Task<std::string> {
        TlsStream client = co_await tls_client(reactor, address);
        co_await client.write_all("hello over tls");
        std::string echoed = co_await read_bytes(client, 14);
        co_await client.shutdown();
        std::array<std::byte, 64> buffer{};
        CHECK(co_await client.read_some(buffer) == 0);  // the server's close_notify
        co_return echoed;
    };
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body())) == "hello over tls");
    REQUIRE(run_until(reactor, [&] { return events.lost == 1; }));
    CHECK(events.made == 1);
    CHECK(events.eofs == 1);
    CHECK(events.reasons[0] == std::error_code{});
    CHECK(events.server_name == "localhost");
    CHECK(events.version == "TLSv1.3");
    CHECK(server.connection_count() == 0);
}

TEST_CASE("openssl s_client verifies a TLS Server's certificate and gets its echo") {
    FdLeakCheck leak_check;
    const std::string openssl = find_program("openssl");
    if (!have(openssl)) {
        return;
    }
    Reactor reactor;
    Events events;
    Server server{reactor, recording_factory(events), tls_server_options()};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    Child client{{openssl, "s_client", "-connect", "127.0.0.1:" + std::to_string(address.port()), "-servername",
                  "localhost", "-CAfile", pki().ca, "-verify_return_error", "-verify_hostname", "localhost"}};
    auto drive = [&]() -> Task<int> {
        CHECK(co_await client.read_until(reactor, "Verify return code: 0 (ok)"));
        client.write("hello from s_client\n");
        const std::size_t from = client.output().size();
        CHECK(co_await client.read_until(reactor, "hello from s_client", from));
        client.close_input();  // s_client sends close_notify and exits
        co_return co_await client.wait(reactor);
    };
    const int status = muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, drive()));
    CHECK(status == 0);
    REQUIRE(run_until(reactor, [&] { return events.lost == 1; }));
    CHECK(events.made == 1);
    CHECK(events.received == "hello from s_client\n");
    CHECK(events.reasons[0] == std::error_code{});
}

TEST_CASE(
    "plain-text HTTP to a TLS Server ends with handshake_failed and no connection_made, and the server serves the "
    "next client") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Events events;
    Server server{reactor, recording_factory(events), tls_server_options()};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    auto body = [&]() -> Task<std::string> {
        TcpStream plain = co_await TcpStream::connect(reactor, address);
        co_await plain.write_all(std::string_view{"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"});
        std::array<std::byte, 256> buffer{};
        try {
            while (co_await plain.read_some(buffer) > 0) {
                // the alert, then the end
            }
        } catch (const std::system_error&) {
            // ECONNRESET: as good an end
        }
        TlsStream client = co_await tls_client(reactor, address);
        co_await client.write_all("still serving");
        co_return co_await read_bytes(client, 13);
    };
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body())) == "still serving");
    REQUIRE(run_until(reactor, [&] { return events.lost >= 1; }));
    CHECK(events.made == 1);
    CHECK(events.reasons[0] == TlsErrc::handshake_failed);
}

// ----- Client side --------------------------------------------------------------

namespace {

TransportOptions tls_client_options(const TlsContext& context = client_context(), std::string name = "localhost") {
    TransportOptions options;
    options.filter = muxio::tls_filter(context, std::move(name));
    return options;
}

// Accepts one connection and runs a TlsStream server's handshake with
// `context`: the error code it ended with (empty: it completed).
Task<std::error_code> serve_handshake(TcpListener& listener, const TlsContext& context) {
    TlsStream server = TlsStream::server(co_await listener.accept(), context);
    try {
        co_await server.handshake();
    } catch (const TlsError& error) {
        co_return error.code();
    }
    co_return std::error_code{};
}

}  // namespace

TEST_CASE(
    "a TLS client transport sends what it wrote before the handshake first, then talks to a TlsStream server "
    "and ends with close_notify both ways") {
    FdLeakCheck leak_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
    Recorder client;
    std::string alpn;
    client.on_made = [&](Recorder& self) {
        const muxio::TlsEngine* engine = muxio::tls_engine(*self.transport);
        REQUIRE(engine != nullptr);
        alpn = engine->alpn_protocol();
        self.transport->write("ping");
    };
    // Made outside the coroutine: GCC 12 cannot keep an initializer list's array in a coroutine frame.
    const TlsContext alpn_context = muxio::tls_test::alpn_server_context({"m/1"});
    auto serve = [&]() -> Task<std::string> {
        TlsStream server = TlsStream::server(co_await listener.accept(), alpn_context);
        co_await server.handshake();
        std::string got = co_await read_bytes(server, 10);
        co_await server.write_all("pong");
        co_await server.shutdown();
        std::array<std::byte, 64> buffer{};
        CHECK(co_await server.read_some(buffer) == 0);  // the client's close_notify
        co_return got;
    };
    std::unique_ptr<Transport> transport =
        Transport::connect(reactor, listener.local_address(), client, tls_client_options(client_context({"m/1"})));
    transport->write("early ");
    CHECK(muxio::tls_engine(*transport) != nullptr);
    CHECK(client.made == 0);
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, serve())) == "early ping");
    REQUIRE(run_until(reactor, [&] { return client.lost == 1; }));
    CHECK(client.made == 1);
    CHECK(client.received == "pong");
    CHECK(client.eofs == 1);
    CHECK(*client.reason == std::error_code{});
    CHECK(alpn == "m/1");
}

TEST_CASE(
    "a TLS client transport refuses a self-signed server certificate: connection_lost(certificate_verify_failed) "
    "and no connection_made") {
    FdLeakCheck leak_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
    Recorder client;
    std::unique_ptr<Transport> transport =
        Transport::connect(reactor, listener.local_address(), client, tls_client_options());
    const std::error_code server_end = muxio::run_until_complete(
        reactor, muxio::with_timeout(reactor, 20s, serve_handshake(listener, server_context(pki().self_signed))));
    CHECK(server_end == TlsErrc::handshake_failed);  // the client's alert
    REQUIRE(run_until(reactor, [&] { return client.lost == 1; }));
    CHECK(client.made == 0);
    CHECK(*client.reason == TlsErrc::certificate_verify_failed);
}

TEST_CASE("a TLS client transport refuses a certificate for another name: connection_lost(hostname_mismatch)") {
    FdLeakCheck leak_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
    Recorder client;
    std::unique_ptr<Transport> transport =
        Transport::connect(reactor, listener.local_address(), client, tls_client_options());
    (void)muxio::run_until_complete(
        reactor, muxio::with_timeout(reactor, 20s, serve_handshake(listener, server_context(pki().other_name))));
    REQUIRE(run_until(reactor, [&] { return client.lost == 1; }));
    CHECK(client.made == 0);
    CHECK(*client.reason == TlsErrc::hostname_mismatch);
}

TEST_CASE("tls_filter refuses a verifying client context without a server name at once") {
    CHECK_THROWS_AS((void)muxio::tls_filter(client_context()), std::invalid_argument);
    CHECK_NOTHROW((void)muxio::tls_filter(server_context()));
}

TEST_CASE("tls_engine of a plain transport is null") {
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
    Recorder client;
    std::unique_ptr<Transport> transport = Transport::connect(reactor, listener.local_address(), client);
    CHECK(muxio::tls_engine(*transport) == nullptr);
    CHECK(transport->filter() == nullptr);
}

// ----- Failures, back-pressure, reentrancy ----------------------------------------

namespace {

std::string text_of(const std::vector<std::byte>& data) {
    return {reinterpret_cast<const char*>(data.data()), data.size()};
}

}  // namespace

TEST_CASE(
    "a TLS handshake that stalls ends at handshake_timeout with ETIMEDOUT and no connection_made, and the server "
    "keeps serving others") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Events events;
    ServerOptions options = tls_server_options();
    options.transport.handshake_timeout = 200ms;
    Server server{reactor, recording_factory(events), options};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    auto body = [&]() -> Task<std::string> {
        TcpStream silent = co_await TcpStream::connect(reactor, address);  // says nothing
        TlsStream client = co_await tls_client(reactor, address);
        co_await client.write_all("served");
        std::string echoed = co_await read_bytes(client, 6);
        std::array<std::byte, 16> buffer{};
        CHECK(co_await silent.read_some(buffer) == 0);  // closed by the server at the timeout
        co_return echoed;
    };
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body())) == "served");
    REQUIRE(run_until(reactor, [&] { return events.lost == 2; }));
    CHECK(events.made == 1);
    CHECK(std::count(events.reasons.begin(), events.reasons.end(), std::errc::timed_out) == 1);
}

TEST_CASE("a peer that sends half a TLS record and closes ends the connection with truncated") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Events events;
    Server server{reactor, recording_factory(events), tls_server_options()};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    auto body = [&]() -> Task<void> {
        TlsStream client = co_await tls_client(reactor, address);
        // An application-data record header announcing 100 bytes, and 10 of them.
        const std::array<unsigned char, 15> half{0x17, 0x03, 0x03, 0x00, 0x64, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
        co_await client.socket().write_all(std::as_bytes(std::span{half}));
        // The stream ends there. The client reads on until the server
        // closes: a close over the server's unread session tickets would
        // reset the connection, and the server would hear a reset, not the
        // end it is meant to hear.
        client.socket().shutdown();
        std::array<std::byte, 4096> sink{};
        try {
            while (co_await client.socket().read_some(sink) != 0) {
            }
        } catch (const std::system_error&) {
        }
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body()));
    REQUIRE(run_until(reactor, [&] { return events.lost == 1; }));
    CHECK(events.made == 1);
    CHECK(events.eofs == 0);
    CHECK(events.reasons[0] == TlsErrc::truncated);
}

TEST_CASE("a slow TLS reader makes the writer hit the high water mark, and resume_writing comes once it reads") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Recorder* writer = nullptr;
    std::string sent;
    bool resumed = false;
    const std::vector<std::byte> chunk = muxio::net_test::pattern(std::size_t{64} * 1024, 7);
    Server server{reactor,
                  [&](const SocketAddress&) {
                      auto protocol = std::make_unique<Recorder>();
                      writer = protocol.get();
                      protocol->on_made = [&](Recorder& self) {
                          // Until the kernel and the queue are full: the pause comes from inside write().
                          for (int i = 0; i < 2000 && self.pauses == 0; ++i) {
                              self.transport->write(chunk);
                              sent += text_of(chunk);
                          }
                      };
                      protocol->on_resume = [&](Recorder& self) {
                          resumed = true;
                          self.transport->close();
                      };
                      protocol->on_lost = [&](Recorder&) { writer = nullptr; };
                      return protocol;
                  },
                  tls_server_options()};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    TlsStream client =
        muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, tls_client(reactor, address)));
    REQUIRE(run_until(reactor, [&] { return writer != nullptr && writer->pauses == 1; }));
    CHECK(writer->transport->writing_paused());
    CHECK(writer->transport->write_buffer_size() > writer->transport->high_water());
    CHECK_FALSE(resumed);
    const std::string got =
        muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, read_bytes(client, sent.size() + 1)));
    CHECK(resumed);
    CHECK(got.size() == sent.size());
    CHECK(got == sent);
}

namespace {

// Reads a few bytes at a time into its own buffer (so the filter holds the
// rest of a record), and pauses reading after the first.
struct SmallReads : Recorder {
    std::array<std::byte, 4> space{};
    std::span<std::byte> get_buffer(std::size_t) override { return space; }
};

}  // namespace

TEST_CASE(
    "pause_reading holds back plaintext the TLS filter decrypted, and resume_reading delivers it without new "
    "readiness") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Transport* server_side = nullptr;
    std::string received;
    Server server{reactor,
                  [&](const SocketAddress&) {
                      auto protocol = std::make_unique<SmallReads>();
                      protocol->on_made = [&](Recorder& self) { server_side = self.transport; };
                      protocol->on_data = [&](Recorder& self, std::span<const std::byte> data) {
                          received.append(reinterpret_cast<const char*>(data.data()), data.size());
                          self.transport->pause_reading();
                      };
                      return protocol;
                  },
                  tls_server_options()};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    auto body = [&]() -> Task<TlsStream> {
        TlsStream client = co_await tls_client(reactor, address);
        co_await client.write_all("one record of twenty");
        co_return client;
    };
    TlsStream client = muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body()));
    REQUIRE(run_until(reactor, [&] { return received.size() == 4; }));
    for (int i = 0; i < 20; ++i) {
        reactor.run_once(std::chrono::milliseconds{0});
    }
    CHECK(received == "one ");
    REQUIRE(server_side != nullptr);
    CHECK_FALSE(server_side->is_reading());
    // Each resume delivers four more bytes (and pauses again), from the filter alone.
    for (int i = 0; i < 4 && received.size() < 20; ++i) {
        const std::size_t before = received.size();
        server_side->resume_reading();
        REQUIRE(run_until(reactor, [&] { return received.size() > before; }));
    }
    CHECK(received == "one record of twenty");
}

TEST_CASE("several megabytes go both ways intact through a TLS Server's echo") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Events events;
    Server server{reactor, recording_factory(events), tls_server_options()};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    const std::vector<std::byte> payload = muxio::net_test::pattern(std::size_t{6} * 1024 * 1024 + 77, 3);
    auto body = [&]() -> Task<std::string> {
        TlsStream client = co_await tls_client(reactor, address);
        auto send = [&]() -> Task<void> { co_await client.write_all(payload); };
        auto [ignored, echoed] = co_await muxio::when_all(send(), read_bytes(client, payload.size()));
        (void)ignored;
        co_return echoed;
    };
    const std::string echoed = muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 60s, body()));
    CHECK(echoed.size() == payload.size());
    CHECK(echoed == text_of(payload));
    REQUIRE(run_until(reactor, [&] { return events.lost == 1; }));
    CHECK(events.reasons[0] == TlsErrc::truncated);  // the client closed without close_notify
}

TEST_CASE("a TLS transport closed from data_received and destroyed from connection_lost ends once, cleanly") {
    FdLeakCheck leak_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
    Recorder client;
    std::unique_ptr<Transport> transport;
    client.on_made = [](Recorder& self) { self.transport->write("question"); };
    client.on_data = [](Recorder& self, std::span<const std::byte>) {
        self.transport->close();
        self.transport->close();  // harmless twice
    };
    client.on_lost = [&](Recorder&) { transport.reset(); };
    auto serve = [&]() -> Task<std::string> {
        TlsStream server = TlsStream::server(co_await listener.accept(), server_context());
        co_await server.handshake();
        std::string got = co_await read_bytes(server, 8);
        co_await server.write_all("answer");
        std::array<std::byte, 64> buffer{};
        CHECK(co_await server.read_some(buffer) == 0);  // the client's close_notify
        co_return got;
    };
    transport = Transport::connect(reactor, listener.local_address(), client, tls_client_options());
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, serve())) == "question");
    REQUIRE(run_until(reactor, [&] { return client.lost == 1; }));
    CHECK(transport == nullptr);
    CHECK(client.received == "answer");
    CHECK(*client.reason == std::error_code{});
}

TEST_CASE("a TLS Server protocol that half-closes on the peer's close_notify may still answer, then sends its own") {
    FdLeakCheck leak_check;
    Reactor reactor;
    int eofs = 0;
    // eof_received() is where the answer is written: a protocol of its own.
    struct Answering : Recorder {
        int* eofs_seen = nullptr;
        bool eof_received() override {
            ++*eofs_seen;
            transport->write("got " + received);
            transport->close();
            return true;
        }
    };
    Server answering{reactor,
                     [&](const SocketAddress&) {
                         auto protocol = std::make_unique<Answering>();
                         protocol->eofs_seen = &eofs;
                         return protocol;
                     },
                     tls_server_options()};
    const SocketAddress address = answering.listen("127.0.0.1", 0);
    auto body = [&]() -> Task<std::string> {
        TlsStream client = co_await tls_client(reactor, address);
        co_await client.write_all("request");
        co_await client.shutdown();                   // close_notify: the server's end of stream
        co_return co_await read_bytes(client, 1000);  // to the server's close_notify
    };
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body())) == "got request");
    CHECK(eofs == 1);
}

TEST_CASE("send_file over TLS sends the file's bytes between what was written before and after it") {
    FdLeakCheck leak_check;
    Reactor reactor;
    const std::vector<std::byte> content = muxio::net_test::pattern(std::size_t{3} * 1024 * 1024 + 5, 11);
    const std::string path = (pki().directory / "send_file.bin").string();
    {
        const int out = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        REQUIRE(out >= 0);
        muxio::test::write_all(out, text_of(content));
        ::close(out);
    }
    Server server{reactor,
                  [&](const SocketAddress&) {
                      auto protocol = std::make_unique<Recorder>();
                      protocol->on_made = [&](Recorder& self) {
                          self.transport->write("head|");
                          const int file = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
                          self.transport->send_file(file, 1, content.size() - 1);
                          self.transport->write("|tail");
                          self.transport->close();
                      };
                      return protocol;
                  },
                  tls_server_options()};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    auto body = [&]() -> Task<std::string> {
        TlsStream client = co_await tls_client(reactor, address);
        co_return co_await read_bytes(client, content.size() + 100);
    };
    const std::string got = muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
    CHECK(got.size() == content.size() - 1 + 10);
    CHECK(got == "head|" + text_of(content).substr(1) + "|tail");
    ::unlink(path.c_str());
}

TEST_CASE("send_file over TLS of a file shorter than promised ends the connection with ENODATA") {
    FdLeakCheck leak_check;
    Reactor reactor;
    const std::string path = (pki().directory / "short.bin").string();
    {
        const int out = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        REQUIRE(out >= 0);
        muxio::test::write_all(out, "short");
        ::close(out);
    }
    Events events;
    Server server{reactor,
                  [&](const SocketAddress&) {
                      auto protocol = std::make_unique<Recorder>();
                      protocol->on_made = [&](Recorder& self) {
                          self.transport->send_file(::open(path.c_str(), O_RDONLY | O_CLOEXEC), 0, 100);
                      };
                      protocol->on_lost = [&](Recorder& self) { events.reasons.push_back(*self.reason); };
                      return protocol;
                  },
                  tls_server_options()};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    TlsStream client =
        muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, tls_client(reactor, address)));
    REQUIRE(run_until(reactor, [&] { return events.reasons.size() == 1; }));
    CHECK(events.reasons[0] == std::errc::no_message_available);
    ::unlink(path.c_str());
}

TEST_CASE(
    "a TLS transport still handshaking when its reactor closes gets connection_lost(ECANCELED) and no "
    "connection_made") {
    FdLeakCheck leak_check;
    Recorder client;
    std::unique_ptr<Transport> transport;
    {
        Reactor reactor;
        // The kernel completes the TCP handshake; nobody answers the TLS one.
        TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
        transport = Transport::connect(reactor, listener.local_address(), client, tls_client_options());
        for (int i = 0; i < 5; ++i) {
            reactor.run_once(std::chrono::milliseconds{10});
        }
        CHECK(client.lost == 0);
        reactor.close();
        CHECK(client.lost == 1);
    }
    CHECK(client.made == 0);
    CHECK(*client.reason == std::errc::operation_canceled);
    transport.reset();
}

// ----- Allocations --------------------------------------------------------------

// The counter sees operator new, that is muxio's and the protocols'
// allocations. OpenSSL's own mallocs escape it: OpenSSL 3.0 makes a few per
// record in its record layer (WPACKET, crypto/packet.c), out of muxio's reach.
TEST_CASE(
    "an echo over TLS between a client transport and a TLS Server makes no C++ allocation per message once warm") {
    FdLeakCheck leak_check;
    if (!muxio::test::counts_allocations) {
        return;
    }
    Reactor reactor;
    Server server{reactor,
                  [](const SocketAddress&) {
                      auto protocol = std::make_unique<Recorder>();
                      protocol->echo = true;
                      protocol->received.reserve(std::size_t{1} << 20U);
                      return protocol;
                  },
                  tls_server_options()};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    Recorder client;
    client.received.reserve(std::size_t{1} << 20U);
    std::unique_ptr<Transport> transport = Transport::connect(reactor, address, client, tls_client_options());
    REQUIRE(run_until(reactor, [&] { return client.made == 1; }));
    const std::string message(64, 'm');
    // Plain loops: run_until's std::function may allocate for its captures.
    const auto round_trips = [&](int count) {
        for (int i = 0; i < count; ++i) {
            const std::size_t want = client.received.size() + message.size();
            transport->write(message);
            for (int turn = 0; turn < 1000 && client.received.size() < want; ++turn) {
                reactor.run_once(std::chrono::milliseconds{50});
            }
            if (client.received.size() < want) {
                return false;
            }
        }
        return true;
    };
    REQUIRE(round_trips(200));
    const std::size_t before = muxio::test::allocation_count();
    REQUIRE(round_trips(200));
    const std::size_t allocations = muxio::test::allocation_count() - before;
    MESSAGE("allocations per echoed message once warm: ", static_cast<double>(allocations) / 200);
    CHECK(allocations == 0);
    transport->close();
    REQUIRE(run_until(reactor, [&] { return client.lost == 1; }));
}

// ----- The extension point and misuse -----------------------------------------------

namespace {

// A filter of a test's own: no handshake, each byte XORed with a key. It
// shows that TransportFilter needs nothing of TLS.
class XorFilter final : public muxio::TransportFilter {
public:
    Status handshake() noexcept override { return Status::ok; }
    Result read(std::span<std::byte> buffer) noexcept override {
        if (in_.empty()) {
            return {0, ended_ ? Status::closed : Status::want_input};
        }
        const std::size_t size = std::min(buffer.size(), in_.size());
        for (std::size_t i = 0; i < size; ++i) {
            buffer[i] = in_[i] ^ key;
        }
        in_.erase(0, size);
        return {size, Status::ok};
    }
    Result write(std::span<const std::byte> buffer) noexcept override {
        for (const std::byte b : buffer) {
            out_.push_back(b ^ key);
        }
        return {buffer.size(), Status::ok};
    }
    Status shutdown() noexcept override { return Status::ok; }
    std::span<std::byte> input_space() noexcept override { return space_; }
    void commit_input(std::size_t size) noexcept override { in_.append(space_.data(), size); }
    void input_ended() noexcept override { ended_ = true; }
    std::span<const std::byte> output() noexcept override { return {out_.data(), out_.size()}; }
    void consume_output(std::size_t size) noexcept override { out_.erase(0, size); }
    [[nodiscard]] std::error_code error() const noexcept override { return {}; }

    static constexpr std::byte key{0x5a};

private:
    std::array<std::byte, 4096> space_{};
    std::basic_string<std::byte> in_;
    std::basic_string<std::byte> out_;
    bool ended_ = false;
};

}  // namespace

TEST_CASE("a TransportFilter of one's own (XOR) sits between the socket and the protocol of a client and a server") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Events events;
    ServerOptions options;
    options.transport.filter = [] { return std::make_unique<XorFilter>(); };
    Server server{reactor, recording_factory(events), options};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    Recorder client;
    client.on_made = [](Recorder& self) {
        CHECK(muxio::tls_engine(*self.transport) == nullptr);
        CHECK(self.transport->filter() != nullptr);
        self.transport->write("scrambled both ways");
    };
    client.on_data = [](Recorder& self, std::span<const std::byte>) {
        if (self.received.size() == 19) {
            self.transport->close();
        }
    };
    TransportOptions client_options;
    client_options.filter = [] { return std::make_unique<XorFilter>(); };
    std::unique_ptr<Transport> transport = Transport::connect(reactor, address, client, client_options);
    REQUIRE(run_until(reactor, [&] { return client.lost == 1 && events.lost == 1; }));
    CHECK(client.received == "scrambled both ways");
    CHECK(events.received == "scrambled both ways");
    CHECK(*client.reason == std::error_code{});
}

TEST_CASE("a filter factory that returns no filter refuses the transport with std::invalid_argument") {
    FdLeakCheck leak_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
    Recorder client;
    TransportOptions options;
    options.filter = [] { return std::unique_ptr<muxio::TransportFilter>{}; };
    CHECK_THROWS_AS((void)Transport::connect(reactor, listener.local_address(), client, options),
                    std::invalid_argument);
}

TEST_CASE(
    "an exception from data_received over TLS aborts the connection with ECONNABORTED and reaches the reactor's "
    "handler") {
    FdLeakCheck leak_check;
    Reactor reactor;
    int handled = 0;
    reactor.set_exception_handler([&](std::exception_ptr) { ++handled; });
    Events events;
    Server server{reactor,
                  [&](const SocketAddress& peer) {
                      auto protocol = recording_factory(events)(peer);
                      static_cast<Recorder&>(*protocol).on_data = [](Recorder&, std::span<const std::byte>) {
                          throw std::runtime_error("the protocol gave up");
                      };
                      return protocol;
                  },
                  tls_server_options()};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    auto body = [&]() -> Task<void> {
        TlsStream client = co_await tls_client(reactor, address);
        co_await client.write_all("boom");
        std::array<std::byte, 64> buffer{};
        try {
            (void)co_await client.read_some(buffer);
        } catch (const std::exception&) {
            // truncated or reset: the server aborted without close_notify
        }
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body()));
    REQUIRE(run_until(reactor, [&] { return events.lost == 1; }));
    CHECK(events.reasons[0] == std::errc::connection_aborted);
    CHECK(handled == 1);
}

TEST_CASE("a TLS Server counts connections still handshaking against max_connections") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Events events;
    ServerOptions options = tls_server_options();
    options.max_connections = 1;
    Server server{reactor, recording_factory(events), options};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    auto body = [&]() -> Task<bool> {
        TcpStream silent = co_await TcpStream::connect(reactor, address);
        TlsStream second =
            TlsStream::client(co_await TcpStream::connect(reactor, address), client_context(), "localhost");
        try {
            co_await second.handshake();  // refused: closed at once
        } catch (const std::exception&) {
            co_return true;
        }
        co_return false;
    };
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20s, body())));
    CHECK(server.stats().refused == 1);
    CHECK(events.made == 0);
}

TEST_CASE(
    "write_drained over TLS comes once the protocol's queued bytes are out, and a close() from it sends "
    "close_notify") {
    FdLeakCheck leak_check;
    Reactor reactor;
    struct Drained : Recorder {
        int* drained = nullptr;
        void write_drained() override {
            ++*drained;
            transport->close();
        }
    };
    int drained = 0;
    const std::vector<std::byte> payload = muxio::net_test::pattern(std::size_t{4} * 1024 * 1024, 5);
    Server server{reactor,
                  [&](const SocketAddress&) {
                      auto protocol = std::make_unique<Drained>();
                      protocol->drained = &drained;
                      protocol->on_made = [&](Recorder& self) { self.transport->write(payload); };
                      return protocol;
                  },
                  tls_server_options()};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    auto body = [&]() -> Task<std::string> {
        TlsStream client = co_await tls_client(reactor, address);
        co_return co_await read_bytes(client, payload.size() + 1);  // to the close_notify
    };
    const std::string got = muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
    CHECK(got == text_of(payload));
    CHECK(drained == 1);
}

// ----- Misuse and ending ----------------------------------------------------------

namespace {

// The message of the std::logic_error `call` throws; "no throw" or "other
// exception" otherwise.
std::string refusal_of(const std::function<void()>& call) {
    try {
        call();
        return "no throw";
    } catch (const std::logic_error& refusal) {
        return refusal.what();
    } catch (...) {
        return "other exception";
    }
}

// Forks; the child runs `calls`, each of which must throw the fork error,
// and exits with 0, or 1 if one did not. Waits at most 10 s for it.
int fork_error_in_child(const std::vector<std::function<void()>>& calls) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int code = 0;
        for (const auto& call : calls) {
            if (refusal_of(call).find("fork") == std::string::npos) {
                code = 1;
            }
        }
        ::_exit(code);
    }
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    REQUIRE(pidfd >= 0);
    const muxio::test::UniqueFd owned{pidfd};
    pollfd watch{pidfd, POLLIN, 0};
    int ready = 0;
    do {
        ready = ::poll(&watch, 1, 10'000);
    } while (ready == -1 && errno == EINTR);
    if (ready != 1) {
        ::kill(pid, SIGKILL);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE_MESSAGE(ready == 1, "the child did not exit in time");
    REQUIRE(WIFEXITED(status));
    return WEXITSTATUS(status);
}

}  // namespace

TEST_CASE(
    "a TLS transport's write and close in a child forked after the reactor was made throw the fork error, and the "
    "server reads the parent's bytes only") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Events events;
    Server server{reactor, recording_factory(events, false), tls_server_options()};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    Recorder client;
    std::unique_ptr<Transport> transport = Transport::connect(reactor, address, client, tls_client_options());
    REQUIRE(run_until(reactor, [&] { return client.made == 1 && events.made == 1; }));
    CHECK(fork_error_in_child({
              [&] { transport->write("child"); },
              [&] { transport->close(); },
          }) == 0);
    transport->write("parent");
    transport->close();
    REQUIRE(run_until(reactor, [&] { return client.lost == 1 && events.lost == 1; }));
    CHECK(*client.reason == std::error_code{});
    CHECK(events.received == "parent");
    REQUIRE(events.reasons.size() == 1);
    CHECK(events.reasons[0] == std::error_code{});
}

TEST_CASE("write after close over TLS throws std::logic_error, with an empty queue and with queued bytes") {
    FdLeakCheck leak_check;
    Reactor reactor;
    const std::vector<std::byte> payload = muxio::net_test::pattern(std::size_t{4} * 1024 * 1024, 9);
    for (const bool queued : {false, true}) {
        CAPTURE(queued);
        std::string refusal;
        bool closed_at_once = false;
        Events events;
        Server server{reactor,
                      [&](const SocketAddress& peer) {
                          auto protocol = recording_factory(events, false)(peer);
                          auto& recorder = static_cast<Recorder&>(*protocol);
                          recorder.on_made = [&](Recorder& self) {
                              if (queued) {
                                  self.transport->write(payload);
                              }
                              self.transport->close();
                              closed_at_once = self.transport->is_closed();
                              refusal = refusal_of([&] { self.transport->write("late"); });
                          };
                          return protocol;
                      },
                      tls_server_options()};
        const SocketAddress address = server.listen("127.0.0.1", 0);
        auto body = [&]() -> Task<std::string> {
            TlsStream client = co_await tls_client(reactor, address);
            co_return co_await read_bytes(client, payload.size() + 1);  // to the close_notify
        };
        const std::string got = muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
        CHECK(got == (queued ? text_of(payload) : std::string{}));
        CHECK(closed_at_once == !queued);
        CHECK(refusal.find("Transport::write") != std::string::npos);
        REQUIRE(run_until(reactor, [&] { return events.lost == 1; }));
        CHECK(events.reasons[0] == std::error_code{});
    }
}

TEST_CASE(
    "Server::shutdown ends a TLS connection still waiting for its handshake at once, without a handshake timeout: "
    "ECONNABORTED and no connection_made") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Events events;
    ServerOptions options = tls_server_options();
    options.transport.handshake_timeout = 0s;
    Server server{reactor, recording_factory(events), options};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    const muxio::test::UniqueFd silent{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    REQUIRE(silent.get() >= 0);
    REQUIRE(::connect(silent.get(), address.data(), address.size()) == 0);
    REQUIRE(run_until(reactor, [&] { return server.connection_count() == 1; }));
    reactor.run_once(0ms);  // the handshake began: the server waits for the ClientHello
    bool drained = false;
    server.shutdown([&] { drained = true; });
    REQUIRE(run_until(
        reactor, [&] { return drained; }, 5));
    CHECK(server.connection_count() == 0);
    CHECK(events.made == 0);
    REQUIRE(events.reasons.size() == 1);
    CHECK(events.reasons[0] == std::errc::connection_aborted);
    std::array<char, 16> buffer{};
    CHECK(::recv(silent.get(), buffer.data(), buffer.size(), 0) <= 0);  // the end of the stream (or a reset)
}

TEST_CASE(
    "a TLS client that writes and closes at once ends the server's connection cleanly: the payload, eof_received "
    "and an empty reason") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Events events;
    Server server{reactor, recording_factory(events, false), tls_server_options()};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    constexpr int rounds = 8;
    for (int round = 1; round <= rounds; ++round) {
        CAPTURE(round);
        Recorder client;
        client.on_made = [](Recorder& self) {
            self.transport->write("payload");
            self.transport->close();
        };
        std::unique_ptr<Transport> transport = Transport::connect(reactor, address, client, tls_client_options());
        REQUIRE(run_until(reactor, [&] { return client.lost == 1 && events.lost == round; }));
        CHECK(*client.reason == std::error_code{});
        REQUIRE(events.reasons.size() == static_cast<std::size_t>(round));
        CHECK(events.reasons.back() == std::error_code{});
        CHECK(events.eofs == round);
    }
    std::string all;
    for (int i = 0; i < rounds; ++i) {
        all += "payload";
    }
    CHECK(events.received == all);
}
