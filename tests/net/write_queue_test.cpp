// Writes from several tasks to one stream: queued in the order awaited, each
// message whole, each ending on its own when cancelled, failed or closed.
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
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
#include "net/completion_support.hpp"
#include "net/net_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::Task;
using muxio::UnixStream;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::net_test::pattern;
using muxio::test::FdLeakCheck;

namespace {

struct Pair {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    std::pair<UnixStream, UnixStream> streams = UnixStream::pair(reactor);
    UnixStream& left = streams.first;
    UnixStream& right = streams.second;
};

// What a write ended with: "ok", "cancelled", or the error's code.
struct Outcome {
    bool ok = false;
    bool cancelled = false;
    std::error_code error;
};

Task<Outcome> write_message(muxio::StreamSocket& stream, std::span<const std::byte> message, std::stop_token token,
                            Live /*held*/) {
    Outcome outcome;
    try {
        co_await stream.write_all(message, std::move(token));
        outcome.ok = true;
    } catch (const muxio::Cancelled&) {
        outcome.cancelled = true;
    } catch (const std::system_error& error) {
        outcome.error = error.code();
    }
    co_return outcome;
}

// Reads the messages in order and says whether each arrived whole, then
// that nothing follows them.
Task<bool> read_messages(UnixStream& stream, std::vector<std::vector<std::byte>> messages, Live /*held*/) {
    bool same = true;
    for (const auto& message : messages) {
        std::vector<std::byte> got(message.size());
        co_await stream.read_exact(got);
        same = same && got == message;
    }
    co_return same;
}

}  // namespace

TEST_CASE_FIXTURE(Pair, "writes awaited by several tasks go out whole, in the order they were awaited") {
    // The first message is larger than the socket holds, so the others queue
    // behind it; each is several sends long.
    std::vector<std::vector<std::byte>> messages;
    messages.push_back(pattern(1 << 20, 1));
    for (std::uint32_t i = 2; i <= 6; ++i) {
        messages.push_back(pattern(100'000 + i, i));
    }
    auto body = [&]() -> Task<bool> {
        auto [a, b, c, d, e, f, whole] = co_await muxio::when_all(
            write_message(left, messages[0], {}, Live{}), write_message(left, messages[1], {}, Live{}),
            write_message(left, messages[2], {}, Live{}), write_message(left, messages[3], {}, Live{}),
            write_message(left, messages[4], {}, Live{}), write_message(left, messages[5], {}, Live{}),
            read_messages(right, messages, Live{}));
        for (const Outcome& outcome : {a, b, c, d, e, f}) {
            CHECK(outcome.ok);
        }
        co_return whole;
    };
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body())));
}

