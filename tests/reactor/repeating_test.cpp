// Repeating timers (call_every) and moving a timer's deadline through its
// handle (TimerHandle::reschedule_at/after), on a manual clock: the fixed-rate
// grid, skipped ticks after an overrun, cancellation from inside, every state
// a rescheduled timer can be in, and no allocation once warm.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <random>
#include <stdexcept>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/reactor.hpp"
#include "reactor/reactor_support.hpp"
#include "reactor/scheduler.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::TimerHandle;
using muxio::reactor_test::ManualClock;
using muxio::reactor_test::Tracked;
using muxio::test::FdLeakCheck;

TEST_CASE("call_every runs its callback at every interval on a grid that does not drift") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    const Reactor::TimePoint start = clock.now();
    std::vector<Reactor::Duration> ran_at;
    const TimerHandle handle = reactor.call_every(10ms, [&] { ran_at.push_back(clock.now() - start); });
    CHECK(handle.pending());
    clock.advance(9ms);
    CHECK(reactor.run_once(0s) == 0);
    clock.advance(1ms);
    CHECK(reactor.run_once(0s) == 1);
    // Taken 5 ms late: the next tick is still at 20 ms, not at 25 ms.
    clock.advance(15ms);
    CHECK(reactor.run_once(0s) == 1);
    CHECK(reactor.time_to_next_work() == 5ms);
    clock.advance(5ms);
    CHECK(reactor.run_once(0s) == 1);
    CHECK(ran_at == std::vector<Reactor::Duration>{10ms, 25ms, 30ms});
    CHECK(handle.pending());
    CHECK(reactor.scheduled_count() == 1);
}

TEST_CASE("a repeating timer that overran skips the missed ticks instead of running them in a burst") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    const Reactor::TimePoint start = clock.now();
    std::vector<Reactor::Duration> ran_at;
    reactor.call_every(10ms, [&] {
        ran_at.push_back(clock.now() - start);
        if (ran_at.size() == 1) {
            clock.advance(35ms);  // the callback itself takes three and a half intervals
        }
    });
    clock.advance(10ms);
    CHECK(reactor.run_once(0s) == 1);
    // The tick at 20 ms is late: it runs once, now at 45 ms; those at 30
    // and 40 ms are skipped, and the next one is at 50 ms.
    for (int iteration = 0; iteration < 5; ++iteration) {
        (void)reactor.run_once(0s);
    }
    CHECK(ran_at == std::vector<Reactor::Duration>{10ms, 45ms});
    CHECK(reactor.time_to_next_work() == 5ms);
    clock.advance(5ms);
    CHECK(reactor.run_once(0s) == 1);
    CHECK(ran_at.back() == 50ms);
}

TEST_CASE("a repeating timer cancelled from its own callback runs no more and its captures are destroyed") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    std::atomic<int> destroyed{0};
    int runs = 0;
    TimerHandle handle;
    handle = reactor.call_every(1ms, [&, tracked = Tracked{destroyed}] {
        CHECK(handle.pending());
        if (++runs == 3) {
            CHECK(handle.cancel());
            CHECK_FALSE(handle.pending());
            CHECK_FALSE(handle.cancel());
            CHECK_FALSE(handle.reschedule_after(1ms));
            CHECK(destroyed == 0);  // it is running: destroyed once it returns
        }
    });
    for (int iteration = 0; iteration < 6; ++iteration) {
        clock.advance(1ms);
        (void)reactor.run_once(0s);
    }
    CHECK(runs == 3);
    CHECK(destroyed == 1);
    CHECK_FALSE(handle.pending());
    CHECK(reactor.scheduled_count() == 0);
    CHECK_FALSE(reactor.time_to_next_work().has_value());
}

