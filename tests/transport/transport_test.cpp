// Transport: reading, queued writes and back-pressure, ending, reentrancy,
// timers, and the reactor closing first.
#include "muxio/transport.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>

#include <doctest/doctest.h>

#include "muxio/net.hpp"
#include "muxio/server.hpp"
#include "reactor/reactor_support.hpp"
#include "support/captured_log.hpp"
#include "support/seccomp.hpp"
#include "support/support.hpp"
#include "transport/completion_support.hpp"
#include "transport/transport_support.hpp"

namespace muxio::test {
using reactor_test::ManualClock;
namespace {

using namespace std::chrono_literals;

// A transport on one end of a socket pair; the test holds the other end.
struct Adopted {
    explicit Adopted(Reactor& reactor, TransportOptions options = {}) {
        SocketPair pair;
        peer = std::move(pair.right);
        transport = std::make_unique<Transport>(reactor, pair.left.release(), protocol, options);
    }
    Recorder protocol;
    UniqueFd peer;
    std::unique_ptr<Transport> transport;
};

TEST_CASE("a transport calls connection_made in the next iteration, then delivers what the peer writes") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    CHECK(side.protocol.made == 0);
    write_all(side.peer.get(), "hello");
    REQUIRE(run_until(reactor, [&] { return side.protocol.received == "hello"; }));
    CHECK(side.protocol.made == 1);
    CHECK(side.protocol.transport == side.transport.get());
    CHECK(side.transport->is_reading());
    CHECK(side.protocol.lost == 0);
}

TEST_CASE("a protocol's own buffer from get_buffer receives the bytes, and data_received points into it") {
    FdLeakCheck leak_check;
    Reactor reactor;
    // Parses in place: each read lands after what is held already.
    struct InPlace : Protocol {
        std::array<std::byte, 64> storage{};
        std::size_t held = 0;
        bool pointed_into_storage = true;
        std::span<std::byte> get_buffer(std::size_t size_hint) override {
            CHECK(size_hint == 1024);
            return std::span{storage}.subspan(held, 4);  // small, to take several reads
        }
        void data_received(std::span<const std::byte> data) override {
            pointed_into_storage = pointed_into_storage && data.data() == storage.data() + held;
            held += data.size();
        }
    };
    InPlace protocol;
    SocketPair pair;
    Transport transport{reactor, pair.left.release(), protocol, TransportOptions{.read_size = 1024}};
    write_all(pair.right.get(), "0123456789");
    REQUIRE(run_until(reactor, [&] { return protocol.held == 10; }));
    CHECK(protocol.pointed_into_storage);
    CHECK(std::string_view{reinterpret_cast<const char*>(protocol.storage.data()), 10} == "0123456789");
}

TEST_CASE("a write the kernel takes at once is sent without queueing") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.transport->write(std::string_view{"ping"});
    std::string got;
    if (on_completion_path(reactor)) {
        // No send system call from write(): the loop's next wait carries it.
        CHECK(side.transport->write_buffer_size() == 4);
        CHECK(run_until(reactor, [&] {
            (void)read_available(side.peer.get(), got);
            return side.transport->write_buffer_size() == 0 && got.size() >= 4;
        }));
    } else {
        CHECK(side.transport->write_buffer_size() == 0);
        CHECK(read_available(side.peer.get(), got));
    }
    CHECK(got == "ping");
}

TEST_CASE("writes before connection_made are queued and sent once the transport starts") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    side.transport->write(std::string_view{"early"});
    CHECK(side.transport->write_buffer_size() == 5);
    std::string got;
    REQUIRE(run_until(reactor, [&] {
        (void)read_available(side.peer.get(), got);
        return got == "early";
    }));
    CHECK(side.transport->write_buffer_size() == 0);
}

