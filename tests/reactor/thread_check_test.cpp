// Calls from the wrong thread: while one thread runs a reactor, every
// entry point that is not thread-safe refuses a call from another thread
// with std::logic_error naming the thread-safe way, and changes nothing;
// while nobody runs it, any thread may use it. Run these under TSan too:
// the refusal itself must be free of data races.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/reactor.hpp"
#include "reactor/reactor_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::TimerHandle;
using muxio::reactor_test::SavedSignal;
using muxio::reactor_test::with_selector;
using muxio::test::FdLeakCheck;
using muxio::test::SocketPair;
using muxio::test::Stopwatch;

namespace {

// One entry point tried from the wrong thread, and the thread-safe way its
// error must name.
struct EntryPoint {
    std::string name;
    std::function<void()> call;
    std::string alternative;
};

// What became of one call from the wrong thread.
struct Outcome {
    std::string name;
    bool logic_error = false;
    bool names_alternative = false;
    std::string message;
};

Outcome attempt(const EntryPoint& entry) {
    Outcome outcome;
    outcome.name = entry.name;
    try {
        entry.call();
        outcome.message = "returned normally";
    } catch (const std::logic_error& error) {
        outcome.logic_error = true;
        outcome.message = error.what();
        outcome.names_alternative = outcome.message.find(entry.alternative) != std::string::npos;
    } catch (const std::exception& error) {
        outcome.message = std::string{"another exception: "} + error.what();
    }
    return outcome;
}

// Runs `reactor` on this thread while `body` runs on another, started once
// the loop runs its first iteration; `body` must end the run with
// stop_threadsafe(). Bounded: a watchdog timer stops the run after 10 s.
// Returns whether the watchdog had to.
bool run_while(Reactor& reactor, const std::function<void()>& body) {
    bool watchdog_fired = false;
    const TimerHandle watchdog = reactor.call_later(10s, [&] {
        watchdog_fired = true;
        reactor.stop();
    });
    std::promise<void> started;
    reactor.call_soon([&] { started.set_value(); });
    std::thread other{[&, running = started.get_future()] {
        if (running.wait_for(5s) == std::future_status::ready) {
            body();
        }
        reactor.stop_threadsafe();
    }};
    reactor.run();
    other.join();
    TimerHandle{watchdog}.cancel();
    return watchdog_fired;
}

}  // namespace

TEST_CASE("call_soon from another thread while run() blocks throws logic_error naming call_soon_threadsafe") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(selector) {
        Reactor reactor{with_selector(selector)};
        std::atomic<bool> refused{false};
        std::string message;
        std::atomic<bool> woke{false};
        const Stopwatch stopwatch;
        const bool watchdog_fired = run_while(reactor, [&] {
            try {
                reactor.call_soon([] {});
            } catch (const std::logic_error& error) {
                refused = true;
                message = error.what();
            }
            std::promise<void> ran;
            reactor.call_soon_threadsafe([&] {
                woke = true;
                ran.set_value();
            });
            (void)ran.get_future().wait_for(5s);
        });
        CHECK_FALSE(watchdog_fired);
        CHECK(refused);
        CHECK(message.find("call_soon_threadsafe") != std::string::npos);
        CHECK(woke);
        CHECK(stopwatch.elapsed() < 5s);
        // Nothing was queued by the refused call.
        CHECK(reactor.scheduled_count() == 0);
        CHECK(reactor.run_once(0s) == 0);
    }
}

