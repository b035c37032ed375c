// Cancellation of each kind of await through std::stop_token, from the loop
// and from another thread, racing with completion; and with_timeout().
#include <unistd.h>

#include <chrono>
#include <stop_token>
#include <string>
#include <thread>

#include <doctest/doctest.h>

#include "coro/coro_support.hpp"
#include "muxio/awaitables.hpp"
#include "muxio/combinators.hpp"
#include "muxio/error.hpp"
#include "muxio/run.hpp"
#include "muxio/task.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::Task;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::test::FdLeakCheck;
using muxio::test::SocketPair;
using muxio::test::Stopwatch;
using muxio::test::write_all;

namespace {

enum class Await { read, write, sleep, yield };

// Awaits one thing with `token`, counting its resumptions.
Task<std::string> await_one(Reactor& reactor, Await what, int fd, std::stop_token token, int& resumed, Live /*held*/) {
    try {
        switch (what) {
            case Await::read:
                co_await muxio::readable(reactor, fd, token);
                break;
            case Await::write:
                co_await muxio::writable(reactor, fd, token);
                break;
            case Await::sleep:
                co_await muxio::sleep_for(reactor, 1h, token);
                break;
            case Await::yield:
                co_await muxio::yield(reactor, token);
                break;
        }
    } catch (const muxio::Cancelled&) {
        ++resumed;
        co_return "cancelled";
    }
    ++resumed;
    co_return "ready";
}

Task<int> slow_value(Reactor& reactor, Reactor::Duration delay, int value) {
    co_await muxio::sleep_for(reactor, delay);
    co_return value;
}

}  // namespace

TEST_CASE("a stop request cancels each kind of await and removes its registration") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    muxio::test::fill_until_blocked(pair.left.get());  // so writable waits
    for (const Await what : {Await::read, Await::write, Await::sleep, Await::yield}) {
        CAPTURE(static_cast<int>(what));
        std::stop_source source;
        int resumed = 0;
        // Stopped from a callback queued before the task starts: a yield is
        // cancelled before its own callback can run.
        reactor.call_soon([&] { reactor.call_soon([&] { source.request_stop(); }); });
        const std::string outcome = muxio::run_until_complete(
            reactor, await_one(reactor, what, pair.left.get(), source.get_token(), resumed, Live{}));
        CHECK(outcome == "cancelled");
        CHECK(resumed == 1);
        CHECK_FALSE(reactor.has_reader(pair.left.get()));
        CHECK_FALSE(reactor.has_writer(pair.left.get()));
        CHECK(reactor.scheduled_count() == 0);
    }
}

TEST_CASE("a stopped token cancels a pending read and the coroutine resumes from the loop") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    std::stop_source source;
    int resumed = 0;
    bool stop_returned_first = false;
    reactor.call_later(1ms, [&] {
        source.request_stop();  // must not resume the coroutine inside this call
        stop_returned_first = resumed == 0;
    });
    CHECK(muxio::run_until_complete(reactor, await_one(reactor, Await::read, pair.left.get(), source.get_token(),
                                                       resumed, Live{})) == "cancelled");
    CHECK(stop_returned_first);
    CHECK(resumed == 1);
}

TEST_CASE("an already stopped token cancels an await without suspending") {
    FdLeakCheck leak_check;
    Reactor reactor;
    SocketPair pair;
    std::stop_source source;
    source.request_stop();
    int resumed = 0;
    CHECK(muxio::run_until_complete(reactor, await_one(reactor, Await::read, pair.left.get(), source.get_token(),
                                                       resumed, Live{})) == "cancelled");
    CHECK_FALSE(reactor.has_reader(pair.left.get()));
}

TEST_CASE("the ambient token of run_until_complete cancels a nested await") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    std::stop_source source;
    auto outer = [](Reactor& loop, int fd, int& resumed) -> Task<std::string> {
        // No token passed: the awaits listen to the task's ambient token.
        co_return co_await await_one(loop, Await::read, fd, {}, resumed, Live{});
    };
    int resumed = 0;
    reactor.call_later(1ms, [&] { source.request_stop(); });
    CHECK(muxio::run_until_complete(reactor, outer(reactor, pair.left.get(), resumed), source.get_token()) ==
          "cancelled");
    CHECK(resumed == 1);
}

TEST_CASE("a stop request from another thread cancels a pending read") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    std::stop_source source;
    int resumed = 0;
    std::thread stopper;
    reactor.call_soon([&] { stopper = std::thread{[&source] { source.request_stop(); }}; });
    CHECK(muxio::run_until_complete(reactor, await_one(reactor, Await::read, pair.left.get(), source.get_token(),
                                                       resumed, Live{})) == "cancelled");
    stopper.join();
    CHECK(resumed == 1);
    CHECK_FALSE(reactor.has_reader(pair.left.get()));
}

