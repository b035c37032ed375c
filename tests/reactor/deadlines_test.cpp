// Deadlines and timeouts at the ends of the clock's range: call_at and
// call_later with the earliest and latest time points and durations,
// run_once with extreme timeouts, sleeps, and the embedding timerfd. Each
// on every selector and on every clock: steady_clock and an injected one
// anywhere in its range. Nothing may wrap around: a due timer runs at once,
// a far one neither fires nor shortens a wait.
#include <poll.h>

#include <chrono>
#include <cmath>
#include <cstddef>
#include <future>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/awaitables.hpp"
#include "muxio/reactor.hpp"
#include "muxio/run.hpp"
#include "muxio/task.hpp"
#include "reactor/reactor_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::Task;
using muxio::reactor_test::embeddable_selectors;
using muxio::reactor_test::ManualClock;
using muxio::reactor_test::with_selector;
using muxio::test::FdLeakCheck;
using muxio::test::SocketPair;
using muxio::test::Stopwatch;
using Duration = Reactor::Duration;
using TimePoint = Reactor::TimePoint;

namespace {

// A wait that should end at once is checked against this: a hang check, not
// a measure of speed.
constexpr Duration prompt = 1s;

// Where a reactor's clock stands: steady_clock, or a manual clock at a given
// time point.
struct ClockCase {
    std::string name;
    std::optional<TimePoint> manual_at;
};

std::vector<ClockCase> clock_cases() {
    return {
        {"steady_clock", std::nullopt},
        // Ahead of CLOCK_MONOTONIC: a deadline this clock calls past is
        // still in the future for the kernel.
        {"manual clock ahead of the kernel's", TimePoint::clock::now() + 10h},
        {"manual clock near its earliest", TimePoint::min() + 1h},
        {"manual clock near its latest", TimePoint::max() - 1h},
    };
}

// A reactor on `selector` reading the clock `clock_case` names.
struct ClockedReactor {
    ClockedReactor(const std::string& selector, const ClockCase& clock_case) : reactor{options(selector, clock_case)} {}

    muxio::ReactorOptions options(const std::string& selector, const ClockCase& clock_case) {
        if (!clock_case.manual_at) {
            return with_selector(selector);
        }
        clock.set(*clock_case.manual_at);
        return clock.options(selector);
    }

    ManualClock clock;
    Reactor reactor;
};

// Runs the rest of the block once per (selector, clock) pair, each its own SUBCASE.
#define FOR_EACH_SELECTOR_AND_CLOCK(selector, clock_case)                         \
    for (const std::string& selector : ::muxio::reactor_test::usable_selectors()) \
        for (const ClockCase& clock_case : clock_cases())                         \
    SUBCASE((selector + ", " + clock_case.name).c_str())

// Calls call_soon_threadsafe on `reactor` once `after` has passed, unless
// released first: wakes a run_once() that blocks, so that a test which
// fails by blocking fails in bounded time. With `stop`, stop_threadsafe(),
// which also ends a run().
class WakeAfter {
public:
    WakeAfter(Reactor& reactor, Duration after, bool stop = false)
        : thread_{[&reactor, after, stop, released = released_.get_future()] {
              if (released.wait_for(after) == std::future_status::timeout) {
                  if (stop) {
                      reactor.stop_threadsafe();
                  } else {
                      reactor.call_soon_threadsafe([] {});
                  }
              }
          }} {}
    ~WakeAfter() {
        released_.set_value();
        thread_.join();
    }
    WakeAfter(const WakeAfter&) = delete;
    WakeAfter& operator=(const WakeAfter&) = delete;

private:
    std::promise<void> released_;
    std::thread thread_;
};

// Whether `fd` polls readable within `timeout`.
bool readable_within(int fd, std::chrono::milliseconds timeout) {
    pollfd entry{fd, POLLIN, 0};
    const int count = ::poll(&entry, 1, static_cast<int>(timeout.count()));
    REQUIRE(count >= 0);
    return count == 1 && (entry.revents & POLLIN) != 0;
}

// Whether the embed fd of `inner` stays quiet once `inner` has nothing to
// do. One iteration first: with io_uring, an iteration that drained the
// reactor's own descriptors leaves a stale completion behind, which makes the
// ring readable once more.
bool settled(Reactor& inner, int fd) {
    CHECK(inner.run_once(0s) == 0);
    return !readable_within(fd, 20ms);
}

}  // namespace

