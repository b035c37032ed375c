// Transport: send_file without a wait when nothing is queued, the unread
// input drained before a clean close, and Protocol::write_drained().
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include <doctest/doctest.h>

#include "muxio/net.hpp"
#include "muxio/transport.hpp"
#include "support/support.hpp"
#include "transport/completion_support.hpp"
#include "transport/transport_support.hpp"

namespace muxio::test {
namespace {

using namespace std::chrono_literals;

// A transport on one end of a socket pair; the test holds the other end.
struct Side {
    explicit Side(Reactor& reactor, TransportOptions options = {}) {
        SocketPair pair;
        peer = std::move(pair.right);
        transport = std::make_unique<Transport>(reactor, pair.left.release(), protocol, options);
    }
    Recorder protocol;
    UniqueFd peer;
    std::unique_ptr<Transport> transport;
};

UniqueFd file_with(std::string_view content) {
    char name[] = "/tmp/muxio-drain-file-XXXXXX";
    UniqueFd fd{::mkstemp(name)};
    REQUIRE(fd.get() >= 0);
    ::unlink(name);
    REQUIRE(::write(fd.get(), content.data(), content.size()) == static_cast<ssize_t>(content.size()));
    return fd;
}

std::string pattern(std::size_t size) {
    std::string text;
    text.reserve(size);
    for (std::size_t i = 0; i < size; ++i) {
        text += static_cast<char>('a' + i % 26);
    }
    return text;
}

// Reads non-blocking `fd` to its end, appending to `into`; the errno that
// ended it, 0 for the end of the stream. Waits at most 10 s in all.
int read_to_end(int fd, std::string& into) {
    const Stopwatch watch;
    char chunk[65536];
    while (watch.elapsed() < 10s) {
        const ssize_t got = ::recv(fd, chunk, sizeof chunk, 0);
        if (got > 0) {
            into.append(chunk, static_cast<std::size_t>(got));
            continue;
        }
        if (got == 0) {
            return 0;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            return errno;
        }
        pollfd readable{fd, POLLIN, 0};
        (void)::poll(&readable, 1, 100);
    }
    return ETIMEDOUT;
}

// Waits (bounded) until `fd` has input to read.
bool has_input(int fd) {
    pollfd readable{fd, POLLIN, 0};
    return ::poll(&readable, 1, 5000) == 1;
}

// ----- send_file ------------------------------------------------------------------

TEST_CASE("send_file with nothing queued sends at once, without registering a writer") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Side side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    const std::string content = pattern(1000);
    UniqueFd file = file_with(content);
    side.transport->send_file(file.release(), 10, 900);
    CHECK(side.transport->write_buffer_size() == 0);
    CHECK(reactor.stats().writers == 0);
    side.transport->write(std::string_view{":after"});
    CHECK(reactor.stats().writers == 0);
    std::string got;
    if (on_completion_path(reactor)) {
        // The write goes as a send with the loop's next wait.
        CHECK(run_until(reactor, [&] {
            (void)read_available(side.peer.get(), got);
            return got.size() >= 906;
        }));
    } else {
        CHECK(read_available(side.peer.get(), got));
    }
    CHECK(got == content.substr(10, 900) + ":after");
    CHECK(side.protocol.lost == 0);
}

TEST_CASE("send_file of a file larger than the kernel takes queues the rest and sends it in order") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Side side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    const std::string content = pattern(3 * 1024 * 1024);
    UniqueFd file = file_with(content);
    side.transport->send_file(file.release(), 0, content.size());
    CHECK(side.transport->write_buffer_size() > 0);
    CHECK(side.transport->write_buffer_size() < content.size());  // part went at once
    CHECK(reactor.stats().writers == 1);
    side.transport->write(std::string_view{":tail"});
    side.transport->close();
    std::string got;
    bool open = true;
    REQUIRE(run_until(reactor, [&] {
        if (open) {
            open = read_available(side.peer.get(), got);
        }
        return !open && side.protocol.lost == 1;
    }));
    CHECK(got.size() == content.size() + 5);
    CHECK(got == content + ":tail");
    CHECK_FALSE(*side.protocol.reason);
}

TEST_CASE("send_file of an empty file sent at once ends the connection with ENODATA, after the call returns") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Side side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    UniqueFd file = file_with("");
    side.transport->send_file(file.release(), 0, 10);
    CHECK(side.transport->is_closed());
    CHECK(side.protocol.lost == 0);
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK(*side.protocol.reason == std::errc::no_message_available);
}

