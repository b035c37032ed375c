// The keyspace's expiry index and the one reactor timer that drives it,
// on a reactor whose clock the test moves.

#include <doctest/doctest.h>

#include <array>
#include <chrono>
#include <exception>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include <fmt/format.h>

#include "commands.hpp"
#include "muxio/reactor.hpp"
#include "resp_test_support.hpp"
#include "store.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using resp::ExpiryTimer;
using resp::Millis;
using resp::Store;
using resp::test::ManualClock;

namespace {

struct ReactorOnManualClock {
    ManualClock clock;
    muxio::Reactor reactor{muxio::ReactorOptions{{}, [this] { return clock.now; }}};
    Store store{[this] { return reactor.time(); }};

    // Runs the iterations that are due now, without blocking.
    void settle() {
        for (int i = 0; i < 100 && reactor.run_once(std::chrono::steady_clock::duration::zero()) > 0; ++i) {
        }
    }
};

}  // namespace

TEST_CASE("the store orders deadlines and expires the due ones first") {
    ManualClock clock;
    Store store{clock.source()};
    const Millis now = store.now();
    store.set("late", "v", now + 30ms);
    store.set("early", "v", now + 10ms);
    store.set("forever", "v", std::nullopt);
    CHECK(store.next_deadline() == now + 10ms);
    clock.now += 10ms;
    CHECK(store.expire_due(100) == 1);
    CHECK(store.find("early") == nullptr);
    CHECK(store.next_deadline() == now + 30ms);
    CHECK(store.stored_count() == 2);
}

TEST_CASE("changing or removing a deadline updates the index") {
    ManualClock clock;
    Store store{clock.source()};
    const Millis now = store.now();
    store.set("k", "v", now + 10ms);
    store.set("k", "w", now + 50ms);  // replaces the deadline, not adds one
    clock.now += 20ms;
    CHECK(store.expire_due(100) == 0);
    REQUIRE(store.find("k") != nullptr);
    CHECK(store.set_deadline("k", std::nullopt));
    CHECK(store.next_deadline() == std::nullopt);
    store.set("j", "v", now + 100ms);
    CHECK(store.erase("j"));
    CHECK(store.next_deadline() == std::nullopt);
    CHECK_FALSE(store.set_deadline("missing", now));
}

TEST_CASE("the listener hears only of deadlines earlier than all others") {
    ManualClock clock;
    Store store{clock.source()};
    std::vector<Millis> heard;
    store.on_earlier_deadline([&](Millis deadline) { heard.push_back(deadline); });
    const Millis now = store.now();
    store.set("a", "v", now + 50ms);
    store.set("b", "v", now + 80ms);
    store.set("c", "v", now + 20ms);
    CHECK(heard == std::vector<Millis>{now + 50ms, now + 20ms});
}

TEST_CASE("the expiry timer removes keys without any command touching them") {
    muxio::test::FdLeakCheck leak_check;
    ReactorOnManualClock fixture;
    ExpiryTimer expiry{fixture.reactor, fixture.store};
    const Millis now = fixture.store.now();
    fixture.store.set("a", "v", now + 50ms);
    fixture.store.set("b", "v", now + 100ms);
    fixture.store.set("c", "v", std::nullopt);
    CHECK(fixture.reactor.scheduled_count() == 1);  // one timer, not one per key
    fixture.settle();
    CHECK(fixture.store.stored_count() == 3);
    fixture.clock.now += 50ms;
    fixture.settle();
    CHECK(fixture.store.stored_count() == 2);
    CHECK(expiry.expired_count() == 1);
    fixture.clock.now += 50ms;
    fixture.settle();
    CHECK(fixture.store.stored_count() == 1);
    CHECK(fixture.reactor.scheduled_count() == 0);
}