TEST_CASE("a deadline at the start of the clock's range is due at once") {
    FdLeakCheck leak_check;
    FOR_EACH_SELECTOR_AND_CLOCK(selector, clock_case) {
        ClockedReactor clocked{selector, clock_case};
        Reactor& reactor = clocked.reactor;
        int ran = 0;
        reactor.call_at(TimePoint::min(), [&] { ++ran; });
        reactor.call_at(TimePoint::min() + 1ns, [&] { ++ran; });
        reactor.call_at(reactor.time() - 1ns, [&] { ++ran; });
        REQUIRE(reactor.time_to_next_work().has_value());
        CHECK(*reactor.time_to_next_work() == Duration::zero());
        const Stopwatch stopwatch;
        const WakeAfter safety_net{reactor, 5s};
        CHECK(reactor.run_once() == 3);
        CHECK(ran == 3);
        CHECK(stopwatch.elapsed() < prompt);
        CHECK_FALSE(reactor.time_to_next_work().has_value());
    }
}

TEST_CASE("call_later with a delay of zero or less is due at once, however negative") {
    FdLeakCheck leak_check;
    FOR_EACH_SELECTOR_AND_CLOCK(selector, clock_case) {
        ClockedReactor clocked{selector, clock_case};
        Reactor& reactor = clocked.reactor;
        int ran = 0;
        reactor.call_later(Duration::min(), [&] { ++ran; });
        reactor.call_later(Duration::min() + 1ns, [&] { ++ran; });
        reactor.call_later(-1h, [&] { ++ran; });
        reactor.call_later(Duration::zero(), [&] { ++ran; });
        reactor.call_later(std::chrono::hours::min(), [&] { ++ran; });
        reactor.call_later(std::chrono::duration<double>{-1e300}, [&] { ++ran; });
        reactor.call_later(std::chrono::duration<double>{-HUGE_VAL}, [&] { ++ran; });
        CHECK(*reactor.time_to_next_work() == Duration::zero());
        const Stopwatch stopwatch;
        const WakeAfter safety_net{reactor, 5s};
        CHECK(reactor.run_once() == 7);
        CHECK(ran == 7);
        CHECK(stopwatch.elapsed() < prompt);
    }
}

TEST_CASE("a deadline at the end of the clock's range never comes and cuts no wait short") {
    FdLeakCheck leak_check;
    FOR_EACH_SELECTOR_AND_CLOCK(selector, clock_case) {
        ClockedReactor clocked{selector, clock_case};
        Reactor& reactor = clocked.reactor;
        int ran = 0;
        // Each saturates at TimePoint::max() or lies before it.
        reactor.call_at(TimePoint::max(), [&] { ++ran; });
        reactor.call_at(TimePoint::max() - 1ns, [&] { ++ran; });
        reactor.call_later(Duration::max(), [&] { ++ran; });
        reactor.call_later(Duration::max() - 1ns, [&] { ++ran; });
        reactor.call_later(std::chrono::hours::max(), [&] { ++ran; });
        reactor.call_later(std::chrono::duration<double>{1e300}, [&] { ++ran; });
        reactor.call_later(std::chrono::duration<double>{HUGE_VAL}, [&] { ++ran; });
        reactor.call_later(2h, [&] { ++ran; });
        CHECK(reactor.scheduled_count() == 8);

        // The nearest is 2 h away, or 1 h where the clock is 1 h from its end.
        const auto left = reactor.time_to_next_work();
        REQUIRE(left.has_value());
        CHECK(*left >= 1h - 1ns);
        CHECK(*left <= 2h);

        CHECK(reactor.run_once(0s) == 0);
        for (const Duration timeout : {Duration{20ms}, Duration{2ms}}) {
            CAPTURE(timeout.count());
            const Stopwatch stopwatch;
            CHECK(reactor.run_once(timeout) == 0);
            CHECK(stopwatch.elapsed() >= timeout);
        }
        {
            // No timeout: blocks until woken, not a moment less.
            const Stopwatch stopwatch;
            const WakeAfter waker{reactor, 20ms};
            CHECK(reactor.run_once() == 1);
            CHECK(stopwatch.elapsed() >= 20ms);
        }
        CHECK(ran == 0);
    }
}

TEST_CASE("time_to_next_work saturates instead of wrapping around") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    reactor.call_at(TimePoint::max(), [] {});

    // From the start of the range, the end is further than a Duration holds.
    clock.set(TimePoint::min());
    CHECK(*reactor.time_to_next_work() == Duration::max());
    clock.set(TimePoint::min() + 1h);
    CHECK(*reactor.time_to_next_work() == Duration::max());
    clock.set(TimePoint{});
    CHECK(*reactor.time_to_next_work() == Duration::max());
    clock.set(TimePoint{} - 1ns);
    CHECK(*reactor.time_to_next_work() == Duration::max());
    clock.set(TimePoint::max() - 1h);
    CHECK(*reactor.time_to_next_work() == 1h);
    clock.set(TimePoint::max());
    CHECK(*reactor.time_to_next_work() == Duration::zero());
    CHECK(reactor.run_once(0s) == 1);

    reactor.call_at(TimePoint::min(), [] {});
    CHECK(*reactor.time_to_next_work() == Duration::zero());
    clock.set(TimePoint::min());
    CHECK(*reactor.time_to_next_work() == Duration::zero());
    CHECK(reactor.run_once(0s) == 1);
}

