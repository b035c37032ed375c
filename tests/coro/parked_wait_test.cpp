// A parked wait: suspended without any registration on the reactor, ended by
// its owner's wake() or by a stop request, forgotten when the reactor closes.
#include <chrono>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>

#include <doctest/doctest.h>

#include "coro/coro_support.hpp"
#include "muxio/awaitables.hpp"
#include "muxio/error.hpp"
#include "muxio/run.hpp"
#include "muxio/task.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::Task;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::detail::ReactorWait;
using muxio::test::FdLeakCheck;

namespace {

// What a parked task saw: `wait` while it is suspended, then how it ended.
struct Parked {
    ReactorWait* wait = nullptr;
    int resumed = 0;
    std::string outcome;
};

Task<void> park(Reactor& reactor, std::stop_token token, Parked& parked, Live /*held*/) {
    ReactorWait wait{reactor, ReactorWait::Kind::parked, -1, {}, std::move(token)};
    parked.wait = &wait;
    try {
        co_await wait;
        parked.outcome = "woken";
    } catch (const muxio::Cancelled&) {
        parked.outcome = "cancelled";
    }
    parked.wait = nullptr;
    ++parked.resumed;
}

Task<void> await_held(Task<void>& held) {
    co_await held;
}

bool holds_nothing(const Reactor& reactor) {
    const muxio::ReactorStats stats = reactor.stats();
    return stats.timers == 0 && stats.soon_callbacks == 0 && stats.descriptors == 0 && reactor.scheduled_count() == 0;
}

// Runs iterations until `parked` resumed, at most ten.
void run_until_resumed(Reactor& reactor, const Parked& parked) {
    for (int i = 0; i < 10 && parked.resumed == 0; ++i) {
        reactor.run_once(1s);
    }
}

}  // namespace

TEST_CASE("a parked wait holds no timer, callback or descriptor and resumes in the next iteration once woken") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    Parked parked;
    muxio::spawn(reactor, park(reactor, {}, parked, Live{}));
    reactor.run_once(0s);
    REQUIRE(parked.wait != nullptr);
    CHECK(holds_nothing(reactor));
    for (int i = 0; i < 3; ++i) {
        CHECK(reactor.run_once(0s) == 0);  // nothing resumes it on its own
    }
    CHECK(parked.resumed == 0);
    CHECK(parked.wait->wake());
    CHECK(parked.resumed == 0);  // posted, not inline
    CHECK(reactor.stats().soon_callbacks == 1);
    reactor.run_once(0s);
    CHECK(parked.resumed == 1);
    CHECK(parked.outcome == "woken");
    CHECK(holds_nothing(reactor));
}

TEST_CASE("a stop request for a parked wait resumes it with Cancelled from the loop, never inline") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    std::stop_source source;
    Parked parked;
    muxio::spawn(reactor, park(reactor, source.get_token(), parked, Live{}));
    reactor.run_once(0s);
    REQUIRE(parked.wait != nullptr);
    source.request_stop();
    CHECK(parked.resumed == 0);
    CHECK_FALSE(parked.wait->wake());  // the stop request came first
    run_until_resumed(reactor, parked);
    CHECK(parked.resumed == 1);
    CHECK(parked.outcome == "cancelled");
    CHECK(holds_nothing(reactor));
}

TEST_CASE("the ambient stop token of a parked wait's task cancels it") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    std::stop_source source;
    Parked parked;
    muxio::spawn(reactor, park(reactor, {}, parked, Live{}), source.get_token());
    reactor.run_once(0s);
    REQUIRE(parked.wait != nullptr);
    source.request_stop();
    run_until_resumed(reactor, parked);
    CHECK(parked.outcome == "cancelled");
}

TEST_CASE("a stop request after wake does not cancel the woken parked wait") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    std::stop_source source;
    Parked parked;
    muxio::spawn(reactor, park(reactor, source.get_token(), parked, Live{}));
    reactor.run_once(0s);
    REQUIRE(parked.wait != nullptr);
    CHECK(parked.wait->wake());
    CHECK_FALSE(parked.wait->wake());  // woken already
    source.request_stop();
    run_until_resumed(reactor, parked);
    CHECK(parked.resumed == 1);
    CHECK(parked.outcome == "woken");
    CHECK(holds_nothing(reactor));
}

TEST_CASE("a parked wait already stopped when awaited does not suspend") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    std::stop_source source;
    source.request_stop();
    Parked parked;
    muxio::run_until_complete(reactor, park(reactor, source.get_token(), parked, Live{}));
    CHECK(parked.outcome == "cancelled");
    CHECK(holds_nothing(reactor));
}