TEST_CASE("send_file to a peer that is gone ends the connection with EPIPE or ECONNRESET and closes the file") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Side side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.peer.reset();
    UniqueFd file = file_with("content");
    side.transport->send_file(file.release(), 0, 7);
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK((*side.protocol.reason == std::errc::broken_pipe || *side.protocol.reason == std::errc::connection_reset));
}

// ----- Unread input at a clean close ------------------------------------------------

TEST_CASE("close with unread input drains it: the peer reads the last bytes and then the end of stream, not a reset") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Side side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.transport->pause_reading();
    write_all(side.peer.get(), "a request the protocol never reads\n");
    REQUIRE(has_input(side.transport->fileno()));
    side.transport->write(std::string_view{"bye\n"});
    side.transport->close();
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK_FALSE(*side.protocol.reason);
    std::string got;
    CHECK(read_to_end(side.peer.get(), got) == 0);
    CHECK(got == "bye\n");
}

TEST_CASE("close from inside data_received with more input pending still lets the peer read the answer and the end") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Side side{reactor, TransportOptions{.read_size = 4}};
    side.protocol.on_data = [](Recorder& self, std::span<const std::byte>) {
        self.transport->write(std::string_view{"bye\n"});
        self.transport->close();
    };
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    write_all(side.peer.get(), "quit and then some more");
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK(side.protocol.received == "quit");
    CHECK_FALSE(*side.protocol.reason);
    std::string got;
    CHECK(read_to_end(side.peer.get(), got) == 0);
    CHECK(got == "bye\n");
}

TEST_CASE("a TCP transport closed with unread input sends its last bytes and a FIN, not a reset") {
    FdLeakCheck leak_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
    const SocketAddress address = listener.local_address();
    UniqueFd peer{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    REQUIRE(::connect(peer.get(), address.data(), address.size()) == 0);
    std::optional<TcpStream> accepted;
    REQUIRE(run_until(reactor, [&] {
        if (!accepted) {
            std::error_code error;
            accepted = listener.try_accept(error);
        }
        return accepted.has_value();
    }));
    Recorder protocol;
    Transport transport{reactor, accepted->release(), protocol};
    REQUIRE(run_until(reactor, [&] { return protocol.made == 1; }));
    transport.pause_reading();
    REQUIRE(::send(peer.get(), "* chat line nobody reads\n", 25, MSG_NOSIGNAL) == 25);
    REQUIRE(has_input(transport.fileno()));
    transport.write(std::string_view{"* bye\n"});
    transport.close();
    REQUIRE(run_until(reactor, [&] { return protocol.lost == 1; }));
    CHECK_FALSE(*protocol.reason);
    const int flags = ::fcntl(peer.get(), F_GETFL);
    REQUIRE(::fcntl(peer.get(), F_SETFL, flags | O_NONBLOCK) == 0);
    std::string got;
    CHECK(read_to_end(peer.get(), got) == 0);
    CHECK(got == "* bye\n");
}

TEST_CASE("close with more unread input than the drain takes still ends the connection cleanly and at once") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Side side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.transport->pause_reading();
    fill_until_blocked(side.peer.get());  // far more than the drain reads
    side.transport->write(std::string_view{"bye\n"});
    side.transport->close();
    // On the completion path the write is queued: the end waits for its send.
    CHECK(side.transport->is_closed() != on_completion_path(reactor));
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK_FALSE(*side.protocol.reason);
    std::string got;
    const int end = read_to_end(side.peer.get(), got);
    CHECK(got == "bye\n");
    // The kernel resets a connection closed with input unread (documented).
    CHECK(end == ECONNRESET);
}

// ----- write_drained ----------------------------------------------------------------

// A Recorder that also counts write_drained().
struct DrainRecorder : Recorder {
    int drains = 0;
    std::string events;  // "p" pause_writing, "r" resume_writing, "d" write_drained
    std::function<void(DrainRecorder&)> on_drained;
    void pause_writing() override {
        events += 'p';
        Recorder::pause_writing();
    }
    void resume_writing() override {
        events += 'r';
        Recorder::resume_writing();
    }
    void write_drained() override {
        ++drains;
        events += 'd';
        if (on_drained) {
            on_drained(*this);
        }
    }
};