TEST_CASE("a repeating timer cancelled from outside or by an earlier callback of its iteration does not run") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    int runs = 0;
    TimerHandle every;
    // Scheduled first with the same deadline, so it runs first.
    reactor.call_later(5ms, [&] { CHECK(every.cancel()); });
    every = reactor.call_every(5ms, [&] { ++runs; });
    clock.advance(5ms);
    CHECK(reactor.run_once(0s) == 1);
    CHECK(runs == 0);
    TimerHandle other = reactor.call_every(5ms, [&] { ++runs; });
    clock.advance(5ms);
    CHECK(reactor.run_once(0s) == 1);
    CHECK(other.cancel());
    clock.advance(50ms);
    CHECK(reactor.run_once(0s) == 0);
    CHECK(runs == 1);
}

TEST_CASE("a repeating timer whose callback throws keeps repeating and the handler hears of each throw") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    int handled = 0;
    reactor.set_exception_handler([&](const std::exception_ptr&) { ++handled; });
    int runs = 0;
    reactor.call_every(1ms, [&] {
        ++runs;
        throw std::runtime_error{"tick failed"};
    });
    for (int iteration = 0; iteration < 3; ++iteration) {
        clock.advance(1ms);
        (void)reactor.run_once(0s);
    }
    CHECK(runs == 3);
    CHECK(handled == 3);
}

TEST_CASE("call_every refuses an interval of zero or less, a NaN and an empty callback") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    CHECK_THROWS_AS(reactor.call_every(0s, [] {}), std::invalid_argument);
    CHECK_THROWS_AS(reactor.call_every(-1ms, [] {}), std::invalid_argument);
    CHECK_THROWS_AS(reactor.call_every(std::chrono::duration<double>{std::nan("")}, [] {}), std::invalid_argument);
    CHECK_THROWS_AS(reactor.call_every(1ms, muxio::Callback{}), std::invalid_argument);
    CHECK(reactor.scheduled_count() == 0);
    reactor.close();
    CHECK_THROWS_AS(reactor.call_every(1ms, [] {}), std::logic_error);
}

TEST_CASE("a repeating timer with an interval past the clock's range never fires") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    int runs = 0;
    const TimerHandle handle = reactor.call_every(Reactor::Duration::max(), [&] { ++runs; });
    clock.advance(1000h);
    CHECK(reactor.run_once(0s) == 0);
    CHECK(runs == 0);
    CHECK(handle.pending());
}

TEST_CASE("rescheduling a timer moves its deadline later and keeps its handle") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    int runs = 0;
    TimerHandle handle = reactor.call_later(10ms, [&] { ++runs; });
    CHECK(handle.reschedule_after(30ms));
    CHECK(reactor.time_to_next_work() == 30ms);
    clock.advance(10ms);
    CHECK(reactor.run_once(0s) == 0);
    CHECK(handle.pending());
    clock.advance(20ms);
    CHECK(reactor.run_once(0s) == 1);
    CHECK(runs == 1);
    CHECK_FALSE(handle.pending());
    // It ran: nothing to move; a new timer is scheduled with call_later().
    CHECK_FALSE(handle.reschedule_after(1ms));
    clock.advance(1h);
    CHECK(reactor.run_once(0s) == 0);
    CHECK(runs == 1);
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("rescheduling a timer earlier runs it at the earlier deadline, once") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    std::vector<int> order;
    TimerHandle first = reactor.call_later(50ms, [&] { order.push_back(1); });
    reactor.call_later(20ms, [&] { order.push_back(2); });
    CHECK(first.reschedule_at(clock.now() + 10ms));
    // Back and forth: only the last deadline counts.
    CHECK(first.reschedule_at(clock.now() + 40ms));
    CHECK(first.reschedule_at(clock.now() + 10ms));
    CHECK(reactor.time_to_next_work() == 10ms);
    clock.advance(10ms);
    CHECK(reactor.run_once(0s) == 1);
    clock.advance(100ms);
    CHECK(reactor.run_once(0s) == 1);
    CHECK(order == std::vector<int>{1, 2});
    CHECK(reactor.scheduled_count() == 0);
    CHECK_FALSE(reactor.time_to_next_work().has_value());
}

