// The coroutine echo README.md shows, compiled and run. The code between the
// readme-begin and readme-end markers is printed in README.md verbatim;
// readme_snippets_test.cpp fails when the two differ.
#include <cstddef>
#include <span>
#include <vector>

#include <muxio/muxio.hpp>

// readme-begin: coroutine-echo
muxio::Task<void> echo(muxio::TcpStream stream) {
    std::vector<std::byte> buffer(64 * 1024);
    for (;;) {
        const std::size_t got = co_await stream.read_some(buffer);
        if (got == 0) {
            co_return;  // the peer closed
        }
        co_await stream.write_all(std::span{buffer}.first(got));
    }
}
// readme-end: coroutine-echo

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>

#include <doctest/doctest.h>

#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::test::FdLeakCheck;
using muxio::test::UniqueFd;

namespace {

muxio::Task<void> accept_and_echo(muxio::TcpListener& listener) {
    co_await echo(co_await listener.accept());
}

}  // namespace

TEST_CASE("the README's coroutine echo sends back every byte until the peer closes") {
    FdLeakCheck leak_check;
    muxio::Reactor reactor;
    muxio::TcpListener listener = muxio::TcpListener::bind(reactor, muxio::SocketAddress::ipv4("127.0.0.1", 0));
    const muxio::SocketAddress address = listener.local_address();
    // A blocking client: on loopback the connect ends once the kernel queues
    // the connection, and everything it sends fits in the socket's buffers.
    UniqueFd client{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    REQUIRE(client.get() >= 0);
    REQUIRE(::connect(client.get(), address.data(), address.size()) == 0);
    std::string sent;
    for (int i = 0; i < 1000; ++i) {
        sent += "message " + std::to_string(i) + "\n";
    }
    muxio::test::write_all(client.get(), sent);
    REQUIRE(::shutdown(client.get(), SHUT_WR) == 0);

    // Ends once the client's end of stream reached the server; the timeout
    // only bounds a bug.
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 10s, accept_and_echo(listener)));

    std::string received(sent.size() + 1, '\0');
    std::size_t total = 0;
    for (ssize_t got = 1; got > 0 && total < received.size(); total += static_cast<std::size_t>(got)) {
        got = ::read(client.get(), received.data() + total, received.size() - total);
        REQUIRE(got >= 0);
        if (got == 0) {
            break;
        }
    }
    received.resize(total);
    CHECK(received == sent);
}
