// A stream's reads and writes as StreamOperations: awaited in the caller's
// frame without allocating, waiting on through wakeups that find nothing to
// do, resumed once per operation, and turned into Tasks where one is needed.
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <latch>
#include <optional>
#include <stop_token>
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
#include "muxio/task_group.hpp"
#include "net/completion_support.hpp"
#include "net/net_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::Task;
using muxio::UnixStream;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::net_test::bytes;
using muxio::test::FdLeakCheck;

namespace {

std::string text_of(std::span<const std::byte> data) {
    std::string text(data.size(), '\0');
    std::memcpy(text.data(), data.data(), data.size());
    return text;
}

// What every case starts from: leak checks, a reactor and a connected pair
// (members, not bindings: clang 14's lambdas cannot capture bindings).
struct Pair {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    std::pair<UnixStream, UnixStream> streams = UnixStream::pair(reactor);
    UnixStream& left = streams.first;
    UnixStream& right = streams.second;
};

}  // namespace

TEST_CASE_FIXTURE(Pair, "a ping-pong over read_some and write_all allocates nothing once it runs") {
    // Each operation lives in the awaiting coroutine's frame; with the
    // socket's registration kept between awaits, a message costs no
    // allocation at all. A Task per operation would cost one each.
    if (!muxio::test::counts_allocations) {
        return;  // ThreadSanitizer's runtime owns operator new
    }
    constexpr int warm_up = 10;
    constexpr int measured = 200;
    auto echo = [](UnixStream& stream, Live /*held*/) -> Task<void> {
        std::array<std::byte, 64> buffer{};
        for (int i = 0; i < warm_up + measured; ++i) {
            const std::size_t got = co_await stream.read_some(buffer);
            co_await stream.write_all(std::span{buffer}.first(got));
        }
    };
    auto ping = [](UnixStream& stream, Live /*held*/) -> Task<std::size_t> {
        std::array<std::byte, 4> buffer{};
        std::size_t before = 0;
        for (int i = 0; i < warm_up + measured; ++i) {
            if (i == warm_up) {
                before = muxio::test::allocation_count();
            }
            co_await stream.write_all(bytes("ping"));
            co_await stream.read_exact(buffer);
            CHECK(text_of(buffer) == "ping");
        }
        co_return muxio::test::allocation_count() - before;
    };
    auto both = [&]() -> Task<std::size_t> {
        auto [echoed, allocations] = co_await muxio::when_all(echo(right, Live{}), ping(left, Live{}));
        (void)echoed;
        co_return allocations;
    };
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, both())) == 0);
}

TEST_CASE("a wakeup that finds the data gone keeps the read waiting") {
    // The fd turns readable, but a callback of the same iteration takes the
    // byte first: the read's attempt would block, so it waits on without
    // resuming its task, and returns the next data, not an empty read.
    // A detail of the readiness path: on the completion path nothing but
    // the stream's receive takes bytes from the socket.
    const muxio::net_test::ReadinessOnly readiness_only;
    Pair pair;
    Reactor& reactor = pair.reactor;
    UnixStream& left = pair.left;
    UnixStream& right = pair.right;
    std::string stolen;
    auto reader = [](UnixStream& stream, Live /*held*/) -> Task<std::string> {
        std::array<std::byte, 16> buffer{};
        const std::size_t got = co_await stream.read_some(buffer);
        co_return text_of(std::span{buffer}.first(got));
    };
    auto writer = [](Reactor& loop, int reader_fd, int writer_fd, std::string& taken, Live /*held*/) -> Task<void> {
        co_await muxio::yield(loop);  // the reader waits now
        muxio::test::write_all(writer_fd, "x");
        // Queued now, so it runs in the next iteration before the I/O
        // callbacks, where the select has already seen the byte.
        loop.call_soon([reader_fd, &taken] {
            char byte = 0;
            if (::recv(reader_fd, &byte, 1, 0) == 1) {
                taken += byte;
            }
        });
        co_await muxio::yield(loop);
        co_await muxio::yield(loop);
        muxio::test::write_all(writer_fd, "real");
    };
    auto both = [&]() -> Task<std::string> {
        auto [text, done] = co_await muxio::when_all(reader(left, Live{}),
                                                     writer(reactor, left.fileno(), right.fileno(), stolen, Live{}));
        (void)done;
        co_return text;
    };
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, both())) == "real");
    CHECK(stolen == "x");
}

TEST_CASE_FIXTURE(Pair, "write_all of more than the socket holds resumes its task once, with everything written") {
    const std::vector<std::byte> payload = muxio::net_test::pattern(4 << 20, 7);
    auto writer = [](UnixStream& stream, std::span<const std::byte> data, Live /*held*/) -> Task<void> {
        co_await stream.write_all(data);
        stream.shutdown();
    };
    auto reader = [](UnixStream& stream, Live /*held*/) -> Task<std::vector<std::byte>> {
        std::vector<std::byte> received;
        std::array<std::byte, 4096> buffer{};
        for (;;) {
            const std::size_t got = co_await stream.read_some(buffer);
            if (got == 0) {
                co_return received;
            }
            received.insert(received.end(), buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>(got));
        }
    };
    auto both = [&]() -> Task<std::vector<std::byte>> {
        auto [done, received] = co_await muxio::when_all(writer(left, payload, Live{}), reader(right, Live{}));
        (void)done;
        co_return received;
    };
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, both())) == payload);
}

