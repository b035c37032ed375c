// The coroutine streams on the io_uring completion path (lib/net/stream.cpp):
// the path is taken, and it is as correct as the readiness path where the
// kernel's asynchrony makes a difference (partial sends, resets, stop
// requests and frames destroyed with a send in flight, the reactor closed
// under live streams, a dry buffer ring), plus each fallback forced.
// Every case runs on a reactor made with the io_uring selector and is
// skipped, saying so, where the kernel lacks the operations.
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "coro/coro_support.hpp"
#include "muxio/combinators.hpp"
#include "muxio/error.hpp"
#include "muxio/net.hpp"
#include "muxio/run.hpp"
#include "muxio/selectors.hpp"
#include "muxio/task_group.hpp"
#include "net/completion_support.hpp"
#include "net/net_support.hpp"
#include "support/support.hpp"
#include "support/syscall_counter.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::Task;
using muxio::TcpListener;
using muxio::TcpStream;
using muxio::UnixStream;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::net_test::bytes;
using muxio::net_test::pattern;
using muxio::test::FdLeakCheck;

namespace {

namespace detail = muxio::detail;

// Whether this build and kernel have the completion path; says why not.
bool completions_available() {
    bool compiled = false;
    for (const std::string_view name : muxio::available_selectors()) {
        compiled = compiled || name == "io_uring";
    }
    if (!compiled || !detail::completion_features().receive) {
        MESSAGE(
            "skipped: no io_uring completion path here (selector not built, kernel too old, or "
            "MUXIO_COMPLETIONS=off)");
        return false;
    }
    return true;
}

muxio::ReactorOptions uring() {
    return muxio::ReactorOptions{"io_uring", {}};
}

detail::CompletionRing& ring_of(Reactor& reactor) {
    detail::CompletionRing* ring = detail::ReactorCompletions::ring(reactor);
    REQUIRE(ring != nullptr);
    return *ring;
}

// A connected TCP pair on `reactor` over 127.0.0.1.
std::pair<TcpStream, TcpStream> tcp_pair(Reactor& reactor) {
    TcpListener listener = TcpListener::bind(reactor, muxio::SocketAddress::ipv4("127.0.0.1", 0));
    auto both = [](Reactor& loop, TcpListener& server) -> Task<std::pair<TcpStream, TcpStream>> {
        auto [accepted, connected] =
            co_await muxio::when_all(server.accept(), TcpStream::connect(loop, server.local_address()));
        co_return std::pair<TcpStream, TcpStream>{std::move(accepted), std::move(connected)};
    };
    return muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 10s, both(reactor, listener)));
}

// Reads `size` bytes from `stream` in reads of at most `chunk` bytes,
// yielding between reads: a slow reader.
Task<std::vector<std::byte>> read_slowly(Reactor& reactor, muxio::StreamSocket& stream, std::size_t size,
                                         std::size_t chunk, Live /*held*/) {
    std::vector<std::byte> got(size);
    std::size_t done = 0;
    while (done < size) {
        const std::size_t n = co_await stream.read_some(std::span{got}.subspan(done, std::min(chunk, size - done)));
        REQUIRE(n > 0);
        done += n;
        co_await muxio::yield(reactor);
    }
    co_return got;
}

}  // namespace

