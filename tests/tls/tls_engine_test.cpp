// TlsEngine on its own, driven through memory with no socket: the state
// machine the streams (and a callback transport) drive.
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/tls.hpp"
#include "net/net_support.hpp"
#include "tls/tls_support.hpp"

using muxio::TlsEngine;
using muxio::TlsErrc;
using muxio::TlsStatus;
using muxio::net_test::bytes;
using muxio::net_test::pattern;

namespace {

// Moves every byte `from` has for the network into `to`; returns the count.
std::size_t pump(TlsEngine& from, TlsEngine& to) {
    std::size_t moved = 0;
    for (int i = 0; i < 1000; ++i) {
        const std::span<const std::byte> output = from.output();
        if (output.empty()) {
            break;
        }
        const std::size_t taken = to.feed(output);
        from.consume_output(taken);
        moved += taken;
        if (taken == 0) {
            break;  // `to` is full: it must read first
        }
    }
    return moved;
}

void handshake(TlsEngine& client, TlsEngine& server) {
    for (int round = 0; round < 20; ++round) {
        const TlsStatus c = client.handshake();
        REQUIRE(c != TlsStatus::failed);
        pump(client, server);
        const TlsStatus s = server.handshake();
        REQUIRE(s != TlsStatus::failed);
        pump(server, client);
        if (c == TlsStatus::ok && s == TlsStatus::ok) {
            return;
        }
    }
    FAIL("the handshake did not end in 20 rounds");
}

}  // namespace

TEST_CASE("two engines complete a handshake and exchange data through memory alone") {
    TlsEngine client{muxio::tls_test::client_context({"muxio/1"}), "localhost"};
    TlsEngine server{muxio::tls_test::alpn_server_context({"muxio/1"})};
    CHECK(client.role() == muxio::TlsRole::client);
    CHECK(server.role() == muxio::TlsRole::server);
    CHECK(client.handshake() == TlsStatus::want_input);  // the ClientHello is out, the answer not in
    CHECK(client.output_pending() > 0);
    handshake(client, server);
    CHECK(client.handshake_done());
    CHECK(server.handshake_done());
    CHECK(server.server_name() == "localhost");
    CHECK(client.alpn_protocol() == "muxio/1");

    const muxio::TlsResult written = client.write(bytes("ping"));
    CHECK(written.status == TlsStatus::ok);
    CHECK(written.bytes == 4);
    pump(client, server);
    std::vector<std::byte> buffer(64);
    // The server's first reads may take the client's post-handshake messages.
    muxio::TlsResult read{};
    for (int i = 0; i < 5 && read.bytes == 0; ++i) {
        read = server.read(buffer);
    }
    CHECK(read.status == TlsStatus::ok);
    CHECK(std::string(reinterpret_cast<const char*>(buffer.data()), read.bytes) == "ping");
    CHECK(server.read(buffer).status == TlsStatus::want_input);
}

TEST_CASE("an engine's output is bounded: write stops with want_output until the output is sent") {
    TlsEngine client{muxio::tls_test::client_context(), "localhost"};
    TlsEngine server{muxio::tls_test::server_context()};
    handshake(client, server);
    const std::vector<std::byte> data = pattern(1 << 20, 1);
    const muxio::TlsResult first = client.write(data);
    CHECK(first.status == TlsStatus::ok);
    CHECK(first.bytes > 0);
    CHECK(first.bytes < data.size());
    // Room is left for what a read must send.
    CHECK(client.output_pending() + TlsEngine::max_record_size / 2 <= TlsEngine::buffer_size);
    const muxio::TlsResult blocked = client.write(std::span{data}.subspan(first.bytes));
    CHECK(blocked.status == TlsStatus::want_output);
    CHECK(blocked.bytes == 0);
    // Sending makes room; everything arrives, in order.
    std::size_t sent = first.bytes;
    std::vector<std::byte> received;
    std::vector<std::byte> buffer(16384);
    for (int i = 0; i < 10000 && received.size() < data.size(); ++i) {
        if (sent < data.size()) {
            sent += client.write(std::span{data}.subspan(sent)).bytes;
        }
        pump(client, server);
        const muxio::TlsResult read = server.read(buffer);
        received.insert(received.end(), buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>(read.bytes));
    }
    CHECK(received == data);
}

TEST_CASE("an engine whose input ends mid-record reports truncated, and after close_notify reports closed") {
    TlsEngine client{muxio::tls_test::client_context(), "localhost"};
    TlsEngine server{muxio::tls_test::server_context()};
    handshake(client, server);
    std::vector<std::byte> buffer(64);
    (void)server.read(buffer);  // takes what followed the handshake

    REQUIRE(client.write(bytes("cut short")).status == TlsStatus::ok);
    const std::span<const std::byte> record = client.output();
    REQUIRE(record.size() > 10);
    CHECK(server.feed(record.first(record.size() / 2)) == record.size() / 2);
    server.input_ended();
    CHECK(server.input_space().empty());
    muxio::TlsResult read = server.read(buffer);
    CHECK(read.status == TlsStatus::failed);
    INFO(server.error_message());
    CHECK(server.error() == TlsErrc::truncated);
    CHECK(server.error_message().find("without close_notify") != std::string::npos);
    CHECK(server.read(buffer).status == TlsStatus::failed);  // and stays failed

    TlsEngine other_client{muxio::tls_test::client_context(), "localhost"};
    TlsEngine other_server{muxio::tls_test::server_context()};
    handshake(other_client, other_server);
    CHECK(other_client.shutdown() == TlsStatus::ok);
    CHECK(other_client.shutdown_sent());
    pump(other_client, other_server);
    for (int i = 0; i < 5 && read.status != TlsStatus::closed; ++i) {
        read = other_server.read(buffer);
    }
    CHECK(read.status == TlsStatus::closed);
    CHECK(other_server.shutdown_received());
}

TEST_CASE("a moved-from engine is empty and a default engine is invalid") {
    TlsEngine empty;
    CHECK_FALSE(empty.valid());
    TlsEngine engine{muxio::tls_test::server_context()};
    CHECK(engine.valid());
    TlsEngine moved{std::move(engine)};
    CHECK(moved.valid());
    CHECK_FALSE(engine.valid());  // NOLINT(bugprone-use-after-move): the state after a move is the point
    CHECK(engine.output().empty());
    CHECK(engine.input_space().empty());
    empty = std::move(moved);
    CHECK(empty.valid());
}