TEST_CASE("cancellation racing with readiness resumes the coroutine exactly once") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    // Both in the same iteration, in both orders: readiness first (data
    // already there when the stop comes) and the stop first.
    for (const bool data_first : {true, false}) {
        CAPTURE(data_first);
        std::stop_source source;
        int resumed = 0;
        reactor.call_soon([&] {
            reactor.call_soon([&] {
                if (data_first) {
                    write_all(pair.right.get(), "d");
                    source.request_stop();
                } else {
                    source.request_stop();
                    write_all(pair.right.get(), "d");
                }
            });
        });
        const std::string outcome = muxio::run_until_complete(
            reactor, await_one(reactor, Await::read, pair.left.get(), source.get_token(), resumed, Live{}));
        CHECK((outcome == "cancelled" || outcome == "ready"));
        for (int i = 0; i < 3; ++i) {
            reactor.run_once(0s);  // a late resumption would show here
        }
        CHECK(resumed == 1);
        CHECK_FALSE(reactor.has_reader(pair.left.get()));
        CHECK(muxio::test::drain(pair.left.get()) == 1);
    }
}

TEST_CASE("a cancellation from another thread racing with readiness resumes exactly once") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    for (int round = 0; round < 50; ++round) {
        std::stop_source source;
        int resumed = 0;
        std::thread stopper;
        reactor.call_soon([&] {
            stopper = std::thread{[&] {
                write_all(pair.right.get(), "r");
                source.request_stop();
            }};
        });
        (void)muxio::run_until_complete(
            reactor, await_one(reactor, Await::read, pair.left.get(), source.get_token(), resumed, Live{}));
        stopper.join();
        reactor.run_once(0s);
        CHECK(resumed == 1);
        CHECK(muxio::test::drain(pair.left.get()) == 1);
    }
}

TEST_CASE("with_timeout throws TimeoutError when the task takes too long") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    const Stopwatch watch;
    CHECK_THROWS_AS(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 10ms, slow_value(reactor, 1h, 1))),
                    muxio::TimeoutError);
    CHECK(watch.elapsed() >= 10ms);
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("with_timeout returns the value of a task that ends in time") {
    FdLeakCheck leak_check;
    Reactor reactor;
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 1h, slow_value(reactor, 1ms, 7))) == 7);
    CHECK(reactor.scheduled_count() == 0);
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 1h, [](Reactor& loop) -> Task<void> {
                                  co_await muxio::yield(loop);
                              }(reactor)));
}

TEST_CASE("with_timeout cancelled from outside throws Cancelled and not TimeoutError") {
    FdLeakCheck leak_check;
    Reactor reactor;
    std::stop_source source;
    reactor.call_later(1ms, [&] { source.request_stop(); });
    CHECK_THROWS_AS(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 1h, slow_value(reactor, 1h, 1)),
                                              source.get_token()),
                    muxio::Cancelled);
}

TEST_CASE("get_stop_token returns the ambient token of the task") {
    FdLeakCheck leak_check;
    Reactor reactor;
    std::stop_source source;
    const bool same = muxio::run_until_complete(
        reactor,
        [](std::stop_source& expected) -> Task<bool> {
            const std::stop_token token = co_await muxio::get_stop_token();
            co_return token == expected.get_token();
        }(source),
        source.get_token());
    CHECK(same);
}

namespace {

// Suspends forever on a read nobody satisfies, holding a Live and a nested
// task's frame, so a test sees every frame of the chain freed.
Task<void> read_forever(Reactor& reactor, int fd, Live /*held*/) {
    co_await muxio::readable(reactor, fd);
}
Task<void> nested_reader(Reactor& reactor, int fd, Live held) {
    co_await read_forever(reactor, fd, std::move(held));
}

}  // namespace

Task<void> sleep_long(Reactor& reactor, Live /*held*/) {
    co_await muxio::sleep_for(reactor, std::chrono::hours{1});
}

TEST_CASE("close destroys the frames of spawned tasks that have not ended") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    SocketPair pair;
    Reactor reactor;
    muxio::spawn(reactor, nested_reader(reactor, pair.left.get(), Live{}));
    muxio::spawn(reactor, sleep_long(reactor, Live{}));
    muxio::spawn(reactor, sleep_long(reactor, Live{}));  // never started: close frees it too
    CHECK(reactor.run_once(0s) == 3);
    CHECK(reactor.has_reader(pair.left.get()));
    CHECK(reactor.scheduled_count() == 2);  // the two sleeps' timers
    CHECK(Live::count() >= 3);
    reactor.close();
    CHECK_FALSE(reactor.has_reader(pair.left.get()));
}

TEST_CASE("a spawned task's frame destroyed at close removes its await's registration first") {
    // The reader is removed by the frame's destruction while the reactor is
    // still open: the selector then no longer watches the fd, which another
    // reactor can now read freely.
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    SocketPair pair;
    {
        Reactor reactor;
        muxio::spawn(reactor, read_forever(reactor, pair.left.get(), Live{}));
        CHECK(reactor.run_once(0s) == 1);
        CHECK(reactor.has_reader(pair.left.get()));
    }  // the destructor closes
    Reactor other;
    bool read = false;
    other.add_reader(pair.left.get(), [&] { read = true; });
    write_all(pair.right.get(), "x");
    CHECK(other.run_once(1s) == 1);
    CHECK(read);
    other.remove_reader(pair.left.get());
}

TEST_CASE("a spawned task that ended is not destroyed again at close") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    int ran = 0;
    auto quick = [](int& counter, Live /*held*/) -> Task<void> {
        ++counter;
        co_return;
    };
    for (int i = 0; i < 3; ++i) {
        muxio::spawn(reactor, quick(ran, Live{}));
    }
    CHECK(reactor.run_once(0s) == 3);
    CHECK(ran == 3);
    reactor.close();  // ASan reports a double destroy here if the frames stayed linked
}
