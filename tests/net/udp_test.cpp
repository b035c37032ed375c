// UDP over loopback, both families: send_to/recv_from, connected sockets,
// truncation, and a receive that waits.
#include <sys/socket.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>

#include <doctest/doctest.h>

#include "coro/coro_support.hpp"
#include "muxio/combinators.hpp"
#include "muxio/net.hpp"
#include "muxio/run.hpp"
#include "net/net_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Datagram;
using muxio::Reactor;
using muxio::Task;
using muxio::UdpSocket;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::net_test::bytes;
using muxio::net_test::loopback;
using muxio::test::FdLeakCheck;

namespace {

void datagram_round_trip(int family) {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    UdpSocket a = UdpSocket::bind(reactor, loopback(family));
    UdpSocket b = UdpSocket::bind(reactor, loopback(family));
    CHECK(a.local_address().family() == family);
    auto body = [](Reactor& loop, UdpSocket& first, UdpSocket& second, Live /*held*/) -> Task<void> {
        // The receive waits first; the send comes in a later iteration.
        auto sender = [](Reactor& l, UdpSocket& from, muxio::SocketAddress to) -> Task<std::size_t> {
            co_await muxio::yield(l);
            co_return co_await from.send_to(bytes("datagram"), to);
        };
        std::array<std::byte, 64> buffer{};
        auto [received, sent] =
            co_await muxio::when_all(second.recv_from(buffer), sender(loop, first, second.local_address()));
        CHECK(sent == 8);
        CHECK(received.size == 8);
        CHECK_FALSE(received.truncated);
        CHECK(received.peer == first.local_address());
        CHECK(std::string_view{reinterpret_cast<const char*>(buffer.data()), received.size} == "datagram");

        // And back to the address it came from.
        const std::size_t replied = co_await second.send_to(bytes("reply"), received.peer);
        CHECK(replied == 5);
        const Datagram reply = co_await first.recv_from(buffer);
        CHECK(reply.size == 5);
        CHECK(reply.peer == second.local_address());
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(reactor, a, b, Live{})));
    const int fds[] = {a.fileno(), b.fileno()};
    a.close();
    b.close();
    for (const int fd : fds) {
        CHECK_FALSE(reactor.has_reader(fd));
    }
}

}  // namespace

TEST_CASE("send_to and recv_from carry a datagram each way over IPv4") {
    datagram_round_trip(AF_INET);
}

TEST_CASE("send_to and recv_from carry a datagram each way over IPv6") {
    if (!muxio::net_test::ipv6_loopback_available()) {
        MESSAGE("skipped: no IPv6 loopback here");
        return;
    }
    datagram_round_trip(AF_INET6);
}

TEST_CASE("a connected UDP socket sends to its peer, and a short buffer reports truncation") {
    FdLeakCheck leak_check;
    Reactor reactor;
    UdpSocket server = UdpSocket::bind(reactor, loopback(AF_INET));
    UdpSocket client = UdpSocket::open(reactor, AF_INET);  // bound by the kernel on its first send
    client.connect(server.local_address());
    CHECK(client.peer_address() == server.local_address());
    auto body = [](UdpSocket& from, UdpSocket& to) -> Task<void> {
        const std::size_t sent = co_await from.send(bytes("0123456789"));
        CHECK(sent == 10);
        std::array<std::byte, 4> small{};
        const Datagram got = co_await to.recv_from(small);
        CHECK(got.size == 4);
        CHECK(got.truncated);
        CHECK(got.peer == from.local_address());
    };
    muxio::run_until_complete(reactor, body(client, server));
    CHECK_THROWS_AS((void)UdpSocket::open(reactor, AF_UNIX), std::invalid_argument);
}

TEST_CASE("try_recv_from on an empty socket would block without an error") {
    FdLeakCheck leak_check;
    Reactor reactor;
    UdpSocket socket = UdpSocket::bind(reactor, loopback(AF_INET));
    std::array<std::byte, 8> buffer{};
    std::error_code error = std::make_error_code(std::errc::io_error);
    CHECK_FALSE(socket.try_recv_from(buffer, error).has_value());
    CHECK_FALSE(error);
    const auto sent = socket.try_send_to(bytes("self"), socket.local_address(), error);
    REQUIRE(sent.has_value());
    muxio::run_until_complete(reactor, [](UdpSocket& s) -> Task<void> { co_await s.readable(); }(socket));
    const auto got = socket.try_recv_from(buffer, error);
    REQUIRE(got.has_value());
    CHECK(got->size == 4);
    CHECK(got->peer == socket.local_address());
}