TEST_CASE("on io_uring a coroutine echo over TCP runs on the ring: no recv or send system call per message") {
    if (!completions_available() || !MUXIO_TEST_HAS_SYSCALL_COUNTER) {
        return;
    }
    constexpr int messages = 400;
    const auto serve = [](const muxio::test::TellClient& tell) {
        Reactor reactor{uring()};
        TcpListener listener = TcpListener::bind(reactor, muxio::SocketAddress::ipv4("127.0.0.1", 0));
        auto echo = [](TcpStream stream) -> Task<void> {
            std::array<std::byte, 256> buffer{};
            for (;;) {
                const std::size_t got = co_await stream.read_some(buffer);
                if (got == 0) {
                    co_return;
                }
                co_await stream.write_all(std::span{buffer}.first(got));
            }
        };
        auto accept_loop = [&](TcpListener& server) -> Task<void> {
            for (;;) {
                muxio::spawn(reactor, echo(co_await server.accept()));
            }
        };
        muxio::spawn(reactor, accept_loop(listener));
        tell(std::to_string(listener.local_address().port()));
        reactor.run();
    };
    const auto drive = [](std::string_view told, muxio::test::CountingWindow& window) -> std::string {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        muxio::SocketAddress address =
            muxio::SocketAddress::ipv4("127.0.0.1", static_cast<std::uint16_t>(std::stoi(std::string{told})));
        if (fd < 0 || ::connect(fd, address.data(), address.size()) != 0) {
            return "connect failed";
        }
        const muxio::test::UniqueFd owned{fd};
        std::array<char, 64> message{};
        message.fill('m');
        for (int i = 0; i < messages + 2; ++i) {
            if (i == 2) {
                window.open();
            }
            if (::send(fd, message.data(), message.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(message.size())) {
                return "send failed";
            }
            std::size_t received = 0;
            std::array<char, 64> answer{};
            while (received < answer.size()) {
                const ssize_t got = ::recv(fd, answer.data() + received, answer.size() - received, 0);
                if (got <= 0) {
                    return "the server hung up";
                }
                received += static_cast<std::size_t>(got);
            }
            if (answer != message) {
                return "a wrong answer";
            }
        }
        window.close();
        return "";
    };
    std::string failure;
    const std::optional<muxio::test::SyscallTally> tally =
        muxio::test::count_server_syscalls(serve, drive, 60s, failure);
    if (!tally) {
        MESSAGE("skipped: no system-call count: " << failure);
        return;
    }
    INFO("the server's calls: " << tally->describe());
    std::uint64_t transfers = 0;
    for (const auto& [number, count] : tally->by_number) {
        const std::string name = muxio::test::syscall_name(number);
        if (name == "recvfrom" || name == "sendto" || name == "recvmsg" || name == "sendmsg" || name == "read" ||
            name == "write") {
            transfers += count;
        }
    }
    CHECK(transfers <= 4);  // the window's edges, not one per message
    // At most an io_uring_enter for the receive's completion and one for
    // the send's: one connection in ping-pong batches nothing.
    CHECK(static_cast<double>(tally->total) <= 2.25 * messages);
}

TEST_CASE("on io_uring a stream's receive starts with its first read, and a stream nobody reads holds none") {
    if (!completions_available()) {
        return;
    }
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor{uring()};
    detail::CompletionRing& ring = ring_of(reactor);
    auto left_and_right = UnixStream::pair(reactor);
    auto& left = left_and_right.first;
    auto& right = left_and_right.second;
    auto write_only = [](UnixStream& stream, Live /*held*/) -> Task<void> {
        co_await stream.write_all(bytes("hello"));
    };
    muxio::run_until_complete(reactor, write_only(left, Live{}));
    CHECK(ring.operations_in_flight() == 0);  // the send is done, and nobody reads
    CHECK(!reactor.has_reader(right.fileno()));
    auto read_one = [](UnixStream& stream, Live /*held*/) -> Task<std::string> {
        std::array<char, 16> buffer{};
        const std::size_t got = co_await stream.read_some(std::as_writable_bytes(std::span{buffer}));
        co_return std::string{buffer.data(), got};
    };
    CHECK(muxio::run_until_complete(reactor, read_one(right, Live{})) == "hello");
    CHECK(ring.operations_in_flight() == 1);  // the multishot receive, kept for the next read
    CHECK(!reactor.has_reader(right.fileno()));
    right.close();
    reactor.run_once(0ms);  // the receive's cancellation lands
    CHECK(ring.operations_in_flight() == 0);
}

TEST_CASE("on io_uring write_all to a slow reader goes out whole, in order, through partial sends") {
    if (!completions_available()) {
        return;
    }
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor{uring()};
    auto left_and_right = tcp_pair(reactor);
    auto& left = left_and_right.first;
    auto& right = left_and_right.second;
    const std::vector<std::byte> data = pattern(8 << 20, 7);
    auto writer = [](TcpStream& stream, std::span<const std::byte> message, Live /*held*/) -> Task<void> {
        co_await stream.write_all(message);
    };
    auto both = [&]() -> Task<std::vector<std::byte>> {
        auto [written, got] = co_await muxio::when_all(writer(left, data, Live{}),
                                                       read_slowly(reactor, right, data.size(), 64 << 10, Live{}));
        (void)written;
        co_return got;
    };
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 60s, both())) == data);
}