TEST_CASE("a slow reader raises pause_writing at the high water mark and resume_writing once drained") {
    FdLeakCheck leak_check;
    Reactor reactor;
    TransportOptions options;
    options.high_water = 64 * 1024;
    options.low_water = 16 * 1024;
    Adopted side{reactor, options};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    const std::string chunk(16 * 1024, 'x');
    std::size_t written = 0;
    for (int i = 0; i < 10000 && side.protocol.pauses == 0; ++i) {
        side.transport->write(chunk);
        written += chunk.size();
    }
    REQUIRE(side.protocol.pauses == 1);
    CHECK(side.transport->writing_paused());
    CHECK(side.transport->write_buffer_size() > options.high_water);
    CHECK(side.protocol.resumes == 0);
    std::string got;
    REQUIRE(run_until(reactor, [&] {
        (void)read_available(side.peer.get(), got);
        return side.protocol.resumes == 1 && got.size() == written;
    }));
    CHECK_FALSE(side.transport->writing_paused());
    CHECK(side.transport->write_buffer_size() == 0);
    CHECK(got == std::string(written, 'x'));
    CHECK(side.protocol.lost == 0);
}

TEST_CASE("a peer that vanishes mid-write ends the connection with EPIPE or ECONNRESET and no SIGPIPE") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    const std::string chunk(256 * 1024, 'x');
    side.transport->write(chunk);
    REQUIRE(side.transport->write_buffer_size() > 0);
    side.peer.reset();
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    REQUIRE(side.protocol.reason.has_value());
    CHECK((*side.protocol.reason == std::errc::broken_pipe || *side.protocol.reason == std::errc::connection_reset));
    CHECK(side.transport->is_closed());
    CHECK(side.transport->fileno() == -1);
    // Writing after the connection broke drops the bytes quietly.
    side.transport->write(std::string_view{"late"});
    CHECK(side.transport->write_buffer_size() == 0);
    reactor.run_once(0s);
    CHECK(side.protocol.lost == 1);
}

TEST_CASE("close with a queued backlog delivers every byte, then the end of the stream, then a clean connection_lost") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    std::string sent;
    for (int i = 0; i < 64; ++i) {
        sent += std::string(16 * 1024, static_cast<char>('a' + i % 26));
    }
    side.transport->write(sent);
    REQUIRE(side.transport->write_buffer_size() > 0);
    side.transport->close();
    CHECK(side.transport->is_closing());
    CHECK_FALSE(side.transport->is_reading());
    CHECK_THROWS_AS(side.transport->write(std::string_view{"more"}), std::logic_error);
    std::string got;
    bool open = true;
    REQUIRE(run_until(reactor, [&] {
        if (open) {
            open = read_available(side.peer.get(), got);
        }
        return !open && side.protocol.lost == 1;
    }));
    CHECK(got.size() == sent.size());
    CHECK(got == sent);
    REQUIRE(side.protocol.reason.has_value());
    CHECK_FALSE(*side.protocol.reason);
}

TEST_CASE("abort drops the queue, closes at once and reports ECONNABORTED") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    const std::string big(1024 * 1024, 'x');
    side.transport->write(big);
    REQUIRE(side.transport->write_buffer_size() > 0);
    side.transport->abort();
    CHECK(side.transport->is_closed());
    CHECK(side.transport->write_buffer_size() == 0);
    CHECK(side.protocol.lost == 0);  // delivered in the next iteration, not inside abort()
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK(*side.protocol.reason == std::errc::connection_aborted);
    std::string got;
    (void)read_available(side.peer.get(), got);
    CHECK(got.size() < big.size());
    side.transport->abort();
    side.transport->close();
    reactor.run_once(0s);
    CHECK(side.protocol.lost == 1);
}

TEST_CASE("pause_reading stops data_received until resume_reading") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    side.protocol.on_made = [](Recorder& self) { self.transport->pause_reading(); };
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    CHECK_FALSE(side.transport->is_reading());
    write_all(side.peer.get(), "held");
    for (int i = 0; i < 5; ++i) {
        reactor.run_once(10ms);
    }
    CHECK(side.protocol.received.empty());
    side.transport->resume_reading();
    CHECK(side.transport->is_reading());
    REQUIRE(run_until(reactor, [&] { return side.protocol.received == "held"; }));
}