struct DrainSide {
    explicit DrainSide(Reactor& reactor, TransportOptions options = {}) {
        SocketPair pair;
        peer = std::move(pair.right);
        transport = std::make_unique<Transport>(reactor, pair.left.release(), protocol, options);
    }
    DrainRecorder protocol;
    UniqueFd peer;
    std::unique_ptr<Transport> transport;
};

// Reads from `side`'s peer until `size` bytes arrived into `got`, bounded.
bool receive(Reactor& reactor, DrainSide& side, std::string& got, std::size_t size) {
    return run_until(reactor, [&] {
        (void)read_available(side.peer.get(), got);
        return got.size() >= size;
    });
}

TEST_CASE("write_drained comes once after a backlog has been sent, and not for writes the kernel takes at once") {
    FdLeakCheck leak_check;
    Reactor reactor;
    DrainSide side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.transport->write(std::string_view{"ping"});
    UniqueFd file = file_with("small file");
    side.transport->send_file(file.release(), 0, 10);
    // On the completion path every write is queued until its send completes:
    // the queue drains once the file followed the ping.
    const int queued_drains = on_completion_path(reactor) ? 1 : 0;
    REQUIRE(run_until(reactor, [&] { return side.transport->write_buffer_size() == 0; }));
    for (int i = 0; i < 3; ++i) {
        reactor.run_once(0s);
    }
    CHECK(side.protocol.drains == queued_drains);
    const std::string big = pattern(1024 * 1024);
    side.transport->write(big);
    REQUIRE(side.transport->write_buffer_size() > 0);
    std::string got;
    REQUIRE(receive(reactor, side, got, 14 + big.size()));
    REQUIRE(run_until(reactor, [&] { return side.protocol.drains == queued_drains + 1; }));
    CHECK(got == "pingsmall file" + big);
    for (int i = 0; i < 3; ++i) {
        reactor.run_once(0s);
    }
    CHECK(side.protocol.drains == queued_drains + 1);
    CHECK(reactor.stats().writers == 0);
}

TEST_CASE("write_drained follows resume_writing when a paused queue drains, and a queued file counts in the queue") {
    FdLeakCheck leak_check;
    Reactor reactor;
    DrainSide side{reactor, TransportOptions{.high_water = 1024, .low_water = 0}};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    const std::string big = pattern(1024 * 1024);
    side.transport->write(big);
    CHECK(side.protocol.events == "p");
    std::string got;
    REQUIRE(receive(reactor, side, got, big.size()));
    REQUIRE(run_until(reactor, [&] { return side.protocol.drains == 1; }));
    CHECK(side.protocol.events == "prd");
    UniqueFd file = file_with(big);
    side.transport->send_file(file.release(), 0, big.size());
    REQUIRE(side.transport->write_buffer_size() > 0);
    got.clear();
    REQUIRE(receive(reactor, side, got, big.size()));
    REQUIRE(run_until(reactor, [&] { return side.protocol.drains == 2; }));
    CHECK(got == big);
    CHECK(side.protocol.events == "prdprd");
}

TEST_CASE("write_drained comes before a pending close takes effect, refuses writes there, and the close completes") {
    FdLeakCheck leak_check;
    Reactor reactor;
    DrainSide side{reactor};
    bool closed_when_drained = true;
    bool write_refused = false;
    side.protocol.on_drained = [&](DrainRecorder& self) {
        closed_when_drained = self.transport->is_closed();
        try {
            self.transport->write(std::string_view{"late"});
        } catch (const std::logic_error&) {
            write_refused = true;
        }
    };
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    const std::string big = pattern(1024 * 1024);
    side.transport->write(big);
    side.transport->close();
    std::string got;
    REQUIRE(receive(reactor, side, got, big.size()));
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK(side.protocol.drains == 1);
    CHECK_FALSE(closed_when_drained);
    CHECK(write_refused);
    CHECK_FALSE(*side.protocol.reason);
    CHECK(read_to_end(side.peer.get(), got) == 0);
    CHECK(got == big);
}

TEST_CASE("close from inside write_drained ends the connection cleanly once the peer has everything") {
    FdLeakCheck leak_check;
    Reactor reactor;
    DrainSide side{reactor};
    side.protocol.on_drained = [](DrainRecorder& self) { self.transport->close(); };
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    const std::string big = pattern(1024 * 1024);
    side.transport->write(big);
    std::string got;
    REQUIRE(receive(reactor, side, got, big.size()));
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK(side.protocol.drains == 1);
    CHECK_FALSE(*side.protocol.reason);
    CHECK(read_to_end(side.peer.get(), got) == 0);
    CHECK(got == big);
}