TEST_CASE(
    "on io_uring a peer that resets in the middle of write_all fails it, and the writes after it, with the reset") {
    if (!completions_available()) {
        return;
    }
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor{uring()};
    auto left_and_right = tcp_pair(reactor);
    auto& left = left_and_right.first;
    auto& right = left_and_right.second;
    const std::vector<std::byte> data = pattern(32 << 20, 3);
    auto body = [&]() -> Task<void> {
        auto reset_peer = [](Reactor& loop, TcpStream& peer) -> Task<void> {
            co_await muxio::yield(loop);  // the send is in flight, the socket full
            co_await muxio::yield(loop);
            const linger abort{1, 0};
            REQUIRE(::setsockopt(peer.fileno(), SOL_SOCKET, SO_LINGER, &abort, sizeof abort) == 0);
            peer.close();  // a reset instead of the end of the stream
        };
        auto write = [](TcpStream& stream, std::span<const std::byte> message) -> Task<std::error_code> {
            try {
                co_await stream.write_all(message);
            } catch (const std::system_error& error) {
                co_return error.code();
            }
            co_return std::error_code{};
        };
        auto [failed, reset] = co_await muxio::when_all(write(left, data), reset_peer(reactor, right));
        (void)reset;
        CHECK((failed == std::errc::connection_reset || failed == std::errc::broken_pipe));
        // The write side is broken: the next write fails the same way without sending.
        const std::error_code again = co_await write(left, bytes("more"));
        CHECK(again == failed);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
}

TEST_CASE("on io_uring a stop request with a send in flight cancels it and resumes only after its final completion") {
    if (!completions_available()) {
        return;
    }
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor{uring()};
    detail::CompletionRing& ring = ring_of(reactor);
    auto left_and_right = UnixStream::pair(reactor);
    auto& left = left_and_right.first;
    const std::vector<std::byte> data = pattern(8 << 20, 5);  // more than the socket holds: the send waits
    std::stop_source source;
    auto body = [&]() -> Task<void> {
        auto stop_from_thread = [](Reactor& loop, std::stop_source& stop) -> Task<void> {
            co_await muxio::yield(loop);
            co_await muxio::yield(loop);
            std::thread{[&stop] { stop.request_stop(); }}.join();
        };
        auto write = [](UnixStream& stream, std::span<const std::byte> message, std::stop_token token,
                        detail::CompletionRing& uring_ring) -> Task<bool> {
            try {
                co_await stream.write_all(message, token);
            } catch (const muxio::Cancelled&) {
                CHECK(uring_ring.operations_in_flight() == 0);  // the send's final completion came first
                co_return true;
            }
            co_return false;
        };
        auto [cancelled, stopped] =
            co_await muxio::when_all(write(left, data, source.get_token(), ring), stop_from_thread(reactor, source));
        (void)stopped;
        CHECK(cancelled);
        // Part of the message went out: later writes fail with ECANCELED.
        bool refused = false;
        try {
            co_await left.write_all(bytes("next"));
        } catch (const std::system_error& error) {
            refused = error.code() == std::errc::operation_canceled;
        }
        CHECK(refused);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
}

TEST_CASE("on io_uring a stop request with a read pending ends it with Cancelled and the next read loses no byte") {
    if (!completions_available()) {
        return;
    }
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor{uring()};
    auto left_and_right = UnixStream::pair(reactor);
    auto& left = left_and_right.first;
    auto& right = left_and_right.second;
    auto body = [&]() -> Task<void> {
        std::stop_source source;
        auto read = [](UnixStream& stream, std::stop_token token) -> Task<bool> {
            std::array<std::byte, 8> buffer{};
            try {
                (void)co_await stream.read_some(buffer, token);
            } catch (const muxio::Cancelled&) {
                co_return true;
            }
            co_return false;
        };
        auto stop = [](Reactor& loop, std::stop_source& stop_source) -> Task<void> {
            co_await muxio::yield(loop);
            stop_source.request_stop();
        };
        auto [cancelled, stopped] = co_await muxio::when_all(read(left, source.get_token()), stop(reactor, source));
        (void)stopped;
        CHECK(cancelled);
        co_await right.write_all(bytes("after"));
        std::array<char, 5> buffer{};
        co_await left.read_exact(std::as_writable_bytes(std::span{buffer}));
        CHECK(std::string{buffer.data(), buffer.size()} == "after");
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
}

TEST_CASE("on io_uring a task destroyed with a send in flight waits for the kernel before its buffer goes") {
    if (!completions_available()) {
        return;
    }
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    std::optional<Reactor> reactor{std::in_place, uring()};
    auto left_and_right = UnixStream::pair(*reactor);
    auto& left = left_and_right.first;
    auto& right = left_and_right.second;
    // The buffer lives in the frame: ASan sees the kernel's read if the
    // frame went before the send's end.
    auto writer = [](UnixStream& stream, Live /*held*/) -> Task<void> {
        std::vector<std::byte> data = pattern(8 << 20, 9);
        co_await stream.write_all(data);
    };
    std::optional<Task<void>> held{writer(left, Live{})};
    auto await_held = [](Task<void>& task) -> Task<void> { co_await task; };
    muxio::spawn(*reactor, writer(left, Live{}));  // destroyed by the reactor's close
    muxio::spawn(*reactor, await_held(*held));
    reactor->run_once(0ms);
    reactor->run_once(0ms);
    CHECK(ring_of(*reactor).operations_in_flight() >= 1);
    // The right end reads a little so that the kernel is busy with the buffers.
    muxio::test::drain(right.fileno());
    reactor->close();
    held.reset();  // after the reactor: the ring waited for the send at its close
    reactor.reset();
    left.close();
    right.close();
}

TEST_CASE("on io_uring closing a stream ends its pending read and its send in flight with Cancelled") {
    if (!completions_available()) {
        return;
    }
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor{uring()};
    auto left_and_right = UnixStream::pair(reactor);
    auto& left = left_and_right.first;
    auto other_left_and_other_right = UnixStream::pair(reactor);
    auto& other_left = other_left_and_other_right.first;
    const std::vector<std::byte> data = pattern(8 << 20, 2);
    auto body = [&]() -> Task<void> {
        auto read = [](UnixStream& stream) -> Task<bool> {
            std::array<std::byte, 8> buffer{};
            try {
                (void)co_await stream.read_some(buffer);
            } catch (const muxio::Cancelled&) {
                co_return true;
            }
            co_return false;
        };
        auto write = [](UnixStream& stream, std::span<const std::byte> message) -> Task<bool> {
            try {
                co_await stream.write_all(message);
            } catch (const muxio::Cancelled&) {
                co_return true;
            }
            co_return false;
        };
        auto close_both = [](Reactor& loop, UnixStream& reader, UnixStream& writer) -> Task<void> {
            co_await muxio::yield(loop);
            co_await muxio::yield(loop);
            reader.close();
            writer.close();
        };
        auto [read_cancelled, write_cancelled, closed] =
            co_await muxio::when_all(read(left), write(other_left, data), close_both(reactor, left, other_left));
        (void)closed;
        CHECK(read_cancelled);
        CHECK(write_cancelled);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
    CHECK(ring_of(reactor).operations_in_flight() <= 2);  // the other ends' nothing, at most cancellations landing
    reactor.run_once(0ms);
    CHECK(ring_of(reactor).operations_in_flight() == 0);
}

TEST_CASE("on io_uring closing the reactor under live streams detaches them, and they and their tasks go after it") {
    if (!completions_available()) {
        return;
    }
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    std::optional<Reactor> reactor{std::in_place, uring()};
    std::optional<std::pair<UnixStream, UnixStream>> streams{UnixStream::pair(*reactor)};
    UnixStream& left = streams->first;
    UnixStream& right = streams->second;
    const std::vector<std::byte> data = pattern(8 << 20, 4);
    auto reader = [](UnixStream& stream, Live /*held*/) -> Task<void> {
        std::array<std::byte, 16> buffer{};
        for (;;) {
            (void)co_await stream.read_some(buffer);
        }
    };
    auto writer = [](UnixStream& stream, std::span<const std::byte> message, Live /*held*/) -> Task<void> {
        co_await stream.write_all(message);
    };
    auto await_held = [](Task<void>& task) -> Task<void> { co_await task; };
    std::optional<Task<void>> held_read{reader(left, Live{})};
    std::optional<Task<void>> held_write{writer(left, data, Live{})};
    muxio::spawn(*reactor, await_held(*held_read));
    muxio::spawn(*reactor, await_held(*held_write));
    muxio::test::write_all(right.fileno(), "queued bytes");
    reactor->run_once(0ms);
    reactor->run_once(0ms);
    reactor->close();
    CHECK_FALSE(left.is_open());
    std::array<std::byte, 4> buffer{};
    std::error_code error;
    CHECK_FALSE(left.try_read(buffer, error).has_value());
    CHECK(error == std::errc::bad_file_descriptor);
    reactor.reset();
    held_read.reset();
    held_write.reset();
    streams.reset();
}

TEST_CASE("on io_uring a dry buffer ring loses no byte: streams that stopped reading get everything, in order") {
    if (!completions_available()) {
        return;
    }
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    // 300 streams of 16 queued 4 KiB buffers each want more than the ring's
    // buffers: receives end for want of them while the others hold theirs.
    constexpr int count = 300;
    constexpr std::size_t size = 128 << 10;
    REQUIRE(muxio::test::raise_fd_limit(2 * count + 100) >= 2 * count + 100);
    Reactor reactor{uring()};
    std::vector<std::pair<UnixStream, UnixStream>> pairs;
    pairs.reserve(count);
    for (int i = 0; i < count; ++i) {
        pairs.push_back(UnixStream::pair(reactor));
        int room = 1 << 20;
        REQUIRE(::setsockopt(pairs.back().second.fileno(), SOL_SOCKET, SO_SNDBUF, &room, sizeof room) == 0);
    }
    auto first_byte = [](UnixStream& stream) -> Task<void> {
        std::array<std::byte, 1> byte{};
        co_await stream.read_exact(byte);  // starts the receive
    };
    auto start_all = [&]() -> Task<void> {
        muxio::TaskGroup group;
        for (auto& [reading, sending] : pairs) {
            muxio::test::write_all(sending.fileno(), "s");
            group.spawn(first_byte(reading));
        }
        co_await group.join();
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, start_all()));
    // Nobody reads now; the bytes arrive and the receives queue what the ring gives them.
    auto send_all = [&]() -> Task<void> {
        muxio::TaskGroup group;
        for (int i = 0; i < count; ++i) {
            auto send = [](UnixStream& stream, std::vector<std::byte> message) -> Task<void> {
                co_await stream.write_all(message);
            };
            group.spawn(send(pairs[static_cast<std::size_t>(i)].second, pattern(size, static_cast<std::uint32_t>(i))));
        }
        co_await group.join();
    };
    auto read_all = [&]() -> Task<int> {
        for (int round = 0; round < 20; ++round) {
            co_await muxio::yield(reactor);  // receives fill the ring and run it dry
        }
        int intact = 0;
        muxio::TaskGroup group;
        for (int i = 0; i < count; ++i) {
            auto read = [](UnixStream& stream, std::uint32_t seed, int& whole) -> Task<void> {
                std::vector<std::byte> got(size);
                co_await stream.read_exact(got);
                whole += got == pattern(size, seed) ? 1 : 0;
            };
            group.spawn(read(pairs[static_cast<std::size_t>(i)].first, static_cast<std::uint32_t>(i), intact));
        }
        co_await group.join();
        co_return intact;
    };
    auto both = [&]() -> Task<int> {
        auto [sent, intact] = co_await muxio::when_all(send_all(), read_all());
        (void)sent;
        co_return intact;
    };
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 60s, both())) == count);
}