TEST_CASE("wake is refused for a wait that is not parked or not suspended") {
    FdLeakCheck leak_check;
    Reactor reactor;
    ReactorWait sleeping = muxio::sleep_for(reactor, 1h);
    CHECK_THROWS_WITH_AS(sleeping.wake(), doctest::Contains("not a pending parked wait"), std::logic_error);
    ReactorWait parked{reactor, ReactorWait::Kind::parked, -1, {}, {}};
    CHECK_THROWS_AS(parked.wake(), std::logic_error);  // never awaited
    CHECK(holds_nothing(reactor));
}

TEST_CASE("wake from another thread is refused and leaves the parked wait to be woken from the loop") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    Parked parked;
    muxio::spawn(reactor, park(reactor, {}, parked, Live{}));
    reactor.run_once(0s);
    REQUIRE(parked.wait != nullptr);
    bool refused = false;
    // While the loop runs, only its thread may use the reactor.
    reactor.call_soon([&] {
        std::thread{[&] {
            try {
                (void)parked.wait->wake();
            } catch (const std::logic_error&) {
                refused = true;
            }
        }}.join();
    });
    reactor.run_once(0s);
    CHECK(refused);
    CHECK(parked.resumed == 0);
    CHECK(holds_nothing(reactor));
    CHECK(parked.wait->wake());
    run_until_resumed(reactor, parked);
    CHECK(parked.outcome == "woken");
}

TEST_CASE("a parked wait's frame destroyed while pending, woken or cancelled leaves nothing to run") {
    enum class Before { nothing, wake, stop };
    for (const Before before : {Before::nothing, Before::wake, Before::stop}) {
        CAPTURE(static_cast<int>(before));
        FdLeakCheck leak_check;
        FrameLeakCheck frame_check;
        Reactor reactor;
        std::stop_source source;
        Parked parked;
        // Iteration 1 starts the task, which parks; iteration 2 wakes or
        // stops it and stops the loop, so run_until_complete destroys the
        // frame before the posted resumption runs.
        reactor.call_soon([&] {
            reactor.call_soon([&] {
                REQUIRE(parked.wait != nullptr);
                if (before == Before::wake) {
                    CHECK(parked.wait->wake());
                } else if (before == Before::stop) {
                    source.request_stop();
                }
                reactor.stop();
            });
        });
        CHECK_THROWS_AS(muxio::run_until_complete(reactor, park(reactor, source.get_token(), parked, Live{})),
                        std::logic_error);
        CHECK(parked.resumed == 0);
        CHECK(reactor.stats().soon_callbacks == 0);
        CHECK(reactor.scheduled_count() == 0);
        reactor.run_once(0s);  // a resumption left behind would touch the freed frame here
        CHECK(parked.resumed == 0);
    }
}

TEST_CASE("closing the reactor forgets a parked wait: its task can be stopped and destroyed after the reactor") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    std::stop_source source;
    Parked parked;
    std::optional<Task<void>> held;
    {
        Reactor reactor;
        held.emplace(park(reactor, source.get_token(), parked, Live{}));
        muxio::spawn(reactor, await_held(*held));
        reactor.run_once(0s);
        REQUIRE(parked.wait != nullptr);
        reactor.close();
        source.request_stop();  // heard by nobody: the wait stopped listening at close
        CHECK(parked.resumed == 0);
    }
    CHECK(parked.resumed == 0);
    held.reset();
}

TEST_CASE("a stop request from another thread resumes a parked wait with Cancelled") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    std::stop_source source;
    Parked parked;
    muxio::spawn(reactor, park(reactor, source.get_token(), parked, Live{}));
    reactor.run_once(0s);
    REQUIRE(parked.wait != nullptr);
    std::thread{[&source] { source.request_stop(); }}.join();
    run_until_resumed(reactor, parked);
    CHECK(parked.resumed == 1);
    CHECK(parked.outcome == "cancelled");
    CHECK(holds_nothing(reactor));
}

TEST_CASE("a wake racing with a stop request from another thread resumes the parked wait exactly once") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    int woken = 0;
    int cancelled = 0;
    for (int round = 0; round < 200; ++round) {
        std::stop_source source;
        Parked parked;
        muxio::spawn(reactor, park(reactor, source.get_token(), parked, Live{}));
        reactor.run_once(0s);
        REQUIRE(parked.wait != nullptr);
        std::thread stopper{[&source] { source.request_stop(); }};
        const bool won = parked.wait->wake();
        stopper.join();
        run_until_resumed(reactor, parked);
        REQUIRE(parked.resumed == 1);
        CHECK(parked.outcome == (won ? "woken" : "cancelled"));
        (won ? woken : cancelled) += 1;
        reactor.run_once(0s);  // nothing more for this round
        CHECK(parked.resumed == 1);
    }
    CHECK(woken + cancelled == 200);
    CHECK(holds_nothing(reactor));
}