TEST_CASE("the peer's end of stream closes the transport cleanly unless eof_received keeps it open") {
    FdLeakCheck leak_check;
    Reactor reactor;
    SUBCASE("closed by default") {
        Adopted side{reactor};
        write_all(side.peer.get(), "last words");
        ::shutdown(side.peer.get(), SHUT_WR);
        REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
        CHECK(side.protocol.received == "last words");
        CHECK(side.protocol.eofs == 1);
        CHECK_FALSE(*side.protocol.reason);
    }
    SUBCASE("half-closed: the transport still writes, then closes") {
        Adopted side{reactor};
        side.protocol.keep_open_on_eof = true;
        ::shutdown(side.peer.get(), SHUT_WR);
        REQUIRE(run_until(reactor, [&] { return side.protocol.eofs == 1; }));
        CHECK_FALSE(side.transport->is_reading());
        CHECK_FALSE(side.transport->is_closing());
        side.transport->write(std::string_view{"reply"});
        side.transport->close();
        std::string got;
        bool open = true;
        REQUIRE(run_until(reactor, [&] {
            if (open) {
                open = read_available(side.peer.get(), got);
            }
            return !open && side.protocol.lost == 1;
        }));
        CHECK(got == "reply");
        CHECK_FALSE(*side.protocol.reason);
    }
}

TEST_CASE("write_eof sends the queue, then the end of the stream, and reading goes on") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.transport->write(std::string_view{"request"});
    side.transport->write_eof();
    side.transport->write_eof();  // harmless
    CHECK_THROWS_AS(side.transport->write(std::string_view{"x"}), std::logic_error);
    std::string got;
    bool open = true;
    REQUIRE(run_until(reactor, [&] {
        if (open) {
            open = read_available(side.peer.get(), got);
        }
        return !open;
    }));
    CHECK(got == "request");
    write_all(side.peer.get(), "response");
    REQUIRE(run_until(reactor, [&] { return side.protocol.received == "response"; }));
    side.peer.reset();
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
}

TEST_CASE("abort and write inside data_received are safe and connection_lost comes once, after the callback") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    bool lost_inside = false;
    side.protocol.on_data = [&](Recorder& self, std::span<const std::byte>) {
        self.transport->abort();
        self.transport->write(std::string_view{"ignored"});
        self.transport->close();
        self.transport->abort();
        lost_inside = self.lost != 0;
    };
    write_all(side.peer.get(), "x");
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK_FALSE(lost_inside);
    CHECK(*side.protocol.reason == std::errc::connection_aborted);
    reactor.run_once(0s);
    CHECK(side.protocol.lost == 1);
}

TEST_CASE("destroying the transport inside data_received is safe and calls no connection_lost") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    side.protocol.on_data = [&](Recorder&, std::span<const std::byte>) { side.transport.reset(); };
    write_all(side.peer.get(), "x");
    REQUIRE(run_until(reactor, [&] { return !side.transport; }));
    for (int i = 0; i < 3; ++i) {
        reactor.run_once(0s);
    }
    CHECK(side.protocol.lost == 0);
    // The descriptor is closed: the peer reads the end of the stream.
    std::string got;
    CHECK_FALSE(read_available(side.peer.get(), got));
}

TEST_CASE("destroying the transport inside pause_writing, connection_made or connection_lost is safe") {
    FdLeakCheck leak_check;
    Reactor reactor;
    SUBCASE("pause_writing, from inside write()") {
        Adopted side{reactor, TransportOptions{.high_water = 1, .low_water = 0}};
        REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
        side.protocol.on_pause = [&](Recorder&) { side.transport.reset(); };
        const std::string big(1024 * 1024, 'x');
        side.transport->write(big);
        CHECK_FALSE(side.transport);
    }
    SUBCASE("connection_made") {
        Adopted side{reactor};
        side.protocol.on_made = [&](Recorder&) { side.transport.reset(); };
        REQUIRE(run_until(reactor, [&] { return !side.transport; }));
        CHECK(side.protocol.lost == 0);
    }
    SUBCASE("connection_lost") {
        Adopted side{reactor};
        side.protocol.on_made = [](Recorder& self) { self.transport->abort(); };
        side.protocol.on_lost = [&](Recorder&) { side.transport.reset(); };
        REQUIRE(run_until(reactor, [&] { return !side.transport; }));
        CHECK(side.protocol.lost == 1);
    }
}