TEST_CASE("on io_uring an echo of read_some and write_all over TCP allocates nothing per message once warm") {
    if (!completions_available() || !muxio::test::counts_allocations) {
        return;
    }
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor{uring()};
    auto left_and_right = tcp_pair(reactor);
    auto& left = left_and_right.first;
    auto& right = left_and_right.second;
    constexpr int warm_up = 20;
    constexpr int measured = 500;
    auto echo = [](TcpStream& stream, Live /*held*/) -> Task<void> {
        std::array<std::byte, 64> buffer{};
        for (int i = 0; i < warm_up + measured; ++i) {
            const std::size_t got = co_await stream.read_some(buffer);
            co_await stream.write_all(std::span{buffer}.first(got));
        }
    };
    auto ping = [](TcpStream& stream, Live /*held*/) -> Task<std::size_t> {
        std::array<std::byte, 64> message{};
        std::array<std::byte, 64> answer{};
        std::size_t before = 0;
        for (int i = 0; i < warm_up + measured; ++i) {
            if (i == warm_up) {
                before = muxio::test::allocation_count();
            }
            co_await stream.write_all(message);
            co_await stream.read_exact(answer);
        }
        co_return muxio::test::allocation_count() - before;
    };
    auto both = [&]() -> Task<std::size_t> {
        auto [echoed, allocations] = co_await muxio::when_all(echo(right, Live{}), ping(left, Live{}));
        (void)echoed;
        co_return allocations;
    };
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, both())) == 0);
    CHECK(muxio::net_test::reads_on_completions(reactor));
}