TEST_CASE("every entry point that is not thread-safe refuses another thread while the reactor runs") {
    FdLeakCheck leak_check;
    const SavedSignal saved{SIGUSR2};
    MUXIO_FOR_EACH_SELECTOR(selector) {
        Reactor reactor{with_selector(selector)};
        SocketPair registered;
        SocketPair unregistered;
        int reads = 0;
        reactor.add_reader(registered.right.get(),
                           [&] { reads += static_cast<int>(muxio::test::drain(registered.right.get())); });
        TimerHandle timer = reactor.call_later(1h, [] {});
        int signals = 0;
        reactor.add_signal_handler(SIGUSR2, [&] { ++signals; });
        const int free_fd = unregistered.right.get();
        const int busy_fd = registered.right.get();
        const std::string soon = "call_soon_threadsafe";
        const std::string stop = "stop_threadsafe";

        const std::vector<EntryPoint> entry_points = {
            {"add_reader", [&] { reactor.add_reader(free_fd, [] {}); }, soon},
            {"add_writer", [&] { reactor.add_writer(free_fd, [] {}); }, soon},
            {"remove_reader", [&] { (void)reactor.remove_reader(busy_fd); }, soon},
            {"remove_writer", [&] { (void)reactor.remove_writer(busy_fd); }, soon},
            {"has_reader", [&] { (void)reactor.has_reader(busy_fd); }, soon},
            {"has_writer", [&] { (void)reactor.has_writer(busy_fd); }, soon},
            {"call_soon(Callback)", [&] { (void)reactor.call_soon(muxio::Callback{[] {}}); }, soon},
            {"call_soon(lambda)", [&] { (void)reactor.call_soon([] {}); }, soon},
            {"call_later(Duration)", [&] { (void)reactor.call_later(Reactor::Duration{1ms}, [] {}); }, soon},
            {"call_later(milliseconds)", [&] { (void)reactor.call_later(1ms, [] {}); }, soon},
            {"call_at", [&] { (void)reactor.call_at(reactor.time(), [] {}); }, soon},
            {"TimerHandle::cancel", [&] { (void)timer.cancel(); }, soon},
            {"TimerHandle::pending", [&] { (void)timer.pending(); }, soon},
            {"add_signal_handler", [&] { reactor.add_signal_handler(SIGUSR2, [] {}); }, soon},
            {"remove_signal_handler", [&] { (void)reactor.remove_signal_handler(SIGUSR2); }, soon},
            {"run", [&] { reactor.run(); }, soon},
            {"run_once", [&] { (void)reactor.run_once(); }, soon},
            {"run_once(0)", [&] { (void)reactor.run_once(0s); }, soon},
            {"stop", [&] { reactor.stop(); }, stop},
            {"close", [&] { reactor.close(); }, stop},
            {"set_exception_handler", [&] { reactor.set_exception_handler({}); }, soon},
            {"embed_fd", [&] { (void)reactor.embed_fd(); }, soon},
            {"time_to_next_work", [&] { (void)reactor.time_to_next_work(); }, soon},
            {"scheduled_count", [&] { (void)reactor.scheduled_count(); }, soon},
        };
        std::vector<Outcome> outcomes;
        bool running_seen = false;
        bool closed_seen = true;
        std::string name_seen;
        const bool watchdog_fired = run_while(reactor, [&] {
            for (const EntryPoint& entry : entry_points) {
                outcomes.push_back(attempt(entry));
            }
            // What only reads may be asked from anywhere.
            running_seen = reactor.is_running();
            closed_seen = reactor.is_closed();
            name_seen = reactor.selector_name();
            (void)reactor.time();
        });
        CHECK_FALSE(watchdog_fired);
        REQUIRE(outcomes.size() == entry_points.size());
        for (const Outcome& outcome : outcomes) {
            CAPTURE(outcome.name);
            CAPTURE(outcome.message);
            CHECK(outcome.logic_error);
            CHECK(outcome.names_alternative);
        }
        CHECK(running_seen);
        CHECK_FALSE(closed_seen);
        CHECK(name_seen == selector);

        // Nothing changed, and the reactor works on.
        CHECK(reactor.has_reader(busy_fd));
        CHECK_FALSE(reactor.has_reader(free_fd));
        CHECK_FALSE(reactor.has_writer(free_fd));
        CHECK(timer.pending());
        CHECK(reactor.scheduled_count() == 1);
        CHECK_FALSE(reactor.is_running());
        CHECK_FALSE(reactor.is_closed());
        muxio::test::write_all(registered.left.get(), "x");
        bool soon_ran = false;
        reactor.call_soon([&] { soon_ran = true; });
        CHECK(reactor.run_once(1s) == 2);
        CHECK(soon_ran);
        CHECK(reads == 1);
        REQUIRE(::raise(SIGUSR2) == 0);
        CHECK(reactor.run_once(1s) == 1);
        CHECK(signals == 1);
        CHECK(reactor.remove_reader(busy_fd));
        CHECK(reactor.remove_signal_handler(SIGUSR2));
        CHECK(timer.cancel());
    }
}

