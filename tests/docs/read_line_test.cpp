// The BufferedReader example README.md shows, compiled and run. The code
// between the readme-begin and readme-end markers is printed in README.md
// verbatim; readme_snippets_test.cpp fails when the two differ.
#include <cstddef>
#include <optional>
#include <string_view>

#include <fmt/format.h>
#include <muxio/muxio.hpp>

// readme-begin: read-line
// Answers each line with its length, until the peer closes. A line longer
// than 1 KiB throws muxio::LimitOverrun instead of growing the buffer.
muxio::Task<void> line_lengths(muxio::TcpStream stream) {
    muxio::BufferedReader reader{stream};
    while (const std::optional<std::string_view> line = co_await reader.read_line(1024)) {
        // `*line` has no "\n" and points into the reader's buffer: valid
        // until its next read.
        co_await stream.write_all(fmt::format("{}\n", line->size()));
    }
}
// readme-end: read-line

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <exception>
#include <string>

#include <doctest/doctest.h>

#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::test::FdLeakCheck;
using muxio::test::UniqueFd;

namespace {

muxio::Task<void> accept_one(muxio::TcpListener& listener) {
    co_await line_lengths(co_await listener.accept());
}

// A blocking loopback client that sends `sent`, ends its writing side, and
// runs the server's task until it ends; what the server wrote back is
// returned, and the task's exception (if any) in `failure`.
std::string converse(const std::string& sent, std::exception_ptr& failure) {
    muxio::Reactor reactor;
    muxio::TcpListener listener = muxio::TcpListener::bind(reactor, muxio::SocketAddress::ipv4("127.0.0.1", 0));
    const muxio::SocketAddress address = listener.local_address();
    UniqueFd client{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    REQUIRE(client.get() >= 0);
    REQUIRE(::connect(client.get(), address.data(), address.size()) == 0);
    muxio::test::write_all(client.get(), sent);
    REQUIRE(::shutdown(client.get(), SHUT_WR) == 0);
    try {
        // The timeout only bounds a bug.
        muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 10s, accept_one(listener)));
    } catch (...) {
        failure = std::current_exception();
    }
    std::string received(4096, '\0');
    std::size_t total = 0;
    while (total < received.size()) {
        const ssize_t got = ::read(client.get(), received.data() + total, received.size() - total);
        if (got <= 0) {
            break;  // the end, or a reset for bytes the server left unread
        }
        total += static_cast<std::size_t>(got);
    }
    received.resize(total);
    return received;
}

}  // namespace

TEST_CASE("the README's read_line example answers each line, \\n or \\r\\n ended, with its length") {
    FdLeakCheck leak_check;
    std::exception_ptr failure;
    CHECK(converse("hello\nworld!\r\n\nabc\n", failure) == "5\n6\n0\n3\n");
    CHECK_FALSE(failure);
}

TEST_CASE("the README's read_line example refuses a line longer than its limit with LimitOverrun") {
    FdLeakCheck leak_check;
    std::exception_ptr failure;
    CHECK(converse("ok\n" + std::string(2000, 'x') + "\n", failure) == "2\n");
    REQUIRE(failure);
    CHECK_THROWS_AS(std::rethrow_exception(failure), muxio::LimitOverrun);
}

TEST_CASE("the README's read_line example fails with IncompleteRead on a stream that ends mid-line") {
    FdLeakCheck leak_check;
    std::exception_ptr failure;
    CHECK(converse("one\ntw", failure) == "3\n");
    REQUIRE(failure);
    CHECK_THROWS_AS(std::rethrow_exception(failure), muxio::IncompleteRead);
}