TEST_CASE("on io_uring each forced fallback works: no receive reads on readiness, no ring at all uses readiness") {
    if (!completions_available()) {
        return;
    }
    struct Case {
        detail::CompletionFeatures features;
        bool reads_on_ring;
        bool writes_on_ring;
    };
    const std::array<Case, 3> cases{{
        {{true, true, true}, true, true},
        {{false, true, true}, false, true},
        {{false, false, false}, false, false},
    }};
    for (const Case& forced : cases) {
        CAPTURE(forced.reads_on_ring);
        CAPTURE(forced.writes_on_ring);
        FdLeakCheck leak_check;
        FrameLeakCheck frame_check;
        detail::set_completion_features_for_testing(&forced.features);
        std::optional<Reactor> reactor{std::in_place, uring()};
        detail::set_completion_features_for_testing(nullptr);
        CHECK(muxio::net_test::reads_on_completions(*reactor) == forced.reads_on_ring);
        CHECK(muxio::net_test::writes_on_completions(*reactor) == forced.writes_on_ring);
        {
            auto left_and_right = tcp_pair(*reactor);
            auto& left = left_and_right.first;
            auto& right = left_and_right.second;
            bool reader_registered = false;
            auto echo = [](TcpStream& stream, Live /*held*/) -> Task<void> {
                std::array<std::byte, 64> buffer{};
                for (;;) {
                    const std::size_t got = co_await stream.read_some(buffer);
                    if (got == 0) {
                        co_return;
                    }
                    co_await stream.write_all(std::span{buffer}.first(got));
                }
            };
            auto client = [](Reactor& loop, TcpStream& stream, int peer_fd, bool& registered,
                             Live /*held*/) -> Task<void> {
                for (int i = 0; i < 20; ++i) {
                    co_await stream.write_all(bytes("ping"));
                    std::array<std::byte, 4> answer{};
                    co_await stream.read_exact(answer);
                    registered = registered || loop.has_reader(peer_fd);
                }
                stream.shutdown();
            };
            auto both = [&]() -> Task<void> {
                co_await muxio::when_all(echo(right, Live{}),
                                         client(*reactor, left, right.fileno(), reader_registered, Live{}));
            };
            muxio::run_until_complete(*reactor, muxio::with_timeout(*reactor, 30s, both()));
            // A read on readiness leaves the socket's reader registered; one on the ring does not.
            CHECK(reader_registered == !forced.reads_on_ring);
        }
        reactor.reset();
    }
}

