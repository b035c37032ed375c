// Cancelling scheduled callbacks through TimerHandle, in every state a
// callback can be in: queued, on a timer, due in the running iteration,
// running, run, cancelled, its slot reused, its reactor closed.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>
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
using muxio::reactor_test::Tracked;
using muxio::test::FdLeakCheck;

namespace {

// Runs `on_destroy` when destroyed (unless moved from): a capture whose
// destructor calls back into the reactor, as an RAII guard inside a callback does.
class OnDestroy {
public:
    explicit OnDestroy(std::function<void()> on_destroy) : on_destroy_{std::move(on_destroy)} {}
    OnDestroy(OnDestroy&& other) noexcept : on_destroy_{std::exchange(other.on_destroy_, nullptr)} {}
    OnDestroy(const OnDestroy&) = delete;
    OnDestroy& operator=(const OnDestroy&) = delete;
    OnDestroy& operator=(OnDestroy&&) = delete;
    ~OnDestroy() {
        if (on_destroy_) {
            on_destroy_();
        }
    }

private:
    std::function<void()> on_destroy_;
};

}  // namespace

TEST_CASE("cancelling a queued call_soon callback prevents it and destroys its captures at once") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    std::atomic<int> destroyed{0};
    bool ran = false;
    TimerHandle handle = reactor.call_soon([&ran, tracked = Tracked{destroyed}] { ran = true; });
    CHECK(handle.pending());
    CHECK(handle.cancel());
    CHECK(destroyed == 1);
    CHECK_FALSE(handle.pending());
    CHECK(reactor.run_once(0s) == 0);
    CHECK_FALSE(ran);
}

TEST_CASE("cancelling a pending timer prevents it and destroys its captures at once") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    std::atomic<int> destroyed{0};
    bool ran = false;
    TimerHandle handle = reactor.call_later(1s, [&ran, tracked = Tracked{destroyed}] { ran = true; });
    CHECK(handle.pending());
    CHECK(handle.cancel());
    CHECK(destroyed == 1);
    CHECK_FALSE(handle.pending());
    CHECK_FALSE(reactor.time_to_next_work().has_value());
    clock.advance(2s);
    CHECK(reactor.run_once(0s) == 0);
    CHECK_FALSE(ran);
}

TEST_CASE("cancelling the nearest timer leaves the others in order") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    std::vector<int> order;
    std::vector<TimerHandle> handles;
    for (int i = 0; i < 20; ++i) {
        handles.push_back(reactor.call_later(i * 1ms, [&order, i] { order.push_back(i); }));
    }
    for (const int i : {0, 7, 19, 3, 12}) {
        CHECK(handles[static_cast<std::size_t>(i)].cancel());
    }
    CHECK(reactor.time_to_next_work() == std::optional<Reactor::Duration>{1ms});
    clock.advance(1s);
    CHECK(reactor.run_once(0s) == 15);
    CHECK(order == std::vector<int>{1, 2, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18});
}

TEST_CASE("cancel returns false after the callback ran") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    TimerHandle soon = reactor.call_soon([] {});
    TimerHandle timer = reactor.call_later(1ms, [] {});
    clock.advance(1ms);
    CHECK(reactor.run_once(0s) == 2);
    CHECK_FALSE(soon.pending());
    CHECK_FALSE(timer.pending());
    CHECK_FALSE(soon.cancel());
    CHECK_FALSE(timer.cancel());
}

TEST_CASE("cancel returns false the second time") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    TimerHandle handle = reactor.call_later(1s, [] {});
    CHECK(handle.cancel());
    CHECK_FALSE(handle.cancel());
}

TEST_CASE("a default constructed handle cancels nothing") {
    FdLeakCheck leak_check;
    TimerHandle handle;
    CHECK_FALSE(handle.pending());
    CHECK_FALSE(handle.cancel());
}

TEST_CASE("a copied handle cancels the same callback") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    bool ran = false;
    const TimerHandle original = reactor.call_soon([&] { ran = true; });
    TimerHandle copy = original;
    CHECK(copy.cancel());
    CHECK_FALSE(original.pending());
    CHECK(reactor.run_once(0s) == 0);
    CHECK_FALSE(ran);
}

TEST_CASE("a callback is not pending while it runs and cancelling itself is harmless") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    std::atomic<int> destroyed{0};
    TimerHandle self;
    std::optional<bool> pending_inside;
    std::optional<bool> cancelled_inside;
    int destroyed_inside = -1;
    self = reactor.call_later(1ms, [&, tracked = Tracked{destroyed}] {
        pending_inside = self.pending();
        cancelled_inside = self.cancel();
        destroyed_inside = destroyed;
    });
    clock.advance(1ms);
    CHECK(reactor.run_once(0s) == 1);
    CHECK(pending_inside == false);
    CHECK(cancelled_inside == false);
    CHECK(destroyed_inside == 0);
    CHECK(destroyed == 1);
}

