// call_soon_threadsafe and stop_threadsafe: waking a blocked loop from
// another thread, coalescing wakeups into one eventfd write, and racing
// close() without crashing. Run these under TSan too.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <future>
#include <stdexcept>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/reactor.hpp"
#include "reactor/reactor_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::reactor_test::eventfd_count;
using muxio::reactor_test::find_new_eventfd;
using muxio::reactor_test::open_fds;
using muxio::reactor_test::Tracked;
using muxio::reactor_test::with_selector;
using muxio::test::FdLeakCheck;
using muxio::test::Stopwatch;

namespace {

// Makes `reactor` stop after `limit` if nothing else stopped it, and says
// whether that happened: every run() below is bounded.
struct Watchdog {
    Watchdog(Reactor& reactor, Reactor::Duration limit) {
        reactor.call_later(limit, [this, &reactor] {
            fired = true;
            reactor.stop();
        });
    }
    bool fired = false;
};

// A future that becomes ready when the loop runs its first iteration, so a
// thread can wait until the loop runs before it tries to wake it.
std::future<void> loop_started(Reactor& reactor, std::promise<void>& promise) {
    reactor.call_soon([&promise] { promise.set_value(); });
    return promise.get_future();
}

}  // namespace

TEST_CASE("call_soon_threadsafe from another thread wakes a blocked loop") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        const Watchdog watchdog{reactor, 5s};
        std::promise<void> started;
        std::atomic<bool> ran{false};
        std::thread::id ran_on;
        std::thread waker{[&, future = loop_started(reactor, started)] {
            if (future.wait_for(5s) != std::future_status::ready) {
                return;
            }
            // Only so the loop is likely blocked when woken; the assertions
            // do not depend on it.
            std::this_thread::sleep_for(10ms);
            reactor.call_soon_threadsafe([&] {
                ran = true;
                ran_on = std::this_thread::get_id();
                reactor.stop();
            });
        }};
        reactor.run();
        waker.join();
        CHECK(ran);
        CHECK(ran_on == std::this_thread::get_id());
        CHECK_FALSE(watchdog.fired);
    }
}

TEST_CASE("stop_threadsafe from another thread ends a blocked run") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        const Watchdog watchdog{reactor, 5s};
        std::promise<void> started;
        std::thread stopper{[&, future = loop_started(reactor, started)] {
            if (future.wait_for(5s) != std::future_status::ready) {
                return;
            }
            std::this_thread::sleep_for(10ms);
            reactor.stop_threadsafe();
        }};
        const Stopwatch stopwatch;
        reactor.run();
        stopper.join();
        CHECK_FALSE(watchdog.fired);
        CHECK(stopwatch.elapsed() < 5s);
    }
}

TEST_CASE("a loop woken once can be woken again") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        const Watchdog watchdog{reactor, 5s};
        std::atomic<int> wakeups{0};
        std::promise<void> started;
        std::thread waker{[&, future = loop_started(reactor, started)] {
            if (future.wait_for(5s) != std::future_status::ready) {
                return;
            }
            for (int round = 1; round <= 3; ++round) {
                std::promise<void> done;
                std::this_thread::sleep_for(5ms);
                reactor.call_soon_threadsafe([&] {
                    ++wakeups;
                    done.set_value();
                });
                if (done.get_future().wait_for(5s) != std::future_status::ready) {
                    return;
                }
            }
            reactor.stop_threadsafe();
        }};
        reactor.run();
        waker.join();
        CHECK(wakeups == 3);
        CHECK_FALSE(watchdog.fired);
    }
}

TEST_CASE("threadsafe callbacks run in the iteration that took them") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        bool ran = false;
        reactor.call_soon_threadsafe([&] { ran = true; });
        CHECK(reactor.run_once(1s) == 1);
        CHECK(ran);
        CHECK(reactor.run_once(0s) == 0);
    }
}