TEST_CASE("close inside pause_writing still sends what was queued") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor, TransportOptions{.high_water = 1024, .low_water = 0}};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.protocol.on_pause = [](Recorder& self) { self.transport->close(); };
    const std::string big(1024 * 1024, 'y');
    side.transport->write(big);
    CHECK(side.transport->is_closing());
    std::string got;
    bool open = true;
    REQUIRE(run_until(reactor, [&] {
        if (open) {
            open = read_available(side.peer.get(), got);
        }
        return !open && side.protocol.lost == 1;
    }));
    CHECK(got == big);
    CHECK_FALSE(*side.protocol.reason);
}

TEST_CASE("an exception in data_received aborts the connection and reaches the reactor's exception handler") {
    FdLeakCheck leak_check;
    Reactor reactor;
    int handled = 0;
    reactor.set_exception_handler([&](std::exception_ptr) { ++handled; });
    Adopted side{reactor};
    side.protocol.on_data = [](Recorder&, std::span<const std::byte>) { throw std::runtime_error{"bad input"}; };
    write_all(side.peer.get(), "x");
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK(handled == 1);
    CHECK(*side.protocol.reason == std::errc::connection_aborted);
}

TEST_CASE("a reactor closed first delivers connection_lost with ECANCELED and the transport may be destroyed later") {
    FdLeakCheck leak_check;
    auto reactor = std::make_unique<Reactor>();
    Adopted side{*reactor};
    REQUIRE(run_until(*reactor, [&] { return side.protocol.made == 1; }));
    side.transport->write(std::string(1024 * 1024, 'x'));
    reactor.reset();
    CHECK(side.protocol.lost == 1);
    CHECK(*side.protocol.reason == std::errc::operation_canceled);
    CHECK(side.transport->is_closed());
    side.transport->write(std::string_view{"after"});
    side.transport->close();
    side.transport->pause_reading();
    side.transport.reset();
}

TEST_CASE("a transport still starting when its reactor closes gets connection_lost without connection_made") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    reactor.close();
    CHECK(side.protocol.made == 0);
    CHECK(side.protocol.lost == 1);
}

TEST_CASE("the idle timeout aborts with ETIMEDOUT, and activity postpones it without re-arming per read") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    Adopted side{reactor, TransportOptions{.idle_timeout = 10s}};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    clock.advance(6s);
    write_all(side.peer.get(), "a");
    REQUIRE(run_until(reactor, [&] { return side.protocol.received == "a"; }));
    clock.advance(6s);  // 12 s since the start, 6 s since the read
    for (int i = 0; i < 3; ++i) {
        reactor.run_once(0s);
    }
    CHECK(side.protocol.timeouts == 0);
    CHECK(side.protocol.lost == 0);
    clock.advance(5s);  // 11 s since the read
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK(side.protocol.timeouts == 1);
    CHECK(side.protocol.last_timeout == TimeoutKind::idle);
    CHECK(*side.protocol.reason == std::errc::timed_out);
}

TEST_CASE("a request deadline calls timed_out, which may answer and close instead of aborting") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    Adopted side{reactor, TransportOptions{.idle_timeout = 60s}};
    side.protocol.on_data = [](Recorder& self, std::span<const std::byte>) {
        if (self.transport->deadline() == Transport::TimePoint::max()) {
            self.transport->set_deadline_after(5s);
        }
    };
    side.protocol.on_timeout = [](Recorder& self, TimeoutKind kind) {
        if (kind != TimeoutKind::deadline) {
            return false;
        }
        self.transport->write(std::string_view{"408 too slow"});
        self.transport->close();
        return true;
    };
    write_all(side.peer.get(), "GET / HT");
    REQUIRE(run_until(reactor, [&] { return !side.protocol.received.empty(); }));
    CHECK(side.transport->deadline() != Transport::TimePoint::max());
    clock.advance(3s);
    write_all(side.peer.get(), "TP/1.1\r\n");  // trickling bytes do not move the deadline
    REQUIRE(run_until(reactor, [&] { return side.protocol.received.size() > 8; }));
    clock.advance(3s);
    std::string got;
    bool open = true;
    REQUIRE(run_until(reactor, [&] {
        if (open) {
            open = read_available(side.peer.get(), got);
        }
        return !open && side.protocol.lost == 1;
    }));
    CHECK(side.protocol.last_timeout == TimeoutKind::deadline);
    CHECK(got == "408 too slow");
    CHECK_FALSE(*side.protocol.reason);
}