TEST_CASE("rescheduling a cancelled timer, a call_soon handle or an empty handle returns false and changes nothing") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    TimerHandle empty;
    CHECK_FALSE(empty.reschedule_after(1ms));
    CHECK_FALSE(empty.reschedule_at(clock.now()));
    int runs = 0;
    TimerHandle cancelled = reactor.call_later(1ms, [&] { ++runs; });
    CHECK(cancelled.cancel());
    CHECK_FALSE(cancelled.reschedule_after(1ms));
    TimerHandle soon = reactor.call_soon([&] { ++runs; });
    CHECK_FALSE(soon.reschedule_after(1h));
    CHECK(soon.pending());
    clock.advance(1h);
    CHECK(reactor.run_once(0s) == 1);
    CHECK(runs == 1);
    TimerHandle pending = reactor.call_later(1ms, [&] { ++runs; });
    reactor.close();
    CHECK_FALSE(pending.reschedule_after(1ms));
}

TEST_CASE("a timer due in this iteration and rescheduled by an earlier callback waits for its new deadline") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    int runs = 0;
    TimerHandle later;
    reactor.call_later(5ms, [&] { CHECK(later.reschedule_after(10ms)); });
    later = reactor.call_later(5ms, [&] { ++runs; });
    clock.advance(5ms);
    CHECK(reactor.run_once(0s) == 1);
    CHECK(runs == 0);
    CHECK(later.pending());
    clock.advance(9ms);
    CHECK(reactor.run_once(0s) == 0);
    clock.advance(1ms);
    CHECK(reactor.run_once(0s) == 1);
    CHECK(runs == 1);
}

TEST_CASE("a one-shot timer cannot be rescheduled from its own callback, a repeating one sets its next tick") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    const Reactor::TimePoint start = clock.now();
    TimerHandle once;
    bool once_moved = true;
    once = reactor.call_later(1ms, [&] { once_moved = once.reschedule_after(1ms); });
    std::vector<Reactor::Duration> ticks;
    TimerHandle every;
    every = reactor.call_every(10ms, [&] {
        ticks.push_back(clock.now() - start);
        if (ticks.size() == 1) {
            CHECK(every.reschedule_after(3ms));  // next at 13 ms, then 23 ms, 33 ms
        }
    });
    for (int step = 0; step < 33; ++step) {
        clock.advance(1ms);
        (void)reactor.run_once(0s);
    }
    CHECK_FALSE(once_moved);
    CHECK(ticks == std::vector<Reactor::Duration>{10ms, 13ms, 23ms, 33ms});
}

TEST_CASE("rescheduling a repeating timer and then cancelling it from its own callback stops it") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    std::atomic<int> destroyed{0};
    int runs = 0;
    TimerHandle every;
    every = reactor.call_every(1ms, [&, tracked = Tracked{destroyed}] {
        ++runs;
        CHECK(every.reschedule_after(1ms));
        CHECK(every.cancel());
    });
    for (int step = 0; step < 5; ++step) {
        clock.advance(1ms);
        (void)reactor.run_once(0s);
    }
    CHECK(runs == 1);
    CHECK(destroyed == 1);
    CHECK(reactor.scheduled_count() == 0);
    CHECK_FALSE(reactor.time_to_next_work().has_value());
}

TEST_CASE("rescheduling timers and repeating ticks allocate nothing once warm") {
    FdLeakCheck leak_check;
    if (!muxio::reactor_test::counts_allocations) {
        return;  // ThreadSanitizer's own operator new counts nothing
    }
    ManualClock clock;
    Reactor reactor{clock.options()};
    int idle_fired = 0;
    int ticks = 0;
    // An idle timeout pushed back on every round, beside timers that come
    // and go and a repeating one.
    TimerHandle idle = reactor.call_later(50ms, [&] { ++idle_fired; });
    reactor.call_every(1ms, [&] { ++ticks; });
    std::vector<TimerHandle> others;
    others.reserve(8);
    const auto round = [&](int index) {
        CHECK(idle.reschedule_after(50ms));
        others.push_back(reactor.call_later(std::chrono::milliseconds{index % 3}, [] {}));
        if (others.size() == 8) {
            others.front().cancel();
            others.erase(others.begin());
        }
        clock.advance(1ms);
        (void)reactor.run_once(0s);
    };
    for (int index = 0; index < 200; ++index) {
        round(index);
    }
    const std::size_t before = muxio::reactor_test::allocation_count();
    for (int index = 0; index < 2000; ++index) {
        round(index);
    }
    CHECK(muxio::reactor_test::allocation_count() == before);
    CHECK(idle_fired == 0);
    CHECK(ticks == 2200);
    CHECK(idle.pending());
}