TEST_CASE("a reactor running on another thread refuses this one until it stops") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(selector) {
        Reactor reactor{with_selector(selector)};
        std::promise<void> started;
        auto running = started.get_future();
        reactor.call_soon([&] { started.set_value(); });
        std::thread loop{[&] { reactor.run(); }};
        REQUIRE(running.wait_for(5s) == std::future_status::ready);
        CHECK(reactor.is_running());
        CHECK_THROWS_AS(reactor.call_soon([] {}), std::logic_error);
        CHECK_THROWS_AS(reactor.run_once(0s), std::logic_error);
        CHECK_THROWS_AS(reactor.stop(), std::logic_error);
        // The thread-safe ways work.
        std::promise<std::thread::id> ran_on;
        reactor.call_soon_threadsafe([&] { ran_on.set_value(std::this_thread::get_id()); });
        auto where = ran_on.get_future();
        REQUIRE(where.wait_for(5s) == std::future_status::ready);
        CHECK(where.get() == loop.get_id());
        reactor.stop_threadsafe();
        loop.join();
        // Once it stopped (the join orders it), this thread may use it.
        CHECK_FALSE(reactor.is_running());
        bool ran = false;
        reactor.call_soon([&] { ran = true; });
        CHECK(reactor.run_once(0s) == 1);
        CHECK(ran);
    }
}

TEST_CASE("while nobody runs it, any thread may use a reactor, one at a time") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(selector) {
        Reactor reactor{with_selector(selector)};
        SocketPair pair;
        int ran = 0;
        reactor.call_soon([&] { ++ran; });
        // Another thread schedules, registers, runs an iteration, cancels.
        std::thread other{[&] {
            reactor.call_soon([&] { ++ran; });
            reactor.call_later(1h, [] {});
            reactor.add_reader(pair.right.get(), [] {});
            CHECK(reactor.has_reader(pair.right.get()));
            CHECK(reactor.run_once(0s) == 2);
            CHECK(reactor.scheduled_count() == 1);
            CHECK(reactor.remove_reader(pair.right.get()));
            reactor.stop();
        }};
        other.join();
        CHECK(ran == 2);
        // And it is handed back: run() here sees the stop() made there.
        reactor.run();
        CHECK(reactor.scheduled_count() == 1);
        // Another thread may close it too.
        std::thread closer{[&] { reactor.close(); }};
        closer.join();
        CHECK(reactor.is_closed());
    }
}

TEST_CASE("the loop thread itself may use every entry point from a callback") {
    FdLeakCheck leak_check;
    Reactor reactor;
    SocketPair pair;
    bool done = false;
    reactor.call_soon([&] {
        reactor.add_reader(pair.right.get(), [] {});
        CHECK(reactor.has_reader(pair.right.get()));
        TimerHandle timer = reactor.call_later(1h, [] {});
        CHECK(timer.pending());
        CHECK(timer.cancel());
        CHECK_FALSE(reactor.time_to_next_work().has_value());
        CHECK(reactor.scheduled_count() == 0);
        CHECK(reactor.remove_reader(pair.right.get()));
        CHECK_THROWS_WITH_AS(reactor.run_once(0s), doctest::Contains("already running"), std::logic_error);
        CHECK_THROWS_WITH_AS(reactor.close(), doctest::Contains("running"), std::logic_error);
        done = true;
        reactor.stop();
    });
    reactor.run();
    CHECK(done);
}