TEST_CASE("an earlier deadline moves the timer forward") {
    muxio::test::FdLeakCheck leak_check;
    ReactorOnManualClock fixture;
    ExpiryTimer expiry{fixture.reactor, fixture.store};
    const Millis now = fixture.store.now();
    fixture.store.set("late", "v", now + 1000ms);
    fixture.store.set("soon", "v", now + 10ms);
    CHECK(fixture.reactor.scheduled_count() == 1);
    fixture.clock.now += 10ms;
    fixture.settle();
    CHECK(fixture.store.stored_count() == 1);
    CHECK(fixture.reactor.scheduled_count() == 1);  // re-armed for "late"
}

TEST_CASE("a mass expiry is spread over iterations by the budget") {
    muxio::test::FdLeakCheck leak_check;
    ReactorOnManualClock fixture;
    ExpiryTimer expiry{fixture.reactor, fixture.store, 100};
    const Millis now = fixture.store.now();
    for (int i = 0; i < 250; ++i) {
        fixture.store.set(fmt::format("k{}", i), "v", now + 5ms);
    }
    fixture.clock.now += 5ms;
    CHECK(fixture.reactor.run_once(std::chrono::steady_clock::duration::zero()) == 1);
    CHECK(fixture.store.stored_count() == 150);
    CHECK(fixture.reactor.run_once(std::chrono::steady_clock::duration::zero()) == 1);
    CHECK(fixture.store.stored_count() == 50);
    fixture.settle();
    CHECK(fixture.store.stored_count() == 0);
    CHECK(expiry.expired_count() == 250);
}

TEST_CASE("a stopped expiry timer leaves the keys to the lazy check") {
    muxio::test::FdLeakCheck leak_check;
    ReactorOnManualClock fixture;
    ExpiryTimer expiry{fixture.reactor, fixture.store};
    fixture.store.set("a", "v", fixture.store.now() + 5ms);
    expiry.stop();
    CHECK(fixture.reactor.scheduled_count() == 0);
    fixture.store.set("b", "v", fixture.store.now() + 1ms);
    CHECK(fixture.reactor.scheduled_count() == 0);
    fixture.clock.now += 5ms;
    fixture.settle();
    CHECK(fixture.store.stored_count() == 2);
    CHECK(fixture.store.find("a") == nullptr);
    CHECK(fixture.store.size() == 0);
}

TEST_CASE("deadlines beyond the reactor's clock saturate instead of overflowing") {
    CHECK(resp::to_time_point(Millis::max()) == std::chrono::steady_clock::time_point::max());
    CHECK(resp::to_time_point(Millis{-5}) == std::chrono::steady_clock::time_point{});
    CHECK(resp::to_time_point(Millis{1500}).time_since_epoch() == 1500ms);
}

TEST_CASE("with a store guard, a deadline set on another thread moves the expiry timer from the reactor's own thread") {
    muxio::test::FdLeakCheck leak_check;
    ReactorOnManualClock fixture;
    std::mutex guard;
    ExpiryTimer expiry{fixture.reactor, fixture.store, ExpiryTimer::default_budget, &guard};
    resp::Dispatcher elsewhere{fixture.store, {}, &guard};
    std::thread setter;
    bool refused = false;  // written by the setter, read after join()
    std::string reply;
    // While the reactor runs, another thread's SET PX reaches the timer: arming
    // it from there would throw (another thread while the reactor runs).
    fixture.reactor.call_soon([&] {
        setter = std::thread{[&] {
            try {
                const std::array<std::string_view, 5> args{"SET", "key", "value", "PX", "10"};
                (void)elsewhere.execute(args, reply);
            } catch (const std::exception&) {
                refused = true;
            }
            fixture.reactor.call_soon_threadsafe([&] { fixture.reactor.stop(); });
        }};
    });
    fixture.reactor.run();
    setter.join();
    CHECK_FALSE(refused);
    CHECK(reply == "+OK\r\n");
    CHECK(fixture.reactor.scheduled_count() == 1);  // the timer, armed on the reactor's thread
    fixture.clock.now += 10ms;
    fixture.settle();
    CHECK(fixture.store.stored_count() == 0);
    CHECK(expiry.expired_count() == 1);
}