TEST_CASE("on io_uring accept takes connections through the ring's multishot accept, peers named") {
    if (!completions_available()) {
        return;
    }
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor{uring()};
    TcpListener listener = TcpListener::bind(reactor, muxio::SocketAddress::ipv4("127.0.0.1", 0));
    auto body = [&]() -> Task<void> {
        for (int i = 0; i < 3; ++i) {
            auto connect = [](Reactor& loop, const muxio::SocketAddress& address) -> Task<TcpStream> {
                co_await muxio::yield(loop);  // the accept waits first
                co_return co_await TcpStream::connect(loop, address);
            };
            auto watch = [](Reactor& loop, TcpListener& server, detail::CompletionRing& ring) -> Task<void> {
                co_await muxio::yield(loop);
                CHECK_FALSE(loop.has_reader(server.fileno()));
                CHECK(ring.operations_in_flight() >= 1);
            };
            auto [accepted, connected, watched] =
                co_await muxio::when_all(listener.accept(), connect(reactor, listener.local_address()),
                                         watch(reactor, listener, ring_of(reactor)));
            (void)watched;
            CHECK(accepted.peer_address() == connected.local_address());
            co_await connected.write_all(bytes("hi"));
            std::array<std::byte, 2> got{};
            co_await accepted.read_exact(got);
        }
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
    listener.close();
    reactor.run_once(0ms);
    CHECK(ring_of(reactor).operations_in_flight() == 0);
}

TEST_CASE(
    "on io_uring accept reports EMFILE once, thrown or in its error_code, and accepts once descriptors are back") {
    if (!completions_available()) {
        return;
    }
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor{uring()};
    TcpListener listener = TcpListener::bind(reactor, muxio::SocketAddress::ipv4("127.0.0.1", 0));
    auto body = [](TcpListener& server) -> Task<void> {
        // The kernel takes RLIMIT_NOFILE when an accept is submitted: the
        // first accept() below submits the ring's multishot accept under the limit.
        // The clients' sockets are made before the limit, connected under it.
        std::array<muxio::test::UniqueFd, 2> clients{
            muxio::test::UniqueFd{::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)},
            muxio::test::UniqueFd{::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)}};
        // UBSan and fmt meet their types once before the limit (see tcp_test.cpp).
        CHECK(fmt::format("{}", server.local_address()) == server.local_address().to_string());
        std::optional<std::system_error> thrown{muxio::make_system_error(EMFILE, "warm-up")};
        thrown.reset();
        std::error_code returned;
        bool accepted_anyway = false;
        {
            const muxio::net_test::ScopedFdLimit limit{static_cast<rlim_t>(muxio::net_test::lowest_free_fd())};
            for (const muxio::test::UniqueFd& client : clients) {
                const muxio::SocketAddress& address = server.local_address();
                const int connected = ::connect(client.get(), address.data(), address.size());
                CHECK((connected == 0 || errno == EINPROGRESS));
            }
            try {
                (void)co_await server.accept();
                accepted_anyway = true;
            } catch (const std::system_error& failure) {
                thrown = failure;
            }
            TcpStream none = co_await server.accept(returned);
            accepted_anyway = accepted_anyway || none.is_open();
        }
        CHECK_FALSE(accepted_anyway);
        REQUIRE(thrown.has_value());
        CHECK(thrown->code() == std::errc::too_many_files_open);
        CHECK(std::string{thrown->what()}.starts_with(fmt::format("accept on {}", server.local_address())));
        CHECK(returned == std::errc::too_many_files_open);
        TcpStream accepted = co_await server.accept();
        TcpStream accepted_second = co_await server.accept();
        CHECK(accepted.is_open());
        CHECK(accepted_second.is_open());
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(listener)));
}

