// The timer heap on its own, against a model: lazy cancellation leaves
// entries behind, and compaction rebuilds the heap, so order, pending() and
// the bound on leftover entries are checked after every step.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "reactor/scheduler.hpp"

namespace {

using muxio::detail::Scheduler;
using TimePoint = Scheduler::TimePoint;
using std::chrono::nanoseconds;

TimePoint at_ns(std::int64_t ns) {
    return TimePoint{nanoseconds{ns}};
}

// Every timer the test scheduled, by label.
struct Issued {
    Scheduler::Id id;
    std::pair<std::int64_t, std::uint64_t> key;  // (deadline, scheduling order)
    bool live;
};

bool same(Scheduler::Id a, Scheduler::Id b) {
    return a.slot == b.slot && a.generation == b.generation;
}

}  // namespace

TEST_CASE("the timer heap matches a sorted model through random schedules, cancels and pops") {
    Scheduler scheduler;
    std::map<std::pair<std::int64_t, std::uint64_t>, std::size_t> model;  // key -> label, live timers only
    std::vector<Issued> issued;
    std::mt19937 random{20261127};
    std::int64_t now = 0;
    std::size_t ran_label = 0;
    bool in_order = true;
    bool agrees = true;
    bool bounded = true;
    std::size_t compacting_cancels = 0;

    constexpr int steps = 60'000;
    for (int step = 0; step < steps; ++step) {
        const auto action = random() % 10;
        if (action < 5) {
            // A few hundred timers pending, and many deadlines tie.
            const std::int64_t deadline = now + static_cast<std::int64_t>(random() % 512);
            const std::size_t label = issued.size();
            const Scheduler::Id id = scheduler.add_timer(at_ns(deadline), [&ran_label, label] { ran_label = label; });
            const std::pair key{deadline, static_cast<std::uint64_t>(label)};
            issued.push_back({id, key, true});
            model.emplace(key, label);
        } else if (action < 8 && !issued.empty()) {
            // Mostly recent timers, some live; sometimes any, mostly stale.
            const std::size_t span = action < 7 ? std::min<std::size_t>(issued.size(), 64U) : issued.size();
            Issued& victim = issued[issued.size() - 1 - random() % span];
            const std::size_t heap_before = scheduler.timer_count();
            const bool cancelled = scheduler.cancel(victim.id);
            agrees = agrees && cancelled == victim.live;
            if (victim.live) {
                model.erase(victim.key);
                victim.live = false;
                compacting_cancels += scheduler.timer_count() + 1 < heap_before ? 1U : 0U;
            }
        } else {
            // Run what is due at a later time, in order.
            now += static_cast<std::int64_t>(random() % 16);
            std::vector<Scheduler::Id> due;
            while (const auto id = scheduler.pop_due(at_ns(now))) {
                due.push_back(*id);
            }
            for (const Scheduler::Id id : due) {
                REQUIRE(!model.empty());
                const auto first = model.begin();
                Issued& expected = issued[first->second];
                in_order = in_order && first->first.first <= now && same(expected.id, id);
                muxio::Callback callback = scheduler.take(id);
                REQUIRE(static_cast<bool>(callback));
                callback();
                in_order = in_order && ran_label == first->second;
                expected.live = false;
                model.erase(first);
            }
            in_order = in_order && (model.empty() || model.begin()->first.first > now);
        }
        agrees = agrees && scheduler.size() == model.size();
        agrees = agrees && (model.empty() ? !scheduler.next_deadline()
                                          : scheduler.next_deadline() == at_ns(model.begin()->first.first));
        // Cancelled entries never make up more than half of the heap.
        bounded = bounded && scheduler.timer_count() <= 2 * scheduler.size() + 1;
    }
    CHECK(in_order);
    CHECK(agrees);
    CHECK(bounded);
    CHECK(compacting_cancels > 10);  // the run did exercise compaction
    bool pending_matches = true;
    for (const Issued& timer : issued) {
        pending_matches = pending_matches && scheduler.pending(timer.id) == timer.live;
    }
    CHECK(pending_matches);
}