TEST_CASE("destroying the transport inside write_drained is safe and calls no connection_lost") {
    FdLeakCheck leak_check;
    Reactor reactor;
    DrainSide side{reactor};
    side.protocol.on_drained = [&](DrainRecorder&) { side.transport.reset(); };
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    const std::string big = pattern(1024 * 1024);
    side.transport->write(big);
    std::string got;
    REQUIRE(receive(reactor, side, got, big.size()));
    REQUIRE(run_until(reactor, [&] { return side.transport == nullptr; }));
    for (int i = 0; i < 3; ++i) {
        reactor.run_once(0s);
    }
    CHECK(side.protocol.drains == 1);
    CHECK(side.protocol.lost == 0);
    CHECK(reactor.stats().descriptors == 0);
}

TEST_CASE("a write from inside write_drained that queues again brings one more write_drained once it is sent") {
    FdLeakCheck leak_check;
    Reactor reactor;
    DrainSide side{reactor};
    const std::string big = pattern(1024 * 1024);
    side.protocol.on_drained = [&](DrainRecorder& self) {
        if (self.drains == 1) {
            self.transport->write(big);
        }
    };
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.transport->write(big);
    std::string got;
    REQUIRE(receive(reactor, side, got, 2 * big.size()));
    REQUIRE(run_until(reactor, [&] { return side.protocol.drains == 2; }));
    for (int i = 0; i < 3; ++i) {
        reactor.run_once(0s);
    }
    CHECK(side.protocol.drains == 2);
    CHECK(got == big + big);
}

TEST_CASE("an aborted backlog brings no write_drained") {
    FdLeakCheck leak_check;
    Reactor reactor;
    DrainSide side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.transport->write(pattern(1024 * 1024));
    side.transport->abort();
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK(side.protocol.drains == 0);
}

// ----- The read path's calls into the protocol -----------------------------------------

TEST_CASE("an exception in get_buffer or data_received delivers connection_lost before it reaches the handler") {
    for (const bool in_get_buffer : {true, false}) {
        CAPTURE(in_get_buffer);
        FdLeakCheck leak_check;
        Reactor reactor;
        struct Throwing : Recorder {
            bool in_get_buffer = false;
            std::span<std::byte> get_buffer(std::size_t) override {
                if (in_get_buffer) {
                    throw std::runtime_error{"no buffer"};
                }
                return {};
            }
        };
        Throwing protocol;
        protocol.in_get_buffer = in_get_buffer;
        protocol.on_data = [](Recorder&, std::span<const std::byte>) { throw std::runtime_error{"bad input"}; };
        int lost_when_handled = -1;
        reactor.set_exception_handler([&](std::exception_ptr) { lost_when_handled = protocol.lost; });
        SocketPair pair;
        UniqueFd peer = std::move(pair.right);
        Transport transport{reactor, pair.left.release(), protocol};
        write_all(peer.get(), "x");
        REQUIRE(run_until(reactor, [&] { return lost_when_handled >= 0; }));
        CHECK(lost_when_handled == 1);
        CHECK(*protocol.reason == std::errc::connection_aborted);
        CHECK(protocol.received == (in_get_buffer ? "" : "x"));
    }
}

TEST_CASE("destroying the transport inside get_buffer is safe: no read, no further callback") {
    FdLeakCheck leak_check;
    Reactor reactor;
    struct Destroying : Recorder {
        std::unique_ptr<Transport>* owner = nullptr;
        int buffers = 0;
        std::span<std::byte> get_buffer(std::size_t) override {
            ++buffers;
            owner->reset();
            return {};
        }
    };
    Destroying protocol;
    std::unique_ptr<Transport> transport;
    protocol.owner = &transport;
    SocketPair pair;
    UniqueFd peer = std::move(pair.right);
    transport = std::make_unique<Transport>(reactor, pair.left.release(), protocol);
    write_all(peer.get(), "x");
    REQUIRE(run_until(reactor, [&] { return transport == nullptr; }));
    for (int i = 0; i < 3; ++i) {
        reactor.run_once(0s);
    }
    CHECK(protocol.buffers == 1);
    CHECK(protocol.received.empty());
    CHECK(protocol.lost == 0);
}

}  // namespace
}  // namespace muxio::test