TEST_CASE("a cleared deadline does not fire") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    Adopted side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.transport->set_deadline_after(1s);
    side.transport->clear_deadline();
    clock.advance(2s);
    for (int i = 0; i < 3; ++i) {
        reactor.run_once(0s);
    }
    CHECK(side.protocol.timeouts == 0);
    CHECK(side.protocol.lost == 0);
}

TEST_CASE("connect reaches a TCP listener and echoes through two transports") {
    FdLeakCheck leak_check;
    Reactor reactor;
    TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
    Recorder client;
    client.on_made = [](Recorder& self) { self.transport->write(std::string_view{"over tcp"}); };
    auto outgoing = Transport::connect(reactor, listener.local_address(), client);
    Recorder server;
    server.echo = true;
    std::unique_ptr<Transport> incoming;
    REQUIRE(run_until(reactor, [&] {
        if (!incoming) {
            std::error_code error;
            if (std::optional<TcpStream> stream = listener.try_accept(error)) {
                incoming = std::make_unique<Transport>(reactor, stream->release(), server);
            }
        }
        return client.received == "over tcp";
    }));
    CHECK(client.made == 1);
    CHECK(incoming->peer_address().is_loopback());
    outgoing->close();
    REQUIRE(run_until(reactor, [&] { return client.lost == 1 && server.lost == 1; }));
    CHECK_FALSE(*client.reason);
    CHECK_FALSE(*server.reason);
}

TEST_CASE("connect to a closed port reports ECONNREFUSED through connection_lost alone") {
    FdLeakCheck leak_check;
    Reactor reactor;
    SocketAddress closed;
    {
        TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
        closed = listener.local_address();
    }
    Recorder client;
    auto outgoing = Transport::connect(reactor, closed, client);
    outgoing->write(std::string_view{"queued"});
    REQUIRE(run_until(reactor, [&] { return client.lost == 1; }));
    CHECK(client.made == 0);
    CHECK(*client.reason == std::errc::connection_refused);
}

TEST_CASE("a transport made from a negative descriptor is refused") {
    Reactor reactor;
    Recorder protocol;
    CHECK_THROWS_AS(Transport(reactor, -1, protocol), std::invalid_argument);
}

TEST_CASE("a warm write queue reuses its storage: no allocation per queued write") {
    FdLeakCheck leak_check;
    if (!counts_allocations) {
        return;
    }
    Reactor reactor;
    Adopted side{reactor, TransportOptions{.high_water = std::size_t{1} << 30U, .low_water = 0}};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    fill_until_blocked(side.transport->fileno());
    const std::string chunk(1000, 'q');
    const auto round = [&] {
        for (int i = 0; i < 50; ++i) {
            side.transport->write(chunk);
        }
        std::string got;
        return run_until(reactor, [&] {
            (void)read_available(side.peer.get(), got);
            return side.transport->write_buffer_size() == 0;
        });
    };
    REQUIRE(round());
    fill_until_blocked(side.transport->fileno());
    REQUIRE(round());
    fill_until_blocked(side.transport->fileno());
    const std::size_t before = allocation_count();
    for (int i = 0; i < 50; ++i) {
        side.transport->write(chunk);
    }
    CHECK(allocation_count() == before);
    CHECK(side.transport->write_buffer_size() == 50 * chunk.size());
}

}  // namespace
}  // namespace muxio::test

namespace muxio::test {
namespace {

// A temporary file holding `content`, opened for reading.
UniqueFd file_with(const std::string& content) {
    char name[] = "/tmp/muxio-transport-file-XXXXXX";
    UniqueFd fd{::mkstemp(name)};
    REQUIRE(fd.get() >= 0);
    ::unlink(name);
    REQUIRE(::write(fd.get(), content.data(), content.size()) == static_cast<ssize_t>(content.size()));
    return fd;
}

TEST_CASE("send_file sends a file slice between the bytes written before and after it, in order") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    std::string content;
    for (int i = 0; i < 300000; ++i) {
        content += static_cast<char>('a' + i % 26);
    }
    UniqueFd file = file_with(content);
    side.transport->write(std::string_view{"head:"});
    side.transport->send_file(file.release(), 10, content.size() - 20);
    // What the kernel did not take at once (on the completion path, "head:" too, until its send completes).
    CHECK(side.transport->write_buffer_size() <= content.size() - 20 + (on_completion_path(reactor) ? 5 : 0));
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
    CHECK(got == "head:" + content.substr(10, content.size() - 20) + ":tail");
    CHECK_FALSE(*side.protocol.reason);
}

TEST_CASE("send_file of a file shorter than announced ends the connection with ENODATA") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    UniqueFd file = file_with("short");
    side.transport->send_file(file.release(), 0, 100);
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK(*side.protocol.reason == std::errc::no_message_available);
}

