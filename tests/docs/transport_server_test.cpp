// The transport echo server README.md shows, compiled and run. The code
// between the readme-begin and readme-end markers is printed in README.md
// verbatim; readme_snippets_test.cpp fails when the two differ.

// readme-begin: transport-server
#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>

#include <muxio/muxio.hpp>

// One per connection, made by the server's factory. The transport sends at
// once what the kernel takes and queues the rest; while a client does not
// read what it was sent, nothing more is read from it.
class Echo : public muxio::Protocol {
public:
    void connection_made(muxio::Transport& transport) override { transport_ = &transport; }
    void data_received(std::span<const std::byte> data) override { transport_->write(data); }
    void pause_writing() override { transport_->pause_reading(); }
    void resume_writing() override { transport_->resume_reading(); }

private:
    muxio::Transport* transport_ = nullptr;
};

// Echoes on 127.0.0.1:`port` (0: a free port) while `reactor` runs. A client
// silent for 30 s is closed; past 1000 clients a new one reads "busy" and is
// closed. Out of descriptors, the server pauses accepting instead of spinning.
std::unique_ptr<muxio::Server> start_echo_server(muxio::Reactor& reactor, std::uint16_t port) {
    muxio::ServerOptions options;
    options.transport.idle_timeout = std::chrono::seconds{30};
    options.max_connections = 1000;
    auto server = std::make_unique<muxio::Server>(
        reactor, [](const muxio::SocketAddress&) { return std::make_unique<Echo>(); }, options);
    server->set_refusal_handler(
        [](int fd, const muxio::SocketAddress&) { (void)::send(fd, "busy\n", 5, MSG_NOSIGNAL); });
    server->listen("127.0.0.1", port);
    return server;
}
// readme-end: transport-server

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include <doctest/doctest.h>

#include "support/support.hpp"

using namespace std::chrono_literals;

namespace {

muxio::test::UniqueFd connect_client(const muxio::SocketAddress& address) {
    muxio::test::UniqueFd fd{::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0)};
    REQUIRE(fd.get() >= 0);
    REQUIRE(::connect(fd.get(), address.data(), address.size()) == 0);
    REQUIRE(::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK) == 0);
    return fd;
}

// Runs iterations until `got` holds `want` bytes read from `fd`, at most 100.
bool echoed(muxio::Reactor& reactor, int fd, std::string& got, std::size_t want) {
    char chunk[4096];
    for (int i = 0; i < 100 && got.size() < want; ++i) {
        reactor.run_once(100ms);
        const ssize_t n = ::read(fd, chunk, sizeof chunk);
        if (n > 0) {
            got.append(chunk, static_cast<std::size_t>(n));
        }
    }
    return got.size() == want;
}

}  // namespace

TEST_CASE("the README's transport server echoes what clients send") {
    muxio::test::FdLeakCheck leak_check;
    muxio::Reactor reactor;
    const std::unique_ptr<muxio::Server> server = start_echo_server(reactor, 0);
    const muxio::SocketAddress address = server->addresses().at(0);
    muxio::test::UniqueFd first = connect_client(address);
    muxio::test::UniqueFd second = connect_client(address);
    muxio::test::write_all(first.get(), "hello");
    muxio::test::write_all(second.get(), "world");
    std::string first_got;
    std::string second_got;
    CHECK(echoed(reactor, first.get(), first_got, 5));
    CHECK(echoed(reactor, second.get(), second_got, 5));
    CHECK(first_got == "hello");
    CHECK(second_got == "world");
    CHECK(server->connection_count() == 2);
}