TEST_CASE("call_later from a clock near the end of its range saturates") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    clock.set(TimePoint::max() - 1h);
    int ran = 0;
    reactor.call_later(2h, [&] { ++ran; });
    reactor.call_later(Duration::max(), [&] { ++ran; });
    CHECK(*reactor.time_to_next_work() == 1h);
    clock.set(TimePoint::max() - 1ns);
    CHECK(reactor.run_once(0s) == 0);
    // Saturated at the end of the range: due only when the clock gets there.
    clock.set(TimePoint::max());
    CHECK(reactor.run_once(0s) == 2);
    CHECK(ran == 2);

    // From the start of the range the whole of a Duration fits.
    clock.set(TimePoint::min());
    reactor.call_later(Duration::max(), [&] { ++ran; });
    clock.set(TimePoint::min() + Duration::max() - 1ns);
    CHECK(*reactor.time_to_next_work() == 1ns);
    CHECK(reactor.run_once(0s) == 0);
    clock.advance(1ns);
    CHECK(reactor.run_once(0s) == 1);
    CHECK(ran == 3);
}

TEST_CASE("call_later refuses a delay that is not a number") {
    FdLeakCheck leak_check;
    Reactor reactor;
    CHECK_THROWS_AS(reactor.call_later(std::chrono::duration<double>{std::nan("")}, [] {}), std::invalid_argument);
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("run_once with extreme timeouts polls or waits, never fails or returns early") {
    FdLeakCheck leak_check;
    FOR_EACH_SELECTOR_AND_CLOCK(selector, clock_case) {
        ClockedReactor clocked{selector, clock_case};
        Reactor& reactor = clocked.reactor;
        // Zero or negative: poll.
        for (const Duration timeout : {Duration::min(), Duration::min() + 1ns, Duration{-1h}, Duration{-1ns}}) {
            CAPTURE(timeout.count());
            const Stopwatch stopwatch;
            CHECK(reactor.run_once(timeout) == 0);
            CHECK(stopwatch.elapsed() < prompt);
        }
        // The largest: returns for ready I/O at once.
        SocketPair pair;
        muxio::test::write_all(pair.left.get(), "x");
        int reads = 0;
        reactor.add_reader(pair.right.get(), [&] { ++reads; });
        for (const Duration timeout : {Duration::max(), Duration::max() - 1ns, Duration{Duration::max() / 2}}) {
            CAPTURE(timeout.count());
            const Stopwatch stopwatch;
            CHECK(reactor.run_once(timeout) == 1);
            CHECK(stopwatch.elapsed() < prompt);
        }
        CHECK(reads == 3);
        reactor.remove_reader(pair.right.get());
        // The largest with nothing ready: waits until woken.
        for (const Duration timeout : {Duration::max(), Duration::max() - 1ns}) {
            CAPTURE(timeout.count());
            const Stopwatch stopwatch;
            const WakeAfter waker{reactor, 20ms};
            CHECK(reactor.run_once(timeout) == 1);
            CHECK(stopwatch.elapsed() >= 20ms);
        }
    }
}

TEST_CASE("run_once with the largest timeout returns for a near timer") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(selector) {
        Reactor reactor{with_selector(selector)};
        bool fired = false;
        // Started first: the deadline counts from the call, not from after it.
        const Stopwatch stopwatch;
        reactor.call_later(2ms, [&] { fired = true; });
        const WakeAfter safety_net{reactor, 5s};
        for (int iteration = 0; iteration < 5 && !fired; ++iteration) {
            reactor.run_once(Duration::max());
        }
        CHECK(fired);
        CHECK(stopwatch.elapsed() >= 2ms);
        CHECK(stopwatch.elapsed() < prompt);
    }
}

