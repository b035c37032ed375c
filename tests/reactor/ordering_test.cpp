// Ordering of callbacks and timers on an injected clock: call_soon is FIFO,
// timers run by deadline then in scheduling order, and whatever a callback
// schedules runs in the next iteration. Deterministic: no real time passes.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/reactor.hpp"
#include "reactor/reactor_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::TimerHandle;
using muxio::reactor_test::ManualClock;
using muxio::test::FdLeakCheck;
using muxio::test::Pipe;

TEST_CASE("call_soon callbacks run in FIFO order in the next iteration") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    std::vector<int> order;
    for (int i = 0; i < 100; ++i) {
        reactor.call_soon([&order, i] { order.push_back(i); });
    }
    CHECK(order.empty());
    CHECK(reactor.run_once(0s) == 100);
    REQUIRE(order.size() == 100);
    CHECK(std::is_sorted(order.begin(), order.end()));
    CHECK(reactor.run_once(0s) == 0);
}

TEST_CASE("callbacks scheduled during an iteration run in the next one") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    std::vector<std::string> order;
    reactor.call_soon([&] {
        order.emplace_back("first");
        reactor.call_soon([&] {
            order.emplace_back("soon from first");
            reactor.call_soon([&] { order.emplace_back("soon from soon"); });
        });
        reactor.call_later(0s, [&] { order.emplace_back("later 0 from first"); });
        reactor.call_at(clock.now() - 1s, [&] { order.emplace_back("at past from first"); });
    });
    reactor.call_soon([&] { order.emplace_back("second"); });

    CHECK(reactor.run_once(0s) == 2);
    CHECK(order == std::vector<std::string>{"first", "second"});
    CHECK(reactor.run_once(0s) == 3);
    CHECK(order ==
          std::vector<std::string>{"first", "second", "soon from first", "at past from first", "later 0 from first"});
    CHECK(reactor.run_once(0s) == 1);
    CHECK(order.back() == "soon from soon");
    CHECK(reactor.run_once(0s) == 0);
}

TEST_CASE("timers run by deadline then in scheduling order") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    std::vector<std::string> order;
    const auto start = clock.now();
    const auto schedule = [&](std::chrono::milliseconds offset, std::string name) {
        reactor.call_at(start + offset, [&order, name = std::move(name)] { order.push_back(name); });
    };
    schedule(30ms, "30a");
    schedule(10ms, "10a");
    schedule(20ms, "20a");
    schedule(10ms, "10b");
    schedule(30ms, "30b");
    schedule(20ms, "20b");
    schedule(10ms, "10c");
    reactor.call_later(20ms, [&] { order.emplace_back("20c later"); });

    clock.advance(100ms);
    CHECK(reactor.run_once(0s) == 8);
    CHECK(order == std::vector<std::string>{"10a", "10b", "10c", "20a", "20b", "20c later", "30a", "30b"});
}

TEST_CASE("a timer runs once the clock reaches its deadline and not before") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    int ran = 0;
    reactor.call_later(50ms, [&] { ++ran; });
    clock.advance(50ms - 1ns);
    CHECK(reactor.run_once(0s) == 0);
    CHECK(ran == 0);
    clock.advance(1ns);
    CHECK(reactor.run_once(0s) == 1);
    CHECK(ran == 1);
    clock.advance(1h);
    CHECK(reactor.run_once(0s) == 0);
    CHECK(ran == 1);
}

TEST_CASE("timers due in different iterations run in their own iteration") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    std::vector<int> order;
    for (int i = 5; i >= 1; --i) {
        reactor.call_later(i * 10ms, [&order, i] { order.push_back(i); });
    }
    for (int step = 1; step <= 5; ++step) {
        clock.advance(10ms);
        CHECK(reactor.run_once(0s) == 1);
        REQUIRE(order.size() == static_cast<std::size_t>(step));
        CHECK(order.back() == step);
    }
}

TEST_CASE("queued callbacks run before I/O callbacks which run before due timers") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    Pipe pipe;
    muxio::test::write_all(pipe.write_end.get(), "x");
    std::vector<std::string> order;
    reactor.call_later(1ms, [&] { order.emplace_back("timer"); });
    reactor.call_soon([&] { order.emplace_back("soon"); });
    reactor.add_reader(pipe.read_end.get(), [&] {
        order.emplace_back("reader");
        muxio::test::drain(pipe.read_end.get());
    });
    clock.advance(1ms);
    CHECK(reactor.run_once(0s) == 3);
    CHECK(order == std::vector<std::string>{"soon", "reader", "timer"});
    reactor.remove_reader(pipe.read_end.get());
}