TEST_CASE_FIXTURE(Pair, "a stream operation converts to a Task wherever one is taken") {
    std::array<std::byte, 8> buffer{};

    // Kept in a variable and awaited later; lazy until then.
    Task<void> later = left.write_all(bytes("abc"));
    std::error_code error;
    CHECK_FALSE(right.try_read(buffer, error).has_value());  // nothing written yet
    muxio::run_until_complete(reactor, std::move(later));

    // Given straight to run_until_complete, spawn, when_any and a group.
    CHECK(muxio::run_until_complete(reactor, right.read_some(buffer)) == 3);
    CHECK(text_of(std::span{buffer}.first(3)) == "abc");
    muxio::spawn(reactor, left.write_all(bytes("de")));
    muxio::run_until_complete(reactor, right.read_exact(std::span{buffer}.first(2)));
    CHECK(text_of(std::span{buffer}.first(2)) == "de");
    std::array<std::byte, 8> other{};
    muxio::test::write_all(left.fileno(), "i");
    const auto first =
        muxio::run_until_complete(reactor, muxio::when_any(left.read_some(other), right.read_some(buffer)));
    CHECK(first.index == 1);  // the read of `left` waits for nothing and is cancelled
    CHECK(first.value == 1);
    auto grouped = [](UnixStream& writer, UnixStream& reader, std::span<std::byte> into) -> Task<void> {
        muxio::TaskGroup group;
        group.spawn(writer.write_all(bytes("fgh")));
        group.spawn(reader.read_exact(into));
        co_await group.join();
    };
    muxio::run_until_complete(reactor, grouped(left, right, std::span{buffer}.first(3)));
    CHECK(text_of(std::span{buffer}.first(3)) == "fgh");
}

TEST_CASE_FIXTURE(Pair, "cancelling write_all midway frees the writer and fails later writes with ECANCELED") {
    // Part of the message is out: whatever followed it would be read as its
    // rest, so the write side refuses from then on; reads go on.
    const std::vector<std::byte> payload = muxio::net_test::pattern(4 << 20, 3);
    auto body = [](Reactor& loop, UnixStream& writer, int reader_fd, std::span<const std::byte> data,
                   Live /*held*/) -> Task<void> {
        std::stop_source source;
        loop.call_later(10ms, [&source] { source.request_stop(); });  // the peer reads nothing
        CHECK_THROWS_AS(co_await writer.write_all(data, source.get_token()), muxio::Cancelled);
        CHECK(muxio::test::drain(reader_fd) > 0);  // part of it went out
        muxio::test::drain(reader_fd);
        try {
            co_await writer.write_all(bytes("after"));
            FAIL("a write after a truncated message went out");
        } catch (const std::system_error& error) {
            CHECK(error.code() == std::errc::operation_canceled);
            CHECK(std::string_view{error.what()}.find("cancelled part-way") != std::string_view::npos);
        }
        CHECK(muxio::test::drain(reader_fd) == 0);  // nothing after the truncated message
        muxio::test::write_all(reader_fd, "x");
        std::array<std::byte, 1> byte{};
        CHECK(co_await writer.read_some(byte) == 1);
    };
    muxio::run_until_complete(reactor,
                              muxio::with_timeout(reactor, 30s, body(reactor, left, right.fileno(), payload, Live{})));
}

TEST_CASE_FIXTURE(Pair, "a stop from another thread racing with data resumes the read once and loses no byte") {
    // Either the data wins (the read returns it) or the stop does (Cancelled,
    // and the byte is still in the socket): the read's attempt consumes data
    // only once it owns the wait. Run under ThreadSanitizer in CI.
    int cancelled = 0;
    for (int round = 0; round < 200; ++round) {
        CAPTURE(round);
        std::stop_source source;
        std::latch go{1};
        std::thread racer{[&go, &source, writer_fd = right.fileno(), round] {
            go.wait();
            if (round % 2 == 0) {
                muxio::test::write_all(writer_fd, "x");
                // A growing head start for the data, so that both sides win
                // in some rounds (a bounded spin for jitter, not a wait).
                std::atomic<int> spin{0};
                while (spin.fetch_add(1, std::memory_order_relaxed) < round * 500) {
                }
                source.request_stop();
            } else {
                source.request_stop();
                muxio::test::write_all(writer_fd, "x");
            }
        }};
        auto body = [&]() -> Task<int> {
            std::array<std::byte, 4> buffer{};
            reactor.call_soon([&go] { go.count_down(); });  // runs once the read waits
            try {
                co_return static_cast<int>(co_await left.read_some(buffer, source.get_token()));
            } catch (const muxio::Cancelled&) {
                co_return -1;
            }
        };
        const int got = muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
        racer.join();
        std::array<std::byte, 4> rest{};
        std::error_code error;
        std::optional<std::size_t> left_over = left.try_read(rest, error);
        CHECK_FALSE(error);
        if (got == -1 && !left_over && muxio::net_test::reads_on_completions(reactor)) {
            // On the completion path the byte may still be on its way from
            // the socket to the stream's receive queue: it comes, bounded.
            auto read_rest = [&]() -> Task<std::size_t> { co_return co_await left.read_some(rest); };
            left_over = muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 10s, read_rest()));
        }
        if (got == 1) {
            CHECK_FALSE(left_over.has_value());  // nothing more: it would block
        } else {
            CHECK(got == -1);
            CHECK(left_over == std::optional<std::size_t>{1});
            ++cancelled;
        }
    }
    MESSAGE(cancelled << " of 200 rounds ended cancelled");  // which side wins is timing
}
