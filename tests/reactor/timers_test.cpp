// Timers on the real clock, on every selector: a timer never fires before
// its deadline, sub-millisecond deadlines are honoured without busy waiting,
// and run_once(timeout) waits at least its timeout.
#include <chrono>
#include <cstddef>
#include <optional>
#include <string>

#include <doctest/doctest.h>

#include "muxio/reactor.hpp"
#include "reactor/reactor_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::reactor_test::with_selector;
using muxio::test::FdLeakCheck;
using muxio::test::Stopwatch;
using Clock = std::chrono::steady_clock;

TEST_CASE("a timer never fires before its deadline") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        for (const std::chrono::microseconds delay : {300us, 1000us, 2500us}) {
            CAPTURE(delay.count());
            std::optional<Clock::time_point> later_fired;
            std::optional<Clock::time_point> at_fired;
            const Clock::time_point start = Clock::now();
            reactor.call_later(delay, [&] { later_fired = Clock::now(); });
            reactor.call_at(start + delay, [&] { at_fired = Clock::now(); });
            for (int iteration = 0; iteration < 1000 && !(later_fired && at_fired); ++iteration) {
                reactor.run_once(1s);
            }
            REQUIRE(later_fired.has_value());
            REQUIRE(at_fired.has_value());
            CHECK(*later_fired - start >= delay);
            CHECK(*at_fired - start >= delay);
        }
    }
}

TEST_CASE("waiting for a 2 ms timer takes a handful of iterations and does not spin") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        for (const std::chrono::microseconds delay : {2000us, 700us}) {
            CAPTURE(delay.count());
            bool fired = false;
            // Started first: the deadline counts from the call, not from after it.
            const Stopwatch stopwatch;
            reactor.call_later(delay, [&] { fired = true; });
            int iterations = 0;
            while (!fired && iterations < 10'000) {
                reactor.run_once();
                ++iterations;
            }
            CHECK(fired);
            CHECK(stopwatch.elapsed() >= delay);
            CHECK(iterations <= 5);
        }
    }
}

TEST_CASE("run_once with nothing to do waits at least its timeout") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        for (const std::chrono::microseconds timeout : {2000us, 300us}) {
            CAPTURE(timeout.count());
            const Stopwatch stopwatch;
            CHECK(reactor.run_once(timeout) == 0);
            CHECK(stopwatch.elapsed() >= timeout);
        }
    }
}

TEST_CASE("run_once returns when a timer is due before its timeout") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        bool fired = false;
        reactor.call_later(1ms, [&] { fired = true; });
        const Stopwatch stopwatch;
        std::size_t ran = 0;
        for (int iteration = 0; iteration < 5 && !fired; ++iteration) {
            ran += reactor.run_once(10s);
        }
        CHECK(fired);
        CHECK(ran == 1);
        CHECK(stopwatch.elapsed() < 5s);
    }
}

TEST_CASE("run_once with a zero timeout does not wait for a timer") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        bool fired = false;
        reactor.call_later(10s, [&] { fired = true; });
        const Stopwatch stopwatch;
        CHECK(reactor.run_once(0s) == 0);
        CHECK_FALSE(fired);
        CHECK(stopwatch.elapsed() < 5s);
    }
}