TEST_CASE("scheduling and cancelling forever beside one long timer keeps the heap small") {
    Scheduler scheduler;
    const Scheduler::Id long_timer = scheduler.add_timer(at_ns(1'000'000'000), [] {});
    std::size_t largest = 0;
    for (int round = 0; round < 100'000; ++round) {
        // Later than the long timer, so it is never on top when cancelled.
        const Scheduler::Id id = scheduler.add_timer(at_ns(2'000'000'000 + round), [] {});
        largest = std::max(largest, scheduler.timer_count());
        REQUIRE(scheduler.cancel(id));
    }
    CHECK(largest <= 3);
    CHECK(scheduler.size() == 1);
    CHECK(scheduler.pending(long_timer));
}

TEST_CASE("cancelling the earliest timer makes the next live one the earliest") {
    Scheduler scheduler;
    const Scheduler::Id first = scheduler.add_timer(at_ns(10), [] {});
    const Scheduler::Id second = scheduler.add_timer(at_ns(20), [] {});
    scheduler.add_timer(at_ns(30), [] {});
    // The second goes first, lazily: it stays in the heap behind the first.
    REQUIRE(scheduler.cancel(second));
    CHECK(scheduler.timer_count() == 3);
    REQUIRE(scheduler.cancel(first));
    CHECK(scheduler.next_deadline() == at_ns(30));
    CHECK(scheduler.timer_count() == 1);
    CHECK(!scheduler.pop_due(at_ns(29)));
    CHECK(scheduler.pop_due(at_ns(30)).has_value());
    CHECK(scheduler.timer_count() == 0);
}

TEST_CASE("a cancelled callback's captures may schedule and cancel while the heap is compacted") {
    Scheduler scheduler;
    std::vector<Scheduler::Id> ids;
    for (int i = 0; i < 8; ++i) {
        ids.push_back(scheduler.add_timer(at_ns(100 + i), [] {}));
    }
    // Its destructor runs inside cancel(), after the cancel that compacts.
    struct OnDestroy {
        Scheduler* scheduler;
        Scheduler::Id victim;
        std::shared_ptr<Scheduler::Id> added;
        ~OnDestroy() {
            if (scheduler != nullptr) {
                scheduler->cancel(victim);
                *added = scheduler->add_timer(at_ns(50), [] {});
            }
        }
        OnDestroy(Scheduler* s, Scheduler::Id v, std::shared_ptr<Scheduler::Id> a)
            : scheduler{s}, victim{v}, added{std::move(a)} {}
        OnDestroy(OnDestroy&& other) noexcept
            : scheduler{std::exchange(other.scheduler, nullptr)}, victim{other.victim}, added{std::move(other.added)} {}
        OnDestroy(const OnDestroy&) = delete;
        OnDestroy& operator=(const OnDestroy&) = delete;
        OnDestroy& operator=(OnDestroy&&) = delete;
    };
    auto added = std::make_shared<Scheduler::Id>();
    const Scheduler::Id reentrant =
        scheduler.add_timer(at_ns(200), [guard = OnDestroy{&scheduler, ids[7], added}] { (void)guard; });
    // Cancel from the back (never the top) until the heap compacts.
    for (int i = 6; i >= 3; --i) {
        REQUIRE(scheduler.cancel(ids[static_cast<std::size_t>(i)]));
    }
    REQUIRE(scheduler.cancel(reentrant));
    CHECK(!scheduler.pending(ids[7]));
    CHECK(scheduler.pending(*added));
    CHECK(scheduler.size() == 4);  // ids 0..2 and the one the destructor added
    CHECK(scheduler.timer_count() <= 2 * scheduler.size() + 1);
    std::vector<std::uint32_t> slots;
    while (const auto id = scheduler.pop_due(at_ns(1000))) {
        slots.push_back(id->slot);
        CHECK(static_cast<bool>(scheduler.take(*id)));
    }
    REQUIRE(slots.size() == 4);
    CHECK(slots[0] == added->slot);
    CHECK(slots[1] == ids[0].slot);
    CHECK(slots[3] == ids[2].slot);
}

TEST_CASE("after cancelling half of a large heap the rest still runs in deadline order") {
    Scheduler scheduler;
    std::mt19937 random{42};
    constexpr std::size_t count = 10'000;
    std::vector<Scheduler::Id> ids;
    std::vector<std::int64_t> deadline_of;
    for (std::size_t i = 0; i < count; ++i) {
        deadline_of.push_back(static_cast<std::int64_t>(random() % 100'000));
        ids.push_back(scheduler.add_timer(at_ns(deadline_of.back()), [] {}));
    }
    std::vector<std::size_t> order(count);
    for (std::size_t i = 0; i < count; ++i) {
        order[i] = i;
    }
    std::shuffle(order.begin(), order.end(), random);
    std::vector<bool> cancelled(count, false);
    for (std::size_t k = 0; k < count / 2 + 1; ++k) {
        REQUIRE(scheduler.cancel(ids[order[k]]));
        cancelled[order[k]] = true;
    }
    // The last cancels compacted the heap: no cancelled entry is left.
    CHECK(scheduler.timer_count() < count / 2 + 100);
    std::int64_t previous = -1;
    bool in_order = true;
    std::size_t popped = 0;
    while (const auto id = scheduler.pop_due(at_ns(100'000))) {
        std::size_t index = 0;
        while (index < count && !(ids[index].slot == id->slot && ids[index].generation == id->generation)) {
            ++index;
        }
        REQUIRE(index < count);
        in_order = in_order && !cancelled[index] && deadline_of[index] >= previous;
        previous = deadline_of[index];
        CHECK(static_cast<bool>(scheduler.take(*id)));
        ++popped;
    }
    CHECK(in_order);
    CHECK(popped == count - (count / 2 + 1));
}