TEST_CASE("ten thousand threadsafe calls before the loop wakes cost one eventfd write") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        const std::vector<int> before = open_fds();
        Reactor reactor{with_selector(name)};
        const int wake_fd = find_new_eventfd(before);
        REQUIRE(eventfd_count(wake_fd) == 0);

        std::vector<int> order;
        order.reserve(10'000);
        std::thread poster{[&] {
            for (int i = 0; i < 10'000; ++i) {
                reactor.call_soon_threadsafe([&order, i] { order.push_back(i); });
            }
        }};
        poster.join();
        // Each write adds one to the counter: one write for all the calls.
        CHECK(eventfd_count(wake_fd) == 1);
        CHECK(reactor.run_once(1s) == 10'000);
        CHECK(eventfd_count(wake_fd) == 0);
        REQUIRE(order.size() == 10'000);
        CHECK(std::is_sorted(order.begin(), order.end()));

        // Taking the callbacks re-arms the wakeup: the next call writes again.
        reactor.call_soon_threadsafe([] {});
        reactor.call_soon_threadsafe([] {});
        CHECK(eventfd_count(wake_fd) == 1);
        CHECK(reactor.run_once(1s) == 2);
        CHECK(eventfd_count(wake_fd) == 0);
    }
}

TEST_CASE("threadsafe callbacks from many threads all run in order per thread") {
    FdLeakCheck leak_check;
    Reactor reactor;
    const Watchdog watchdog{reactor, 10s};
    constexpr int threads = 4;
    constexpr int per_thread = 2'000;
    std::vector<std::vector<int>> seen(threads);
    int total = 0;
    std::vector<std::thread> posters;
    for (int t = 0; t < threads; ++t) {
        posters.emplace_back([&, t] {
            for (int i = 0; i < per_thread; ++i) {
                reactor.call_soon_threadsafe([&, t, i] {
                    seen[static_cast<std::size_t>(t)].push_back(i);
                    if (++total == threads * per_thread) {
                        reactor.stop();
                    }
                });
            }
        });
    }
    reactor.run();
    for (std::thread& poster : posters) {
        poster.join();
    }
    CHECK_FALSE(watchdog.fired);
    CHECK(total == threads * per_thread);
    for (const std::vector<int>& one : seen) {
        CHECK(one.size() == static_cast<std::size_t>(per_thread));
        CHECK(std::is_sorted(one.begin(), one.end()));
    }
}

TEST_CASE("call_soon_threadsafe racing close either succeeds or throws logic_error") {
    FdLeakCheck leak_check;
    for (int round = 0; round < 5; ++round) {
        CAPTURE(round);
        std::atomic<int> destroyed{0};
        std::atomic<int> accepted{0};
        std::atomic<int> refused{0};
        std::atomic<int> ran{0};
        std::atomic<int> other_errors{0};
        Reactor reactor;
        std::promise<void> going;
        std::thread hammer{[&] {
            for (int i = 0; i < 50'000'000; ++i) {
                try {
                    reactor.call_soon_threadsafe([&ran, tracked = Tracked{destroyed}] { ++ran; });
                    if (++accepted == 100) {
                        going.set_value();
                    }
                } catch (const std::logic_error&) {
                    ++refused;
                    return;
                } catch (...) {
                    ++other_errors;
                    return;
                }
            }
        }};
        // Let the hammer get going, run a little, then close under it.
        CHECK(going.get_future().wait_for(5s) == std::future_status::ready);
        for (int i = 0; i < 3; ++i) {
            reactor.run_once(0s);
        }
        reactor.close();
        hammer.join();
        CHECK(other_errors == 0);
        CHECK(refused == 1);
        CHECK(accepted > 0);
        // Every callback was run, dropped by close, or destroyed when refused.
        CHECK(destroyed == accepted + refused);
        CHECK(ran <= accepted);
    }
}

TEST_CASE("call_soon_threadsafe from a callback on the loop thread runs in the next iteration") {
    FdLeakCheck leak_check;
    Reactor reactor;
    int ran = 0;
    reactor.call_soon([&] { reactor.call_soon_threadsafe([&] { ++ran; }); });
    CHECK(reactor.run_once(0s) == 1);
    CHECK(ran == 0);
    CHECK(reactor.run_once(1s) == 1);
    CHECK(ran == 1);
}