TEST_CASE("on io_uring a stop request or the listener's close ends a pending accept with Cancelled") {
    if (!completions_available()) {
        return;
    }
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor{uring()};
    TcpListener listener = TcpListener::bind(reactor, muxio::SocketAddress::ipv4("127.0.0.1", 0));
    auto accept_cancelled = [](TcpListener& server, std::stop_token token) -> Task<bool> {
        try {
            (void)co_await server.accept(std::move(token));
        } catch (const muxio::Cancelled&) {
            co_return true;
        }
        co_return false;
    };
    auto stopped = [&]() -> Task<bool> {
        std::stop_source source;
        auto stop = [](Reactor& loop, std::stop_source& stop_source) -> Task<void> {
            co_await muxio::yield(loop);
            stop_source.request_stop();
        };
        auto [cancelled, done] =
            co_await muxio::when_all(accept_cancelled(listener, source.get_token()), stop(reactor, source));
        (void)done;
        co_return cancelled;
    };
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, stopped())));
    auto closed = [&]() -> Task<bool> {
        auto close = [](Reactor& loop, TcpListener& server) -> Task<void> {
            co_await muxio::yield(loop);
            server.close();
        };
        auto [cancelled, done] = co_await muxio::when_all(accept_cancelled(listener, {}), close(reactor, listener));
        (void)done;
        co_return cancelled;
    };
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, closed())));
    reactor.run_once(0ms);
    CHECK(ring_of(reactor).operations_in_flight() == 0);
}