TEST_CASE("the embed fd is readable at once for a due timer and not for a far one") {
    FdLeakCheck leak_check;
    for (const std::string& selector : embeddable_selectors()) {
        for (const ClockCase& clock_case : clock_cases()) {
            SUBCASE((selector + ", " + clock_case.name).c_str()) {
                ClockedReactor clocked{selector, clock_case};
                Reactor& inner = clocked.reactor;
                const int fd = inner.embed_fd();
                CHECK_FALSE(readable_within(fd, 0ms));

                // Far: never readable on its account.
                inner.call_at(TimePoint::max(), [] {});
                inner.call_later(Duration::max(), [] {});
                inner.call_later(1h, [] {});
                CHECK_FALSE(readable_within(fd, 20ms));
                CHECK(inner.run_once(0s) == 0);
                CHECK_FALSE(readable_within(fd, 20ms));

                // Due, however early: readable at once, and no longer once run.
                for (const TimePoint when :
                     {TimePoint::min(), TimePoint::min() + 1ns, inner.time() - 1s, inner.time()}) {
                    CAPTURE(when.time_since_epoch().count());
                    bool ran = false;
                    inner.call_at(when, [&] { ran = true; });
                    const Stopwatch stopwatch;
                    CHECK(readable_within(fd, 5000ms));
                    CHECK(stopwatch.elapsed() < prompt);
                    CHECK(inner.run_once(0s) == 1);
                    CHECK(ran);
                    CHECK(settled(inner, fd));
                }
                for (const Duration delay : {Duration::min(), Duration{-1h}, Duration::zero()}) {
                    CAPTURE(delay.count());
                    bool ran = false;
                    inner.call_later(delay, [&] { ran = true; });
                    CHECK(readable_within(fd, 5000ms));
                    CHECK(inner.run_once(0s) == 1);
                    CHECK(ran);
                }
                CHECK(settled(inner, fd));
            }
        }
    }
}

TEST_CASE("the embed fd follows a near timer on an injected clock") {
    FdLeakCheck leak_check;
    for (const std::string& selector : embeddable_selectors()) {
        SUBCASE(selector.c_str()) {
            ManualClock clock;
            clock.set(TimePoint::clock::now() + 10h);
            Reactor inner{clock.options(selector)};
            const int fd = inner.embed_fd();
            // Armed for the time left on the injected clock, counted on the
            // kernel's: readable after about 5 ms, not 10 h.
            const Stopwatch stopwatch;
            inner.call_later(5ms, [] {});
            CHECK(readable_within(fd, 5000ms));
            CHECK(stopwatch.elapsed() >= 5ms);
            CHECK(stopwatch.elapsed() < prompt);
            // The injected clock has not moved: nothing is due yet.
            CHECK(inner.run_once(0s) == 0);
            clock.advance(5ms);
            CHECK(inner.run_once(0s) == 1);
            CHECK(settled(inner, fd));
        }
    }
}

TEST_CASE("sleeps at the ends of the clock's range resume at once or never") {
    FdLeakCheck leak_check;
    for (const ClockCase& clock_case : clock_cases()) {
        SUBCASE(clock_case.name.c_str()) {
            ClockedReactor clocked{"", clock_case};
            Reactor& reactor = clocked.reactor;
            const auto sleeper = [](Reactor& loop) -> Task<int> {
                co_await muxio::sleep_until(loop, TimePoint::min());
                co_await muxio::sleep_until(loop, loop.time() - 1h);
                co_await muxio::sleep_for(loop, Duration::min());
                co_await muxio::sleep_for(loop, std::chrono::hours::min());
                co_await muxio::sleep_for(loop, std::chrono::duration<double>{-HUGE_VAL});
                co_await muxio::sleep_for(loop, -1ns);
                co_return 6;
            };
            const Stopwatch stopwatch;
            const WakeAfter safety_net{reactor, 5s, true};
            CHECK(muxio::run_until_complete(reactor, sleeper(reactor)) == 6);
            CHECK(stopwatch.elapsed() < prompt);

            // Far: each sleep is a timer that is not due.
            bool woke = false;
            const auto far_sleeper = [](Reactor& loop, Duration delay, bool& done) -> Task<void> {
                co_await muxio::sleep_for(loop, delay);
                done = true;
            };
            for (const Duration delay : {Duration::max(), Duration::max() - 1ns, Duration{2h}}) {
                CAPTURE(delay.count());
                muxio::spawn(reactor, far_sleeper(reactor, delay, woke));
                CHECK(reactor.run_once(0s) == 1);  // starts the task, which sleeps
                REQUIRE(reactor.time_to_next_work().has_value());
                CHECK(*reactor.time_to_next_work() >= 1h);
                CHECK(reactor.run_once(2ms) == 0);
            }
            CHECK_FALSE(woke);
            // The sleeping tasks' frames are destroyed by close().
        }
    }
}

TEST_CASE("sleep_for refuses a delay that is not a number") {
    FdLeakCheck leak_check;
    Reactor reactor;
    CHECK_THROWS_AS((void)muxio::sleep_for(reactor, std::chrono::duration<double>{std::nan("")}),
                    std::invalid_argument);
}
