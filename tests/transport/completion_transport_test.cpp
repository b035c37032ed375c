// The callback transport on the io_uring completion path: receives into the
// reactor's provided buffers, sends as submissions, and everything that ends
// them while the kernel holds them. Each case makes an io_uring reactor and
// is skipped on a kernel without multishot receive.
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "muxio/server.hpp"
#include "muxio/transport.hpp"
#include "reactor/completions.hpp"
#include "selector/completion_ring.hpp"
#include "support/seccomp.hpp"
#include "support/support.hpp"
#include "transport/completion_support.hpp"
#include "transport/transport_support.hpp"

namespace muxio::test {
namespace {

using namespace std::chrono_literals;

ReactorOptions io_uring_options() {
    ReactorOptions options;
    options.selector = "io_uring";
    return options;
}

// Whether this kernel has the completion path; a case without it says so.
bool completions_here() {
    if (!detail::completion_features().receive) {
        MESSAGE("the kernel has no multishot receive: the completion path is not there to test");
        return false;
    }
    return true;
}

detail::CompletionRing& ring_of(Reactor& reactor) {
    detail::CompletionRing* ring = detail::ReactorCompletions::ring(reactor);
    REQUIRE(ring != nullptr);
    return *ring;
}

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

std::string pattern(std::size_t size, std::size_t seed = 0) {
    std::string text(size, '\0');
    for (std::size_t i = 0; i < size; ++i) {
        text[i] = static_cast<char>('a' + (i * 7 + seed) % 26);
    }
    return text;
}

// Writes `text` to non-blocking `fd` as it takes it, running the reactor
// meanwhile; reads what comes back into `got` if given.
bool feed(Reactor& reactor, int fd, std::string_view text, std::string* got = nullptr) {
    std::size_t sent = 0;
    return run_until(reactor, [&] {
        if (sent < text.size()) {
            const ssize_t done = ::write(fd, text.data() + sent, text.size() - sent);
            if (done > 0) {
                sent += static_cast<std::size_t>(done);
            }
        }
        if (got != nullptr) {
            (void)read_available(fd, *got);
        }
        return sent == text.size();
    });
}

// A connected TCP pair on loopback: the accepted end and the client's.
struct TcpPair {
    TcpPair() {
        UniqueFd listener{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t length = sizeof address;
        REQUIRE(::bind(listener.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
        REQUIRE(::listen(listener.get(), 4) == 0);
        REQUIRE(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&address), &length) == 0);
        client.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        REQUIRE(::connect(client.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
        accepted.reset(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
        REQUIRE(accepted.get() >= 0);
    }
    UniqueFd accepted;
    UniqueFd client;
};

// ----- The path taken ------------------------------------------------------------------

TEST_CASE("on io_uring a transport echoes through completions without one recv or send system call") {
    if (!completions_here() || !MUXIO_TEST_HAS_SECCOMP) {
        return;
    }
    FdLeakCheck leak_check;
    const std::optional<std::string> line = report_from_child(
        [] {
            Reactor reactor{io_uring_options()};
            Side side{reactor};
            side.protocol.echo = true;
            if (!run_until(reactor, [&] { return side.protocol.made == 1; })) {
                return std::string{"not made"};
            }
            // The socket calls of both readiness paths fail from here on:
            // the peer uses read(2) and write(2), the transport the ring.
            const std::array<std::uint32_t, 4> socket_calls{SYS_recvfrom, SYS_sendto, SYS_recvmsg, SYS_sendmsg};
            if (!refuse_syscalls_in_this_process(socket_calls, EPERM)) {
                return std::string{"no seccomp"};
            }
            const std::size_t in_flight = ring_of(reactor).operations_in_flight();
            std::string got;
            std::string expected;
            for (int i = 0; i < 200; ++i) {
                const std::string message = "message " + std::to_string(i) + ";";
                expected += message;
                if (::write(side.peer.get(), message.data(), message.size()) != static_cast<ssize_t>(message.size())) {
                    return std::string{"peer write failed"};
                }
                const bool echoed = run_until(reactor, [&] {
                    std::array<char, 4096> chunk{};
                    const ssize_t read = ::read(side.peer.get(), chunk.data(), chunk.size());
                    if (read > 0) {
                        got.append(chunk.data(), static_cast<std::size_t>(read));
                    }
                    return got.size() == expected.size() || side.protocol.lost != 0;
                });
                if (!echoed) {
                    return "no echo of message " + std::to_string(i) + ", lost " + std::to_string(side.protocol.lost);
                }
            }
            if (got != expected) {
                return std::string{"echo differs"};
            }
            return in_flight >= 1 && side.transport->is_reading() ? std::string{"echoed"}
                                                                  : std::string{"no receive in flight"};
        },
        std::chrono::seconds{20});
    CHECK(line == "echoed");
}

TEST_CASE("on io_uring a transport registers no reader, and forcing the fallback puts it back on readiness") {
    if (!completions_here()) {
        return;
    }
    FdLeakCheck leak_check;
    {
        Reactor reactor{io_uring_options()};
        REQUIRE(on_completion_path(reactor));
        Side side{reactor};
        side.protocol.echo = true;
        REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
        CHECK(reactor.stats().readers == 0);
        CHECK(ring_of(reactor).operations_in_flight() == 1);  // the multishot receive
        write_all(side.peer.get(), "ping");
        std::string got;
        REQUIRE(run_until(reactor, [&] {
            (void)read_available(side.peer.get(), got);
            return got == "ping";
        }));
    }
    const detail::CompletionFeatures none{};
    detail::set_completion_features_for_testing(&none);
    struct Restore {
        ~Restore() { detail::set_completion_features_for_testing(nullptr); }
    } restore;
    Reactor reactor{io_uring_options()};
    CHECK_FALSE(on_completion_path(reactor));
    Side side{reactor};
    side.protocol.echo = true;
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    CHECK(reactor.stats().readers == 1);
    side.transport->write(std::string_view{"at once"});
    CHECK(side.transport->write_buffer_size() == 0);  // readiness sends from write()
    write_all(side.peer.get(), "pong");
    std::string got;
    REQUIRE(run_until(reactor, [&] {
        (void)read_available(side.peer.get(), got);
        return got == "at oncepong";
    }));
}

// ----- Writing -------------------------------------------------------------------------

TEST_CASE(
    "on io_uring a slow reader gets a large write whole and in order, with pause_writing and resume_writing once") {
    if (!completions_here()) {
        return;
    }
    FdLeakCheck leak_check;
    Reactor reactor{io_uring_options()};
    Side side{reactor, TransportOptions{.high_water = 64 * 1024, .low_water = 16 * 1024}};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    const std::string big = pattern(4 * 1024 * 1024);
    side.transport->write(std::string_view{big}.substr(0, 1000));
    side.transport->write(std::string_view{big}.substr(1000));
    CHECK(side.protocol.pauses == 1);
    CHECK(side.transport->writing_paused());
    std::string got;
    std::size_t last_queued = side.transport->write_buffer_size();
    int shrank = 0;
    const Stopwatch watch;
    for (int i = 0; i < 1000000 && got.size() < big.size() && watch.elapsed() < 30s; ++i) {
        // A slow reader: a few KiB per iteration, so the kernel takes the
        // queue in parts.
        std::array<char, 16384> chunk{};
        const ssize_t read = ::read(side.peer.get(), chunk.data(), chunk.size());
        if (read > 0) {
            got.append(chunk.data(), static_cast<std::size_t>(read));
        }
        reactor.run_once(0s);
        const std::size_t queued = side.transport->write_buffer_size();
        shrank += queued < last_queued ? 1 : 0;
        last_queued = queued;
    }
    CHECK(shrank >= 2);
    CHECK(got == big);
    REQUIRE(run_until(reactor, [&] { return side.protocol.resumes == 1; }));
    CHECK(side.protocol.pauses == 1);
    CHECK(side.transport->write_buffer_size() == 0);
    CHECK(side.protocol.lost == 0);
}

TEST_CASE("on io_uring writes made while a send is in flight follow it in order, and close sends them all first") {
    if (!completions_here()) {
        return;
    }
    FdLeakCheck leak_check;
    Reactor reactor{io_uring_options()};
    Side side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    std::string expected;
    for (int i = 0; i < 50; ++i) {
        const std::string part = pattern(static_cast<std::size_t>(1000 + i * 997), static_cast<std::size_t>(i));
        expected += part;
        side.transport->write(part);
        if (i % 10 == 0) {
            reactor.run_once(0s);  // some sends complete in between
        }
    }
    const std::array<std::span<const std::byte>, 2> tail{bytes_of("tail-1;"), bytes_of("tail-2")};
    side.transport->writev(tail);
    expected += "tail-1;tail-2";
    side.transport->close();
    std::string got;
    bool open = true;
    REQUIRE(run_until(reactor, [&] {
        if (open) {
            open = read_available(side.peer.get(), got);
        }
        return !open && side.protocol.lost == 1;
    }));
    CHECK(got == expected);
    CHECK_FALSE(*side.protocol.reason);
}

TEST_CASE("on io_uring a peer that resets in the middle of a send ends the connection with the kernel's error") {
    if (!completions_here()) {
        return;
    }
    FdLeakCheck leak_check;
    Reactor reactor{io_uring_options()};
    TcpPair pair;
    Recorder protocol;
    Transport transport{reactor, pair.accepted.release(), protocol};
    REQUIRE(run_until(reactor, [&] { return protocol.made == 1; }));
    transport.write(pattern(8 * 1024 * 1024));
    for (int i = 0; i < 5; ++i) {
        reactor.run_once(0s);  // the send is in the kernel, the socket full
    }
    REQUIRE(transport.write_buffer_size() > 0);
    const linger reset{1, 0};
    REQUIRE(::setsockopt(pair.client.get(), SOL_SOCKET, SO_LINGER, &reset, sizeof reset) == 0);
    pair.client.reset();
    REQUIRE(run_until(reactor, [&] { return protocol.lost == 1; }));
    REQUIRE(protocol.reason.has_value());
    CHECK((*protocol.reason == std::errc::connection_reset || *protocol.reason == std::errc::broken_pipe));
    CHECK(transport.is_closed());
    CHECK(ring_of(reactor).operations_in_flight() == 0);
}

// ----- Ending with operations in flight ------------------------------------------------

TEST_CASE("on io_uring abort with a send and a receive in flight cancels and reaps both at once") {
    if (!completions_here()) {
        return;
    }
    FdLeakCheck leak_check;
    Reactor reactor{io_uring_options()};
    Side side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.transport->write(pattern(4 * 1024 * 1024));
    reactor.run_once(0s);
    REQUIRE(ring_of(reactor).operations_in_flight() == 2);
    side.transport->abort();
    CHECK(ring_of(reactor).operations_in_flight() == 0);
    CHECK(side.transport->write_buffer_size() == 0);
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK(*side.protocol.reason == std::errc::connection_aborted);
    side.transport.reset();
    // The peer sees the end: what was sent, then end of stream.
    std::string got;
    CHECK_FALSE(read_available(side.peer.get(), got));
}

TEST_CASE("on io_uring destroying a transport with a send and a receive in flight leaves nothing in the kernel") {
    if (!completions_here()) {
        return;
    }
    FdLeakCheck leak_check;
    Reactor reactor{io_uring_options()};
    Side side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.transport->write(pattern(4 * 1024 * 1024));
    reactor.run_once(0s);
    REQUIRE(ring_of(reactor).operations_in_flight() == 2);
    side.transport.reset();  // its queue's memory goes now
    CHECK(ring_of(reactor).operations_in_flight() == 0);
    CHECK(side.protocol.lost == 0);
    std::string got;
    CHECK_FALSE(read_available(side.peer.get(), got));  // closed
    for (int i = 0; i < 3; ++i) {
        reactor.run_once(0s);
    }
}

TEST_CASE("on io_uring close with a send in flight waits for it, then ends cleanly and the peer reads everything") {
    if (!completions_here()) {
        return;
    }
    FdLeakCheck leak_check;
    Reactor reactor{io_uring_options()};
    Side side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    const std::string big = pattern(2 * 1024 * 1024);
    side.transport->write(big);
    reactor.run_once(0s);
    side.transport->close();
    CHECK_FALSE(side.transport->is_closed());
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
    CHECK(ring_of(reactor).operations_in_flight() == 0);
}

TEST_CASE("on io_uring destroying the transport inside data_received with more input queued is safe") {
    if (!completions_here()) {
        return;
    }
    FdLeakCheck leak_check;
    Reactor reactor{io_uring_options()};
    Side side{reactor};
    int calls = 0;
    side.protocol.on_data = [&](Recorder&, std::span<const std::byte> data) {
        ++calls;
        side.transport->write(data);
        side.transport.reset();
    };
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    write_all(side.peer.get(), pattern(60000));  // several provided buffers
    REQUIRE(run_until(reactor, [&] { return side.transport == nullptr; }));
    for (int i = 0; i < 3; ++i) {
        reactor.run_once(0s);
    }
    CHECK(calls == 1);
    CHECK(ring_of(reactor).operations_in_flight() == 0);
}

TEST_CASE("on io_uring abort from inside data_received ends the connection and drops the rest of the input") {
    if (!completions_here()) {
        return;
    }
    FdLeakCheck leak_check;
    Reactor reactor{io_uring_options()};
    Side side{reactor};
    side.protocol.on_data = [](Recorder& self, std::span<const std::byte> data) {
        self.transport->write(data);
        self.transport->abort();
    };
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    write_all(side.peer.get(), pattern(60000));
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK(*side.protocol.reason == std::errc::connection_aborted);
    CHECK(side.protocol.received.size() <= 4096);  // one provided buffer's worth
    CHECK(ring_of(reactor).operations_in_flight() == 0);
}

TEST_CASE("on io_uring closing the reactor with transports sending and receiving ends each with ECANCELED") {
    if (!completions_here()) {
        return;
    }
    FdLeakCheck leak_check;
    auto reactor = std::make_unique<Reactor>(io_uring_options());
    std::vector<std::unique_ptr<Side>> sides;
    for (int i = 0; i < 3; ++i) {
        sides.push_back(std::make_unique<Side>(*reactor));
    }
    REQUIRE(run_until(*reactor, [&] {
        for (const auto& side : sides) {
            if (side->protocol.made != 1) {
                return false;
            }
        }
        return true;
    }));
    sides[0]->transport->write(pattern(4 * 1024 * 1024));
    sides[1]->transport->write(pattern(10));
    write_all(sides[2]->peer.get(), "unread");
    sides[2]->transport->pause_reading();
    reactor->run_once(0s);
    reactor->close();
    for (const auto& side : sides) {
        CHECK(side->protocol.lost == 1);
        CHECK(*side->protocol.reason == std::errc::operation_canceled);
        CHECK(side->transport->is_closed());
    }
    sides[0]->transport.reset();
    reactor.reset();  // before the other transports: they are detached
    sides.clear();
}

// ----- Reading -------------------------------------------------------------------------

TEST_CASE("on io_uring pause_reading holds what arrives until resume_reading, then delivers it in order") {
    if (!completions_here()) {
        return;
    }
    FdLeakCheck leak_check;
    Reactor reactor{io_uring_options()};
    Side side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.transport->pause_reading();
    CHECK_FALSE(side.transport->is_reading());
    const std::string text = pattern(std::size_t{4} * 1024 * 1024);
    std::size_t sent = 0;
    for (int i = 0; i < 200; ++i) {
        const ssize_t done = ::write(side.peer.get(), text.data() + sent, text.size() - sent);
        if (done > 0) {
            sent += static_cast<std::size_t>(done);
        }
        reactor.run_once(0s);
    }
    CHECK(side.protocol.received.empty());
    CHECK(sent < text.size());  // the peer stalls: the receive stopped
    side.transport->resume_reading();
    CHECK(side.transport->is_reading());
    REQUIRE(feed(reactor, side.peer.get(), std::string_view{text}.substr(sent)));
    ::shutdown(side.peer.get(), SHUT_WR);
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK(side.protocol.received == text);
    CHECK(side.protocol.eofs == 1);
    CHECK_FALSE(*side.protocol.reason);
}

TEST_CASE("on io_uring many connections holding data run the buffer ring dry and lose nothing, each in order") {
    if (!completions_here()) {
        return;
    }
    FdLeakCheck leak_check;
    (void)raise_fd_limit(1024);
    Reactor reactor{io_uring_options()};
    constexpr int count = 120;
    constexpr std::size_t size = 256 * 1024;
    std::vector<std::unique_ptr<Side>> sides;
    std::vector<std::string> texts;
    std::vector<std::size_t> sent(count, 0);
    for (int i = 0; i < count; ++i) {
        auto side = std::make_unique<Side>(reactor);
        const int buffer = 512 * 1024;
        (void)::setsockopt(side->peer.get(), SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer);
        Recorder& protocol = side->protocol;
        // Every fourth piece, stop reading for a few iterations.
        protocol.on_data = [&reactor, &protocol, pieces = 0](Recorder&, std::span<const std::byte>) mutable {
            if (++pieces % 4 == 0) {
                protocol.transport->pause_reading();
                (void)reactor.call_later(1ms, [&protocol] {
                    if (!protocol.transport->is_closing()) {
                        protocol.transport->resume_reading();
                    }
                });
            }
        };
        sides.push_back(std::move(side));
        texts.push_back(pattern(size, static_cast<std::size_t>(i)));
    }
    REQUIRE(run_until(reactor, [&] { return sides.back()->protocol.made == 1; }));
    // Everything is written before the loop runs again where the sockets
    // take it, so the receives fill many buffers at once.
    const bool all_in = run_until(
        reactor,
        [&] {
            bool done = true;
            for (int i = 0; i < count; ++i) {
                const std::string& text = texts[static_cast<std::size_t>(i)];
                std::size_t& at = sent[static_cast<std::size_t>(i)];
                while (at < text.size()) {
                    const ssize_t wrote =
                        ::write(sides[static_cast<std::size_t>(i)]->peer.get(), text.data() + at, text.size() - at);
                    if (wrote <= 0) {
                        break;
                    }
                    at += static_cast<std::size_t>(wrote);
                }
                done = done && at == text.size();
            }
            if (!done) {
                return false;
            }
            for (const auto& side : sides) {
                if (side->protocol.received.size() < size) {
                    return false;
                }
            }
            return true;
        },
        100000);
    REQUIRE(all_in);
    for (int i = 0; i < count; ++i) {
        CHECK(sides[static_cast<std::size_t>(i)]->protocol.received == texts[static_cast<std::size_t>(i)]);
        CHECK(sides[static_cast<std::size_t>(i)]->protocol.lost == 0);
    }
}

TEST_CASE("on io_uring one connection with more input waiting than the whole buffer ring gets all of it in order") {
    if (!completions_here()) {
        return;
    }
    FdLeakCheck leak_check;
    Reactor reactor{io_uring_options()};
    TcpPair pair;
    Recorder protocol;
    Transport transport{reactor, pair.accepted.release(), protocol};
    REQUIRE(run_until(reactor, [&] { return protocol.made == 1; }));
    // More than the ring's 2048 buffers of 4 KiB reach the socket at once,
    // so a single wait can empty the ring and end the receive for want of
    // buffers, after which only the bytes delivered in the same batch give
    // buffers back.
    const std::string text = pattern(std::size_t{12} * 1024 * 1024);
    const int flags = ::fcntl(pair.client.get(), F_GETFL);
    REQUIRE(::fcntl(pair.client.get(), F_SETFL, flags | O_NONBLOCK) == 0);
    REQUIRE(feed(reactor, pair.client.get(), text));
    REQUIRE(run_until(reactor, [&] { return protocol.received.size() >= text.size(); }));
    CHECK(protocol.received == text);
}

TEST_CASE("on io_uring an end of stream that arrives during a pause is told after resume_reading, after the data") {
    if (!completions_here()) {
        return;
    }
    FdLeakCheck leak_check;
    Reactor reactor{io_uring_options()};
    Side side{reactor};
    side.protocol.keep_open_on_eof = true;
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.transport->pause_reading();
    write_all(side.peer.get(), "last words");
    ::shutdown(side.peer.get(), SHUT_WR);
    for (int i = 0; i < 5; ++i) {
        reactor.run_once(0s);
    }
    CHECK(side.protocol.received.empty());
    CHECK(side.protocol.eofs == 0);
    side.transport->resume_reading();
    REQUIRE(run_until(reactor, [&] { return side.protocol.eofs == 1; }));
    CHECK(side.protocol.received == "last words");
    side.transport->write(std::string_view{"answer"});
    side.transport->close();
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    std::string got;
    CHECK_FALSE(read_available(side.peer.get(), got));
    CHECK(got == "answer");
}

// ----- Fork and allocations --------------------------------------------------------------

TEST_CASE("on io_uring a forked child cannot use the parent's transport, and destroying it there spares the parent") {
    if (!completions_here()) {
        return;
    }
    FdLeakCheck leak_check;
    Reactor reactor{io_uring_options()};
    Side side{reactor};
    side.protocol.echo = true;
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.transport->write(pattern(4 * 1024 * 1024));  // a send in flight
    reactor.run_once(0s);
    const std::optional<std::string> line = report_from_child(
        [&] {
            std::string seen;
            try {
                side.transport->write(std::string_view{"child"});
                seen += "wrote;";
            } catch (const std::logic_error&) {
                seen += "refused;";
            }
            side.transport.reset();
            return seen + "destroyed";
        },
        std::chrono::seconds{10});
    CHECK(line == "refused;destroyed");
    REQUIRE(side.transport != nullptr);
    std::string got;
    REQUIRE(run_until(reactor, [&] {
        (void)read_available(side.peer.get(), got);
        return got.size() >= 4 * 1024 * 1024;
    }));
    write_all(side.peer.get(), "parent");
    got.clear();
    REQUIRE(run_until(reactor, [&] {
        (void)read_available(side.peer.get(), got);
        return got == "parent";
    }));
    CHECK(side.protocol.lost == 0);
}

TEST_CASE("on io_uring an echoed message allocates nothing once the connection is warm") {
    if (!completions_here() || !counts_allocations) {
        return;
    }
    FdLeakCheck leak_check;
    Reactor reactor{io_uring_options()};
    Side side{reactor, TransportOptions{.high_water = 0, .low_water = 0}};
    side.protocol.echo = true;
    // As muxio-echo does: stop reading while an answer waits.
    side.protocol.on_pause = [](Recorder& self) { self.transport->pause_reading(); };
    side.protocol.on_resume = [](Recorder& self) { self.transport->resume_reading(); };
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.protocol.received.reserve(64 * 1024);
    std::array<char, 256> chunk{};
    const auto echo_once = [&](int i) {
        const std::array<char, 8> message{'p', 'i', 'n', 'g', static_cast<char>('0' + i % 10), ';', '\n', '.'};
        if (::write(side.peer.get(), message.data(), message.size()) != 8) {
            return false;
        }
        std::size_t got = 0;
        for (int turn = 0; turn < 1000 && got < message.size(); ++turn) {
            reactor.run_once(1s);
            const ssize_t read = ::read(side.peer.get(), chunk.data(), chunk.size());
            if (read > 0) {
                got += static_cast<std::size_t>(read);
            }
        }
        return got == message.size();
    };
    for (int i = 0; i < 20; ++i) {
        REQUIRE(echo_once(i));
    }
    const std::size_t before = allocation_count();
    for (int i = 0; i < 500; ++i) {
        REQUIRE(echo_once(i));
    }
    CHECK(allocation_count() - before == 0);
    CHECK(side.protocol.pauses >= 520);  // one per answer: high_water is 0
}

}  // namespace
}  // namespace muxio::test