TEST_CASE("on io_uring connections the ring accepted and nobody took are closed with the listener") {
    if (!completions_available()) {
        return;
    }
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor{uring()};
    std::optional<TcpListener> listener{TcpListener::bind(reactor, muxio::SocketAddress::ipv4("127.0.0.1", 0))};
    auto body = [&]() -> Task<void> {
        auto [first, client] =
            co_await muxio::when_all(listener->accept(), TcpStream::connect(reactor, listener->local_address()));
        (void)first;
        std::vector<TcpStream> clients;
        for (int i = 0; i < 5; ++i) {
            clients.push_back(co_await TcpStream::connect(reactor, listener->local_address()));
        }
        for (int i = 0; i < 5; ++i) {
            co_await muxio::yield(reactor);  // the multishot accept takes them
        }
        listener.reset();
        for (TcpStream& stream : clients) {
            std::array<std::byte, 1> byte{};
            CHECK(co_await stream.read_some(byte) == 0);  // closed by the listener's end
        }
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
}

TEST_CASE("on io_uring a BufferedReader reads on readiness, and refuses a stream whose own reads run on the ring") {
    if (!completions_available()) {
        return;
    }
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor{uring()};
    auto left_and_right = UnixStream::pair(reactor);
    auto& left = left_and_right.first;
    auto& right = left_and_right.second;
    auto other_left_and_other_right = UnixStream::pair(reactor);
    auto& other_left = other_left_and_other_right.first;
    auto& other_right = other_left_and_other_right.second;
    auto body = [&]() -> Task<void> {
        co_await right.write_all(bytes("one\ntwo\n"));
        muxio::BufferedReader lines{left};
        CHECK(co_await lines.read_line(64) == std::optional<std::string_view>{"one"});
        CHECK(co_await lines.read_line(64) == std::optional<std::string_view>{"two"});
        // The stream read on its own first: its receive holds what follows.
        co_await other_right.write_all(bytes("a\nb\n"));
        std::array<std::byte, 2> first{};
        co_await other_left.read_exact(first);
        muxio::BufferedReader refused{other_left};
        bool threw = false;
        try {
            (void)co_await refused.read_line(64);
        } catch (const std::logic_error& error) {
            threw = std::string{error.what()}.find("completion ring") != std::string::npos;
        }
        CHECK(threw);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
}

TEST_CASE("on io_uring an accept pending when the reactor closes can be destroyed after the listener") {
    if (!completions_available()) {
        return;
    }
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    std::optional<Reactor> reactor{std::in_place, uring()};
    std::optional<TcpListener> listener{TcpListener::bind(*reactor, muxio::SocketAddress::ipv4("127.0.0.1", 0))};
    auto accept_one = [](TcpListener& server, Live /*held*/) -> Task<void> { (void)co_await server.accept(); };
    std::optional<Task<void>> held{accept_one(*listener, Live{})};
    auto await_held = [](Task<void>& task) -> Task<void> { co_await task; };
    muxio::spawn(*reactor, await_held(*held));
    reactor->run_once(0ms);
    CHECK(ring_of(*reactor).operations_in_flight() == 1);  // the multishot accept
    reactor->close();
    listener.reset();  // first: the pending accept forgot it at the reactor's close
    held.reset();
    reactor.reset();
}

TEST_CASE("on io_uring an accept loop takes every connection of a burst larger than the queue the ring accepts into") {
    if (!completions_available()) {
        return;
    }
    FdLeakCheck leak_check;
    Reactor reactor{uring()};
    TcpListener listener = TcpListener::bind(reactor, muxio::SocketAddress::ipv4("127.0.0.1", 0));
    const muxio::SocketAddress address = listener.local_address();
    constexpr int clients = 400;  // several times the 64 the multishot accept queues before it pauses
    std::vector<muxio::test::UniqueFd> connected;
    connected.reserve(clients);
    // Connections keep arriving while the multishot accept pauses at a full
    // queue and while the loop drains it: a pause that ends with the queue
    // empty and an accept waiting must start accepting again.
    std::thread connector{[&] {
        for (int i = 0; i < clients; ++i) {
            const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd < 0) {
                return;
            }
            connected.emplace_back(fd);
            if (::connect(fd, address.data(), address.size()) != 0) {
                return;
            }
        }
    }};
    int accepted = 0;
    auto body = [&]() -> Task<void> {
        while (accepted < clients) {
            TcpStream stream = co_await muxio::with_timeout(reactor, 10s, listener.accept());
            ++accepted;
        }
    };
    try {
        muxio::run_until_complete(reactor, body());
    } catch (const std::exception& error) {
        MESSAGE("accepting stopped: " << error.what());
    }
    connector.join();
    CHECK(connected.size() == static_cast<std::size_t>(clients));
    CHECK(accepted == clients);
}