TEST_CASE("send_file refuses a negative descriptor or offset and closes the file it was given") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    CHECK_THROWS_AS(side.transport->send_file(-1, 0, 1), std::invalid_argument);
    UniqueFd file = file_with("x");
    CHECK_THROWS_AS(side.transport->send_file(file.release(), -1, 1), std::invalid_argument);
}

TEST_CASE("writev sends several buffers with one call and queues the rest in order when the kernel is full") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    const std::string head = "HTTP/1.1 200 OK\r\n\r\n";
    const std::string body(512 * 1024, 'b');
    const std::array<std::span<const std::byte>, 3> parts{bytes_of(head), bytes_of(body), bytes_of("end")};
    side.transport->writev(parts);
    side.transport->writev(parts);
    std::string got;
    const std::size_t want = 2 * (head.size() + body.size() + 3);
    REQUIRE(run_until(reactor, [&] {
        (void)read_available(side.peer.get(), got);
        return got.size() >= want;
    }));
    CHECK(got == head + body + "end" + head + body + "end");
}

}  // namespace
}  // namespace muxio::test

namespace muxio::test {
namespace {

TEST_CASE("a TCP peer's reset ends the connection with ECONNRESET, once") {
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
    const linger abortive{1, 0};  // close() sends a reset
    REQUIRE(::setsockopt(peer.get(), SOL_SOCKET, SO_LINGER, &abortive, sizeof abortive) == 0);
    peer.reset();
    REQUIRE(run_until(reactor, [&] { return protocol.lost == 1; }));
    CHECK(*protocol.reason == std::errc::connection_reset);
    for (int i = 0; i < 3; ++i) {
        reactor.run_once(0s);
    }
    CHECK(protocol.lost == 1);
    CHECK(protocol.eofs == 0);
}

}  // namespace
}  // namespace muxio::test

namespace muxio::test {
namespace {

TEST_CASE("a connection_lost still queued when the reactor closes is delivered once, by the close") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.transport->abort(std::make_error_code(std::errc::io_error));
    CHECK(side.protocol.lost == 0);
    reactor.close();
    CHECK(side.protocol.lost == 1);
    CHECK(*side.protocol.reason == std::errc::io_error);
}

TEST_CASE("an exception in connection_lost reaches the reactor's handler and a server still frees the connection") {
    FdLeakCheck leak_check;
    Reactor reactor;
    int handled = 0;
    reactor.set_exception_handler([&](std::exception_ptr) { ++handled; });
    struct Throwing : Protocol {
        void connection_lost(std::error_code) override { throw std::runtime_error{"cleanup failed"}; }
    };
    Server server{reactor, [](const SocketAddress&) { return std::make_unique<Throwing>(); }};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    {
        UniqueFd client{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
        REQUIRE(::connect(client.get(), address.data(), address.size()) == 0);
        REQUIRE(run_until(reactor, [&] { return server.connection_count() == 1; }));
    }
    REQUIRE(run_until(reactor, [&] { return server.connection_count() == 0; }));
    CHECK(handled == 1);
}

}  // namespace
}  // namespace muxio::test

namespace muxio::test {
namespace {

TEST_CASE("a transport inherited by a forked child is destroyed there quietly, and the parent's goes on") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    const std::optional<std::string> line = report_from_child(
        [&] {
            CapturedLog log{spdlog::level::debug};
            side.transport.reset();
            return log.text().empty() ? std::string{"quiet"} : log.text();
        },
        std::chrono::seconds{10});
    CHECK(line == "quiet");
    write_all(side.peer.get(), "parent");
    REQUIRE(run_until(reactor, [&] { return side.protocol.received == "parent"; }));
}

}  // namespace
}  // namespace muxio::test