TEST_CASE("call_later with a negative delay runs in the next iteration") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    bool ran = false;
    reactor.call_later(-5s, [&] { ran = true; });
    CHECK(reactor.run_once(0s) == 1);
    CHECK(ran);
}

TEST_CASE("call_later with the largest delay never fires") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    int ran = 0;
    const TimerHandle nanos = reactor.call_later(Reactor::Duration::max(), [&] { ++ran; });
    const TimerHandle hours = reactor.call_later(std::chrono::hours::max(), [&] { ++ran; });
    const TimerHandle seconds = reactor.call_later(std::chrono::duration<double>{1e300}, [&] { ++ran; });
    clock.advance(24h * 365 * 100);
    CHECK(reactor.run_once(0s) == 0);
    CHECK(ran == 0);
    CHECK(nanos.pending());
    CHECK(hours.pending());
    CHECK(seconds.pending());
    const auto next = reactor.time_to_next_work();
    REQUIRE(next.has_value());
    CHECK(*next > 24h * 365 * 100);
}

TEST_CASE("call_later rounds a fractional delay up") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    bool ran = false;
    reactor.call_later(std::chrono::duration<double, std::nano>{1.5}, [&] { ran = true; });
    clock.advance(1ns);
    CHECK(reactor.run_once(0s) == 0);
    clock.advance(1ns);
    CHECK(reactor.run_once(0s) == 1);
    CHECK(ran);
}

TEST_CASE("time reads the injected clock") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    CHECK(reactor.time() == clock.now());
    clock.advance(3s);
    CHECK(reactor.time() == clock.now());
}

TEST_CASE("time_to_next_work reports queued work or the nearest timer or nothing") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    CHECK_FALSE(reactor.time_to_next_work().has_value());
    reactor.call_later(5s, [] {});
    CHECK(reactor.time_to_next_work() == std::optional<Reactor::Duration>{5s});
    reactor.call_later(3s, [] {});
    CHECK(reactor.time_to_next_work() == std::optional<Reactor::Duration>{3s});
    clock.advance(2s);
    CHECK(reactor.time_to_next_work() == std::optional<Reactor::Duration>{1s});
    clock.advance(10s);
    CHECK(reactor.time_to_next_work() == std::optional<Reactor::Duration>{0s});
    CHECK(reactor.run_once(0s) == 2);
    CHECK_FALSE(reactor.time_to_next_work().has_value());
    TimerHandle soon = reactor.call_soon([] {});
    reactor.call_later(1h, [] {});
    CHECK(reactor.time_to_next_work() == std::optional<Reactor::Duration>{0s});
    CHECK(soon.cancel());
    CHECK(reactor.run_once(0s) == 0);
    CHECK(reactor.time_to_next_work() == std::optional<Reactor::Duration>{1h});
}

TEST_CASE("scheduled_count counts queued and timed callbacks not yet run") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    CHECK(reactor.scheduled_count() == 0);
    reactor.call_soon([] {});
    TimerHandle timer = reactor.call_later(1s, [] {});
    reactor.call_later(2s, [] {});
    CHECK(reactor.scheduled_count() == 3);
    timer.cancel();
    CHECK(reactor.scheduled_count() == 2);
    CHECK(reactor.run_once(0s) == 1);
    CHECK(reactor.scheduled_count() == 1);
    clock.advance(2s);
    CHECK(reactor.run_once(0s) == 1);
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("a million timers with half cancelled run the other half in deadline order" *
          doctest::skip(muxio::reactor_test::under_thread_sanitizer)) {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    constexpr std::uint32_t count = 1'000'000;
    const auto start = clock.now();
    // Deadlines from a fixed LCG, in 4096 distinct values, so many tie.
    std::vector<std::uint32_t> deadline_of(count);
    std::vector<TimerHandle> handles;
    handles.reserve(count);
    std::vector<std::uint32_t> ran;
    ran.reserve(count);
    std::uint32_t state = 12345;
    for (std::uint32_t i = 0; i < count; ++i) {
        state = state * 1664525U + 1013904223U;
        deadline_of[i] = (state >> 8U) % 4096U;
        handles.push_back(
            reactor.call_at(start + std::chrono::microseconds{deadline_of[i]}, [&ran, i] { ran.push_back(i); }));
    }
    CHECK(reactor.scheduled_count() == count);
    std::uint32_t cancelled = 0;
    for (std::uint32_t i = 0; i < count; i += 2) {
        cancelled += handles[i].cancel() ? 1U : 0U;
    }
    CHECK(cancelled == count / 2);
    CHECK(reactor.scheduled_count() == count / 2);

    // Half-way through: only the timers due by then.
    clock.advance(2048us - 1us);
    const std::size_t first = reactor.run_once(0s);
    clock.advance(1h);
    const std::size_t second = reactor.run_once(0s);
    CHECK(first + second == count / 2);
    CHECK(first > 0);
    CHECK(second > 0);
    REQUIRE(ran.size() == count / 2);
    bool all_odd = true;
    bool in_order = true;
    for (std::size_t k = 0; k < ran.size(); ++k) {
        all_odd = all_odd && ran[k] % 2 == 1;
        if (k == 0) {
            continue;
        }
        const std::uint32_t a = ran[k - 1];
        const std::uint32_t b = ran[k];
        in_order = in_order && (deadline_of[a] < deadline_of[b] || (deadline_of[a] == deadline_of[b] && a < b));
    }
    CHECK(all_odd);
    CHECK(in_order);
    CHECK(deadline_of[ran[first - 1]] <= 2047);
    CHECK(deadline_of[ran[first]] >= 2048);
    CHECK(reactor.scheduled_count() == 0);
}