TEST_CASE("the timer heap matches a sorted model through random schedules, reschedules, cancels and pops") {
    using muxio::detail::Scheduler;
    const auto at_ns = [](std::int64_t ns) { return Scheduler::TimePoint{std::chrono::nanoseconds{ns}}; };
    Scheduler scheduler;
    struct Timer {
        Scheduler::Id id;
        std::int64_t deadline;
        std::uint64_t order;  // ties run in the order of the last (re)schedule
        bool live;
    };
    std::vector<Timer> timers;
    std::mt19937 random{20261207};
    std::int64_t now = 0;
    std::uint64_t next_order = 0;
    std::size_t ran = 0;
    bool in_order = true;
    bool agrees = true;
    bool bounded = true;
    const auto earliest_live = [&]() -> Timer* {
        Timer* best = nullptr;
        for (Timer& timer : timers) {
            if (timer.live &&
                (best == nullptr || std::pair{timer.deadline, timer.order} < std::pair{best->deadline, best->order})) {
                best = &timer;
            }
        }
        return best;
    };
    for (int step = 0; step < 8000; ++step) {
        const auto action = random() % 10;
        if (action < 3 || timers.empty()) {
            const std::int64_t deadline = now + static_cast<std::int64_t>(random() % 256);
            const std::size_t label = timers.size();
            timers.push_back(
                {scheduler.add_timer(at_ns(deadline), [&ran, label] { ran = label; }), deadline, next_order++, true});
        } else if (action < 7) {
            Timer& timer = timers[timers.size() - 1 - random() % std::min<std::size_t>(timers.size(), 128U)];
            const std::int64_t deadline = now + static_cast<std::int64_t>(random() % 256);
            agrees = agrees && scheduler.reschedule(timer.id, at_ns(deadline)) == timer.live;
            if (timer.live) {
                timer.deadline = deadline;
                timer.order = next_order++;
            }
        } else if (action < 8) {
            Timer& timer = timers[timers.size() - 1 - random() % std::min<std::size_t>(timers.size(), 128U)];
            agrees = agrees && scheduler.cancel(timer.id) == timer.live;
            timer.live = false;
        } else {
            now += static_cast<std::int64_t>(random() % 32);
            std::vector<Scheduler::Id> due;
            while (const auto id = scheduler.pop_due(at_ns(now))) {
                due.push_back(*id);
            }
            for (const Scheduler::Id id : due) {
                Timer* expected = earliest_live();
                REQUIRE(expected != nullptr);
                in_order = in_order && expected->deadline <= now && expected->id.slot == id.slot &&
                           expected->id.generation == id.generation;
                muxio::Callback callback = scheduler.take(id);
                REQUIRE(static_cast<bool>(callback));
                callback();
                in_order = in_order && &timers[ran] == expected;
                expected->live = false;
            }
            const Timer* next = earliest_live();
            in_order = in_order && (next == nullptr || next->deadline > now);
        }
        std::size_t live = 0;
        for (const Timer& timer : timers) {
            live += timer.live ? 1U : 0U;
        }
        const Timer* next = earliest_live();
        agrees = agrees && scheduler.size() == live;
        agrees = agrees &&
                 (next == nullptr ? !scheduler.next_deadline() : scheduler.next_deadline() == at_ns(next->deadline));
        bounded = bounded && scheduler.timer_count() <= 2 * scheduler.size() + 1;
    }
    CHECK(in_order);
    CHECK(agrees);
    CHECK(bounded);
    bool pending_matches = true;
    for (const Timer& timer : timers) {
        pending_matches = pending_matches && scheduler.pending(timer.id) == timer.live;
    }
    CHECK(pending_matches);
}