TEST_CASE("a callback cancels another one due in the same iteration") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    std::vector<int> order;
    TimerHandle victim_timer;
    TimerHandle victim_soon;
    reactor.call_soon([&] {
        order.push_back(1);
        CHECK(victim_soon.cancel());
        CHECK(victim_timer.cancel());
    });
    victim_soon = reactor.call_soon([&] { order.push_back(2); });
    reactor.call_later(1ms, [&] { order.push_back(3); });
    victim_timer = reactor.call_later(1ms, [&] { order.push_back(4); });
    clock.advance(1ms);
    CHECK(reactor.run_once(0s) == 2);
    CHECK(order == std::vector<int>{1, 3});
}

TEST_CASE("a timer cancels an earlier timer due in the same iteration that already ran") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    TimerHandle first = reactor.call_later(1ms, [] {});
    std::optional<bool> result;
    reactor.call_later(2ms, [&] { result = first.cancel(); });
    clock.advance(2ms);
    CHECK(reactor.run_once(0s) == 2);
    CHECK(result == false);
}

TEST_CASE("a stale handle does not cancel the callback that reused its slot") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    TimerHandle stale = reactor.call_soon([] {});
    CHECK(stale.cancel());
    CHECK(reactor.run_once(0s) == 0);
    bool ran = false;
    TimerHandle fresh = reactor.call_soon([&] { ran = true; });
    CHECK_FALSE(stale.pending());
    CHECK_FALSE(stale.cancel());
    CHECK(fresh.pending());
    CHECK(reactor.run_once(0s) == 1);
    CHECK(ran);

    // And a handle of a callback that ran, once its slot is reused by a timer.
    TimerHandle timer = reactor.call_later(1s, [] {});
    CHECK_FALSE(fresh.cancel());
    CHECK(timer.pending());
}

TEST_CASE("cancel after close returns false") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    TimerHandle soon = reactor.call_soon([] {});
    TimerHandle timer = reactor.call_later(1s, [] {});
    reactor.close();
    CHECK_FALSE(soon.pending());
    CHECK_FALSE(timer.pending());
    CHECK_FALSE(soon.cancel());
    CHECK_FALSE(timer.cancel());
}

TEST_CASE("cancelling a callback whose captures schedule another on destruction") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    // The scheduler's table is full (no free slot), so scheduling from the
    // destructor must grow it while the cancelled record is being released.
    bool follow_up_ran = false;
    TimerHandle handle =
        reactor.call_later(1s, [guard = OnDestroy{[&] { reactor.call_soon([&] { follow_up_ran = true; }); }}] {});
    CHECK(handle.cancel());
    CHECK_FALSE(handle.pending());
    CHECK_FALSE(handle.cancel());
    CHECK(reactor.scheduled_count() == 1);
    CHECK(reactor.run_once(0s) == 1);
    CHECK(follow_up_ran);
    CHECK(reactor.scheduled_count() == 0);
    clock.advance(2s);
    CHECK(reactor.run_once(0s) == 0);
}

TEST_CASE("cancelling a callback whose captures cancel another on destruction") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    bool other_ran = false;
    TimerHandle other = reactor.call_later(2s, [&] { other_ran = true; });
    TimerHandle handle = reactor.call_later(1s, [guard = OnDestroy{[&] { CHECK(other.cancel()); }}] {});
    CHECK(handle.cancel());
    CHECK_FALSE(other.pending());
    CHECK(reactor.scheduled_count() == 0);
    CHECK_FALSE(reactor.time_to_next_work().has_value());
    clock.advance(3s);
    CHECK(reactor.run_once(0s) == 0);
    CHECK_FALSE(other_ran);
}

TEST_CASE("a call_soon handle still cancels its callback after the queue grew") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    std::vector<int> order;
    // The first few are run, so the queue's positions no longer start at 0
    // when it grows past its first capacity below.
    for (int i = 0; i < 10; ++i) {
        reactor.call_soon([] {});
    }
    CHECK(reactor.run_once(0s) == 10);
    std::vector<TimerHandle> handles;
    for (int i = 0; i < 1000; ++i) {
        handles.push_back(reactor.call_soon([&order, i] { order.push_back(i); }));
    }
    for (int i = 0; i < 1000; i += 3) {
        CHECK(handles[static_cast<std::size_t>(i)].cancel());
    }
    for (int i = 0; i < 1000; ++i) {
        CHECK(handles[static_cast<std::size_t>(i)].pending() == (i % 3 != 0));
    }
    CHECK(reactor.scheduled_count() == 666);
    CHECK(reactor.run_once(0s) == 666);
    REQUIRE(order.size() == 666);
    CHECK(std::is_sorted(order.begin(), order.end()));
    CHECK(std::none_of(order.begin(), order.end(), [](int i) { return i % 3 == 0; }));
    CHECK(reactor.scheduled_count() == 0);
    for (TimerHandle& handle : handles) {
        CHECK_FALSE(handle.pending());
        CHECK_FALSE(handle.cancel());
    }
}

TEST_CASE("the handle of a call_soon callback that ran does not name a later one") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    TimerHandle old_handle = reactor.call_soon([] {});
    CHECK(reactor.run_once(0s) == 1);
    bool ran = false;
    TimerHandle fresh = reactor.call_soon([&] { ran = true; });
    CHECK_FALSE(old_handle.pending());
    CHECK_FALSE(old_handle.cancel());
    CHECK(fresh.pending());
    CHECK(reactor.run_once(0s) == 1);
    CHECK(ran);
}