TEST_CASE_FIXTURE(Pair, "a cancelled queued write goes out of the queue and leaves the writes around it intact") {
    const std::vector<std::byte> first = pattern(1 << 20, 1);
    const std::vector<std::byte> dropped = pattern(5000, 2);
    const std::vector<std::byte> last = pattern(7000, 3);
    const std::vector<std::vector<std::byte>> expected{first, last};
    auto body = [&]() -> Task<void> {
        std::stop_source source;
        auto cancel_soon = [](Reactor& loop, std::stop_source& stop) -> Task<void> {
            co_await muxio::yield(loop);  // the three writes are queued now
            stop.request_stop();
        };
        auto [a, b, c, cancelled, whole] = co_await muxio::when_all(
            write_message(left, first, {}, Live{}), write_message(left, dropped, source.get_token(), Live{}),
            write_message(left, last, {}, Live{}), cancel_soon(reactor, source),
            read_messages(right, expected, Live{}));
        (void)cancelled;
        CHECK(a.ok);
        CHECK(b.cancelled);
        CHECK(c.ok);
        CHECK(whole);
        CHECK(muxio::test::drain(right.fileno()) == 0);  // nothing of the cancelled one
        co_await left.write_all(std::string_view{"z"});  // the stream is fine
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
}

TEST_CASE_FIXTURE(Pair, "a write cancelled part-way fails the writes queued behind it with ECANCELED, sending none") {
    const std::vector<std::byte> first = pattern(1 << 20, 1);
    const std::vector<std::byte> second = pattern(5000, 2);
    auto body = [&]() -> Task<void> {
        std::stop_source source;
        auto cancel_soon = [](Reactor& loop, std::stop_source& stop) -> Task<void> {
            co_await muxio::yield(loop);
            stop.request_stop();
        };
        auto [a, b, cancelled] =
            co_await muxio::when_all(write_message(left, first, source.get_token(), Live{}),
                                     write_message(left, second, {}, Live{}), cancel_soon(reactor, source));
        (void)cancelled;
        CHECK(a.cancelled);
        CHECK(b.error == std::errc::operation_canceled);
        const std::size_t out = muxio::test::drain(right.fileno());
        CHECK(out > 0);
        CHECK(out < first.size());  // the truncated first message only
        CHECK((co_await write_message(left, second, {}, Live{})).error == std::errc::operation_canceled);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
}

TEST_CASE_FIXTURE(Pair, "a peer that vanishes mid-write fails the current and every queued write with its error") {
    muxio::net_test::DefaultSigpipe sigpipe;  // the test dies if a write raises SIGPIPE
    const std::vector<std::byte> first = pattern(1 << 20, 1);
    const std::vector<std::byte> second = pattern(5000, 2);
    auto body = [&]() -> Task<void> {
        auto vanish = [](Reactor& loop, UnixStream& peer) -> Task<void> {
            co_await muxio::yield(loop);
            peer.close();
        };
        auto [a, b, c, closed] =
            co_await muxio::when_all(write_message(left, first, {}, Live{}), write_message(left, second, {}, Live{}),
                                     write_message(left, second, {}, Live{}), vanish(reactor, right));
        (void)closed;
        CHECK(a.error == std::errc::broken_pipe);
        CHECK(b.error == a.error);
        CHECK(c.error == a.error);
        CHECK((co_await write_message(left, second, {}, Live{})).error == a.error);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
}

TEST_CASE("a TCP peer that resets mid-write fails the current and queued writes with its error, no SIGPIPE") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    muxio::net_test::DefaultSigpipe sigpipe;
    Reactor reactor;
    auto listener = muxio::TcpListener::bind(reactor, muxio::SocketAddress::ipv4("127.0.0.1", 0));
    const std::vector<std::byte> first = pattern(8 << 20, 1);
    const std::vector<std::byte> second = pattern(5000, 2);
    auto body = [&]() -> Task<void> {
        muxio::TcpStream client = co_await muxio::TcpStream::connect(reactor, listener.local_address());
        muxio::TcpStream server = co_await listener.accept();
        auto vanish = [](Reactor& loop, muxio::TcpStream& peer) -> Task<void> {
            co_await muxio::yield(loop);
            co_await muxio::yield(loop);
            peer.close();  // unread data: the kernel answers with a reset
        };
        auto [a, b, closed] =
            co_await muxio::when_all(write_message(client, first, {}, Live{}),
                                     write_message(client, second, {}, Live{}), vanish(reactor, server));
        (void)closed;
        CHECK((a.error == std::errc::connection_reset || a.error == std::errc::broken_pipe));
        CHECK(b.error == a.error);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
}

TEST_CASE_FIXTURE(Pair, "closing a stream ends its queued writes with Cancelled and leaks nothing") {
    const std::vector<std::byte> first = pattern(1 << 20, 1);
    const std::vector<std::byte> second = pattern(5000, 2);
    auto body = [&]() -> Task<void> {
        auto close_soon = [](Reactor& loop, UnixStream& stream) -> Task<void> {
            co_await muxio::yield(loop);
            stream.close();
        };
        auto [a, b, c, closed] =
            co_await muxio::when_all(write_message(left, first, {}, Live{}), write_message(left, second, {}, Live{}),
                                     write_message(left, second, {}, Live{}), close_soon(reactor, left));
        (void)closed;
        CHECK(a.cancelled);
        CHECK(b.cancelled);
        CHECK(c.cancelled);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
}

TEST_CASE_FIXTURE(Pair, "a timed-out queued write ends alone while the write before it finishes") {
    // with_timeout cancels the queued write's task: it goes out of the queue
    // before it sent anything, so the stream stays usable.
    const std::vector<std::byte> first = pattern(1 << 20, 1);
    const std::vector<std::byte> second = pattern(5000, 2);
    auto body = [&]() -> Task<void> {
        auto timed = [](Reactor& loop, UnixStream& stream, std::span<const std::byte> data) -> Task<bool> {
            try {
                co_await muxio::with_timeout(loop, 1ms, Task<void>{stream.write_all(data)});
            } catch (const muxio::TimeoutError&) {
                co_return true;
            }
            co_return false;
        };
        auto drain_later = [](Reactor& loop, UnixStream& reader, std::span<const std::byte> data) -> Task<bool> {
            co_await muxio::sleep_for(loop, 20ms);  // after the timeout
            std::vector<std::byte> got(data.size());
            co_await reader.read_exact(got);
            co_return std::equal(got.begin(), got.end(), data.begin(), data.end());
        };
        auto [a, timed_out, whole] = co_await muxio::when_all(
            write_message(left, first, {}, Live{}), timed(reactor, left, second), drain_later(reactor, right, first));
        CHECK(a.ok);
        CHECK(timed_out);
        CHECK(whole);
        CHECK(muxio::test::drain(right.fileno()) == 0);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
}

TEST_CASE("closing the reactor under queued writes frees their frames and leaves the stream closable") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto [left, right] = UnixStream::pair(reactor);
    const std::vector<std::byte> first = pattern(1 << 20, 1);
    const std::vector<std::byte> second = pattern(5000, 2);
    auto writer = [](UnixStream& stream, std::span<const std::byte> data, Live /*held*/) -> Task<void> {
        co_await stream.write_all(data);
    };
    muxio::spawn(reactor, writer(left, first, Live{}));
    muxio::spawn(reactor, writer(left, second, Live{}));
    muxio::spawn(reactor, writer(left, second, Live{}));
    reactor.run_once(0ms);  // each one runs: the first waits for room, the others queue
    reactor.run_once(0ms);
    CHECK(muxio::net_test::write_waits(reactor, left.fileno()));
    reactor.close();  // destroys the spawned frames, the head's first
    left.close();
    right.close();
}

TEST_CASE_FIXTURE(Pair, "a stop from another thread takes a queued write out of the queue, the others intact") {
    const std::vector<std::byte> first = pattern(1 << 20, 1);
    const std::vector<std::byte> dropped = pattern(5000, 2);
    const std::vector<std::byte> last = pattern(7000, 3);
    const std::vector<std::vector<std::byte>> expected{first, last};
    auto body = [&]() -> Task<void> {
        std::stop_source source;
        auto stop_from_thread = [](Reactor& loop, std::stop_source& stop) -> Task<void> {
            co_await muxio::yield(loop);  // the three writes are queued now
            std::thread{[&stop] { stop.request_stop(); }}.join();
        };
        auto [a, b, c, stopped, whole] = co_await muxio::when_all(
            write_message(left, first, {}, Live{}), write_message(left, dropped, source.get_token(), Live{}),
            write_message(left, last, {}, Live{}), stop_from_thread(reactor, source),
            read_messages(right, expected, Live{}));
        (void)stopped;
        CHECK(a.ok);
        CHECK(b.cancelled);
        CHECK(c.ok);
        CHECK(whole);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body()));
}

namespace {

// A spawned write that records its id in `ended` with how it ended.
Task<void> logged_write(muxio::StreamSocket& stream, std::span<const std::byte> message, std::stop_token token, int id,
                        std::vector<std::pair<int, std::string>>& ended, Live /*held*/) {
    std::string how = "ok";
    try {
        co_await stream.write_all(message, std::move(token));
    } catch (const muxio::Cancelled&) {
        how = "cancelled";
    } catch (const std::system_error& error) {
        how = error.code().message();
    }
    ended.emplace_back(id, std::move(how));
}

Task<void> await_held(Task<void>& held) {
    co_await held;
}

// Runs iterations until `count` writes ended, at most a hundred.
void run_until_ended(Reactor& reactor, const std::vector<std::pair<int, std::string>>& ended, std::size_t count) {
    for (int i = 0; i < 100 && ended.size() < count; ++i) {
        reactor.run_once(1s);
    }
}

}  // namespace

TEST_CASE_FIXTURE(Pair, "writes queued behind a blocked write hold no timer of the reactor, nor any callback") {
    const std::vector<std::byte> first = pattern(1 << 20, 1);
    const std::vector<std::byte> second = pattern(5000, 2);
    const std::vector<std::byte> third = pattern(6000, 3);
    const std::vector<std::byte> fourth = pattern(7000, 4);
    std::vector<std::pair<int, std::string>> ended;
    muxio::spawn(reactor, logged_write(left, first, {}, 1, ended, Live{}));
    muxio::spawn(reactor, logged_write(left, second, {}, 2, ended, Live{}));
    muxio::spawn(reactor, logged_write(left, third, {}, 3, ended, Live{}));
    muxio::spawn(reactor, logged_write(left, fourth, {}, 4, ended, Live{}));
    reactor.run_once(0ms);  // the first waits for room, the three others queue behind it
    const muxio::ReactorStats stats = reactor.stats();
    CHECK(stats.timers == 0);
    CHECK(stats.soon_callbacks == 0);
    // The head's, on the watch; on the completion path its send is in flight instead.
    CHECK(stats.writers == (muxio::net_test::writes_on_completions(reactor) ? 0 : 1));
    CHECK(muxio::net_test::write_waits(reactor, left.fileno()));
    CHECK(ended.empty());
    CHECK(muxio::run_until_complete(
        reactor, muxio::with_timeout(reactor, 30s, read_messages(right, {first, second, third, fourth}, Live{}))));
    run_until_ended(reactor, ended, 4);
    const std::vector<std::pair<int, std::string>> expected{{1, "ok"}, {2, "ok"}, {3, "ok"}, {4, "ok"}};
    CHECK(ended == expected);
    CHECK(reactor.stats().timers == 0);
}

TEST_CASE_FIXTURE(Pair, "a parked write stopped through its token ends with Cancelled in a later iteration") {
    const std::vector<std::byte> first = pattern(1 << 20, 1);
    const std::vector<std::byte> second = pattern(5000, 2);
    const std::vector<std::byte> third = pattern(6000, 3);
    std::vector<std::pair<int, std::string>> ended;
    std::stop_source source;
    muxio::spawn(reactor, logged_write(left, first, {}, 1, ended, Live{}));
    muxio::spawn(reactor, logged_write(left, second, source.get_token(), 2, ended, Live{}));
    muxio::spawn(reactor, logged_write(left, third, {}, 3, ended, Live{}));
    reactor.run_once(0ms);
    source.request_stop();
    CHECK(ended.empty());  // posted to the loop, not run inside request_stop()
    run_until_ended(reactor, ended, 1);
    REQUIRE(ended.size() == 1);
    CHECK(ended[0] == std::pair<int, std::string>{2, "cancelled"});
    CHECK(muxio::run_until_complete(reactor,
                                    muxio::with_timeout(reactor, 30s, read_messages(right, {first, third}, Live{}))));
    run_until_ended(reactor, ended, 3);
    const std::vector<std::pair<int, std::string>> expected{{2, "cancelled"}, {1, "ok"}, {3, "ok"}};
    CHECK(ended == expected);
    CHECK(muxio::test::drain(right.fileno()) == 0);
}

TEST_CASE_FIXTURE(Pair, "a parked write whose task is destroyed leaves the writes around it queued and intact") {
    const std::vector<std::byte> first = pattern(1 << 20, 1);
    const std::vector<std::byte> dropped = pattern(5000, 2);
    const std::vector<std::byte> third = pattern(6000, 3);
    std::vector<std::pair<int, std::string>> ended;
    muxio::spawn(reactor, logged_write(left, first, {}, 1, ended, Live{}));
    reactor.run_once(0ms);  // the head waits for room
    // Iteration 1 starts the dropped write (it parks) and spawns the third,
    // which parks behind it in iteration 2; the loop then stops, and
    // run_until_complete destroys the dropped write's frame while parked.
    reactor.call_soon([&] {
        muxio::spawn(reactor, logged_write(left, third, {}, 3, ended, Live{}));
        reactor.call_soon([&] { reactor.stop(); });
    });
    CHECK_THROWS_AS(muxio::run_until_complete(reactor, logged_write(left, dropped, {}, 2, ended, Live{})),
                    std::logic_error);
    CHECK(ended.empty());
    CHECK(reactor.stats().timers == 0);
    CHECK(muxio::run_until_complete(reactor,
                                    muxio::with_timeout(reactor, 30s, read_messages(right, {first, third}, Live{}))));
    run_until_ended(reactor, ended, 2);
    const std::vector<std::pair<int, std::string>> expected{{1, "ok"}, {3, "ok"}};
    CHECK(ended == expected);
    CHECK(muxio::test::drain(right.fileno()) == 0);  // nothing of the dropped one
}

TEST_CASE("writes parked when the reactor closes can be destroyed after the reactor, in any order") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    const std::vector<std::byte> first = pattern(1 << 20, 1);
    const std::vector<std::byte> second = pattern(5000, 2);
    std::vector<std::pair<int, std::string>> ended;
    // Held by the test, so the reactor's close() does not destroy them.
    std::optional<Task<void>> head;
    std::optional<Task<void>> middle;
    std::optional<Task<void>> last;
    std::optional<Reactor> reactor{std::in_place};
    std::optional<std::pair<UnixStream, UnixStream>> streams{UnixStream::pair(*reactor)};
    UnixStream& left = streams->first;
    head.emplace(logged_write(left, first, {}, 1, ended, Live{}));
    middle.emplace(logged_write(left, second, {}, 2, ended, Live{}));
    last.emplace(logged_write(left, second, {}, 3, ended, Live{}));
    muxio::spawn(*reactor, await_held(*head));
    muxio::spawn(*reactor, await_held(*middle));
    muxio::spawn(*reactor, await_held(*last));
    reactor->run_once(0ms);  // the head waits for room, the two others are parked
    REQUIRE(muxio::net_test::write_waits(*reactor, left.fileno()));
    reactor->close();
    reactor.reset();
    middle.reset();  // a parked one first, then the head, which hands over to nobody
    head.reset();
    last.reset();
    CHECK(ended.empty());
    streams.reset();
}