// ----- The batch: call_soon callbacks run in place ---------------------------------------
// An iteration runs the callbacks queued before it where they lie, while what
// they queue goes to a second queue that may grow: these cases would touch
// freed or moved storage (ASan) if a running callback could be moved.

TEST_CASE("a callback that queues enough to grow the queue keeps its own captures intact") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    std::vector<std::string> seen;
    const std::string long_text(100, 'x');  // on the heap: a moved-from capture would show
    for (int first = 0; first < 3; ++first) {
        reactor.call_soon([&, text = long_text + std::to_string(first)] {
            for (int i = 0; i < 500; ++i) {
                reactor.call_soon([&seen, i, text] {
                    if (i == 499) {
                        seen.push_back(text);
                    }
                });
            }
            seen.push_back(text);  // after the queue grew under it
        });
    }
    CHECK(reactor.run_once(0s) == 3);
    CHECK(reactor.scheduled_count() == 1500);
    CHECK(reactor.run_once(0s) == 1500);
    const std::vector<std::string> expected{long_text + "0", long_text + "1", long_text + "2",
                                            long_text + "0", long_text + "1", long_text + "2"};
    CHECK(seen == expected);
}

TEST_CASE("while a batch runs, its later callbacks are pending and the running one is not") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    std::atomic<int> destroyed{0};
    TimerHandle self;
    TimerHandle later;
    TimerHandle next_iteration;
    std::optional<bool> self_pending;
    std::optional<bool> self_cancelled;
    std::optional<bool> later_pending;
    int destroyed_inside = -1;
    self = reactor.call_soon([&, tracked = muxio::reactor_test::Tracked{destroyed}] {
        self_pending = self.pending();
        self_cancelled = self.cancel();
        later_pending = later.pending();
        destroyed_inside = destroyed;
        next_iteration = reactor.call_soon([] {});
    });
    later = reactor.call_soon([&] { CHECK(next_iteration.pending()); });
    CHECK(reactor.run_once(0s) == 2);
    CHECK(self_pending == false);
    CHECK(self_cancelled == false);
    CHECK(later_pending == true);
    CHECK(destroyed_inside == 0);
    CHECK(destroyed == 1);  // its captures went once it had run
    CHECK_FALSE(later.pending());
    CHECK(next_iteration.pending());
    CHECK(reactor.run_once(0s) == 1);
    CHECK_FALSE(next_iteration.pending());
}

namespace {

// A callable whose copy throws, to queue by copy.
struct ThrowsOnCopy {
    int* calls;
    explicit ThrowsOnCopy(int* count) noexcept : calls{count} {}
    ThrowsOnCopy(const ThrowsOnCopy& /*other*/) : calls{nullptr} { throw std::runtime_error("copy refused"); }
    ThrowsOnCopy(ThrowsOnCopy&&) noexcept = default;
    ThrowsOnCopy& operator=(const ThrowsOnCopy&) = delete;
    ThrowsOnCopy& operator=(ThrowsOnCopy&&) = delete;
    ~ThrowsOnCopy() = default;
    void operator()() const { ++*calls; }
};

}  // namespace

TEST_CASE("a callback whose copy throws is not queued, and the queue goes on") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    int calls = 0;
    const ThrowsOnCopy callable{&calls};
    CHECK_THROWS_AS(reactor.call_soon(callable), std::runtime_error);
    CHECK(reactor.scheduled_count() == 0);
    const TimerHandle queued = reactor.call_soon(ThrowsOnCopy{&calls});  // moved: fine
    CHECK(queued.pending());
    CHECK(reactor.run_once(0s) == 1);
    CHECK(calls == 1);
}
