// Introspection and debugging: the exception handler told which callback
// failed, the counts of stats(), the loop's metrics, and debug mode's
// slow-callback warnings and report at close, on a manual clock that the
// callbacks themselves advance (no sleeping).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "muxio/reactor.hpp"
#include "reactor/reactor_support.hpp"
#include "support/captured_log.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::CallbackKind;
using muxio::CallbackOrigin;
using muxio::Reactor;
using muxio::ReactorStats;
using muxio::reactor_test::ManualClock;
using muxio::reactor_test::SavedSignal;
using muxio::reactor_test::with_selector;
using muxio::test::CapturedLog;
using muxio::test::FdLeakCheck;
using muxio::test::SocketPair;

namespace {

bool contains(const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
}

bool same_counts(const ReactorStats& a, const ReactorStats& b) {
    return a.descriptors == b.descriptors && a.readers == b.readers && a.writers == b.writers &&
           a.soon_callbacks == b.soon_callbacks && a.timers == b.timers && a.signal_handlers == b.signal_handlers;
}

ReactorStats counts(std::size_t descriptors, std::size_t readers, std::size_t writers, std::size_t soon = 0,
                    std::size_t timers = 0, std::size_t signals = 0) {
    ReactorStats stats;
    stats.descriptors = descriptors;
    stats.readers = readers;
    stats.writers = writers;
    stats.soon_callbacks = soon;
    stats.timers = timers;
    stats.signal_handlers = signals;
    return stats;
}

}  // namespace

TEST_CASE("the exception handler with an origin is told which callback threw") {
    FdLeakCheck leak_check;
    const SavedSignal saved{SIGUSR2};
    ManualClock clock;
    Reactor reactor{clock.options()};
    std::vector<CallbackOrigin> origins;
    reactor.set_exception_handler([&](std::exception_ptr error, const CallbackOrigin& origin) {
        CHECK(static_cast<bool>(error));
        origins.push_back(origin);
    });
    SocketPair pair;
    const int fd = pair.left.get();
    reactor.add_reader(fd, [] { throw std::runtime_error{"reader"}; });
    reactor.add_writer(fd, [] { throw std::runtime_error{"writer"}; });
    reactor.call_soon([] { throw std::runtime_error{"soon"}; });
    reactor.call_later(1ms, [] { throw std::runtime_error{"timer"}; });
    reactor.call_soon_threadsafe([] { throw 42; });
    reactor.add_signal_handler(SIGUSR2, [] { throw std::runtime_error{"signal"}; });
    muxio::test::write_all(pair.right.get(), "x");
    REQUIRE(::raise(SIGUSR2) == 0);
    clock.advance(1ms);
    for (int iteration = 0; iteration < 3 && origins.size() < 6; ++iteration) {
        (void)reactor.run_once(0s);
    }
    REQUIRE(reactor.remove_reader(fd));
    REQUIRE(reactor.remove_writer(fd));
    REQUIRE(origins.size() == 6);
    std::vector<std::string> described;
    for (const CallbackOrigin& origin : origins) {
        described.push_back(muxio::describe(origin));
    }
    const auto has = [&](const std::string& text) {
        return std::find(described.begin(), described.end(), text) != described.end();
    };
    CHECK(has(fmt::format("reader of fd {}", fd)));
    CHECK(has(fmt::format("writer of fd {}", fd)));
    CHECK(has("timer"));
    CHECK(has("call_soon callback"));
    CHECK(has("call_soon_threadsafe callback"));
    CHECK(has(fmt::format("handler of signal {}", SIGUSR2)));
    for (const CallbackOrigin& origin : origins) {
        const bool io = origin.kind == CallbackKind::reader || origin.kind == CallbackKind::writer;
        CHECK(origin.fd == (io ? fd : -1));
        CHECK(origin.signo == (origin.kind == CallbackKind::signal ? SIGUSR2 : 0));
    }
}

TEST_CASE("the default exception handler names the failed callback in its log line") {
    FdLeakCheck leak_check;
    CapturedLog log;
    ManualClock clock;
    Reactor reactor{clock.options()};
    SocketPair pair;
    reactor.add_writer(pair.left.get(), [&] {
        CHECK(reactor.remove_writer(pair.left.get()));
        throw std::runtime_error{"writer broke"};
    });
    reactor.call_later(0s, [] { throw std::runtime_error{"timer broke"}; });
    CHECK(reactor.run_once(0s) == 2);
    const std::string text = log.text();
    CHECK(contains(text, fmt::format("exception in writer of fd {}: writer broke", pair.left.get())));
    CHECK(contains(text, "exception in timer: timer broke"));
}

TEST_CASE("an empty handler or nullptr restores the default exception handler, whichever overload set it") {
    FdLeakCheck leak_check;
    CapturedLog log;
    Reactor reactor;
    int handled = 0;
    reactor.set_exception_handler([&](std::exception_ptr, const CallbackOrigin&) { ++handled; });
    reactor.call_soon([] { throw std::runtime_error{"first"}; });
    CHECK(reactor.run_once(0s) == 1);
    reactor.set_exception_handler(nullptr);
    reactor.call_soon([] { throw std::runtime_error{"second"}; });
    CHECK(reactor.run_once(0s) == 1);
    reactor.set_exception_handler([&](std::exception_ptr, const CallbackOrigin&) { ++handled; });
    reactor.set_exception_handler(Reactor::OriginExceptionHandler{});
    reactor.call_soon([] { throw std::runtime_error{"third"}; });
    CHECK(reactor.run_once(0s) == 1);
    CHECK(handled == 1);
    CHECK_FALSE(contains(log.text(), "first"));
    CHECK(contains(log.text(), "exception in call_soon callback: second"));
    CHECK(contains(log.text(), "exception in call_soon callback: third"));
}

TEST_CASE("an exception thrown by the exception handler is logged with the callback it was about") {
    FdLeakCheck leak_check;
    CapturedLog log;
    Reactor reactor;
    reactor.set_exception_handler(
        [](std::exception_ptr, const CallbackOrigin&) { throw std::runtime_error{"handler broke"}; });
    reactor.call_soon([] { throw std::runtime_error{"callback broke"}; });
    CHECK(reactor.run_once(0s) == 1);
    CHECK(contains(log.text(), "exception in call_soon callback: handler broke"));
}

TEST_CASE("stats counts descriptors, readers, writers, queued callbacks, timers and signal handlers") {
    FdLeakCheck leak_check;
    const SavedSignal saved{SIGUSR2};
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        CHECK(same_counts(reactor.stats(), counts(0, 0, 0)));
        SocketPair first;
        SocketPair second;
        reactor.add_reader(first.left.get(), [] {});
        reactor.add_writer(first.left.get(), [] {});
        reactor.add_reader(first.left.get(), [] {});  // a replacement counts once
        reactor.add_writer(second.left.get(), [] {});
        CHECK(same_counts(reactor.stats(), counts(2, 1, 2)));
        muxio::TimerHandle soon = reactor.call_soon([] {});
        reactor.call_soon([] {});
        muxio::TimerHandle timer = reactor.call_later(1h, [] {});
        reactor.call_every(1h, [] {});
        reactor.add_signal_handler(SIGUSR2, [] {});
        CHECK(same_counts(reactor.stats(), counts(2, 1, 2, 2, 2, 1)));
        CHECK(soon.cancel());
        CHECK(timer.cancel());
        CHECK(reactor.remove_reader(first.left.get()));
        CHECK_FALSE(reactor.remove_reader(first.left.get()));
        CHECK(same_counts(reactor.stats(), counts(2, 0, 2, 1, 1, 1)));
        CHECK(reactor.run_once(0s) == 3);  // the call_soon callback and the two writers
        CHECK(reactor.remove_writer(first.left.get()));
        CHECK(reactor.remove_signal_handler(SIGUSR2));
        CHECK(same_counts(reactor.stats(), counts(1, 0, 1, 0, 1, 0)));
        // A refused add changes nothing: the fd is closed.
        const int closed = second.right.release();
        ::close(closed);
        CHECK_THROWS_AS(reactor.add_reader(closed, [] {}), std::system_error);
        CHECK(same_counts(reactor.stats(), counts(1, 0, 1, 0, 1, 0)));
        reactor.close();
        CHECK(same_counts(reactor.stats(), counts(0, 0, 0)));
    }
}

TEST_CASE(
    "stats stays in step with has_reader and has_writer when sides go from a descriptor closed behind the "
    "reactor's back") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        const int fd = pair.left.get();
        reactor.add_reader(fd, [] {});
        reactor.add_writer(fd, [] {});
        const int closed = pair.left.release();
        ::close(closed);
        CHECK(reactor.remove_reader(fd));
        ReactorStats stats = reactor.stats();
        CHECK(stats.readers == (reactor.has_reader(fd) ? 1U : 0U));
        CHECK(stats.writers == (reactor.has_writer(fd) ? 1U : 0U));
        CHECK(stats.descriptors == (reactor.has_writer(fd) ? 1U : 0U));
        (void)reactor.remove_writer(fd);
        CHECK(same_counts(reactor.stats(), counts(0, 0, 0)));
    }
}

TEST_CASE("metrics count iterations and the callbacks they ran") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    CHECK(reactor.metrics().iterations == 0);
    reactor.call_soon([] {});
    reactor.call_soon([] {});
    CHECK(reactor.run_once(0s) == 2);
    CHECK(reactor.run_once(0s) == 0);
    reactor.call_soon([&] { reactor.stop(); });
    reactor.run();
    const muxio::ReactorMetrics metrics = reactor.metrics();
    CHECK(metrics.iterations == 3);
    CHECK(metrics.callbacks_run == 3);
    CHECK(metrics.idle_time == Reactor::Duration::zero());  // not asked for
    CHECK(metrics.slow_callbacks == 0);
    reactor.close();
    CHECK(reactor.metrics().iterations == 3);  // still readable
}

TEST_CASE("metrics report how late due timers were taken, the last time and the most") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    reactor.call_later(10ms, [] {});
    clock.advance(15ms);
    CHECK(reactor.run_once(0s) == 1);
    CHECK(reactor.metrics().timer_lag_last == 5ms);
    CHECK(reactor.metrics().timer_lag_max == 5ms);
    reactor.call_later(2ms, [] {});
    reactor.call_later(3ms, [] {});
    clock.advance(3ms);
    CHECK(reactor.run_once(0s) == 2);
    CHECK(reactor.metrics().timer_lag_last == 1ms);  // the earliest due timer's lateness
    CHECK(reactor.metrics().timer_lag_max == 5ms);
}

TEST_CASE("metrics measure the time idle in the kernel wait when asked to") {
    FdLeakCheck leak_check;
    Reactor reactor;
    reactor.set_idle_time_measurement(true);
    CHECK(reactor.run_once(2ms) == 0);
    CHECK(reactor.metrics().idle_time >= 2ms);
    Reactor plain;
    CHECK(plain.run_once(1ms) == 0);
    CHECK(plain.metrics().idle_time == Reactor::Duration::zero());
}

TEST_CASE("metrics are read from another thread while the loop runs") {
    FdLeakCheck leak_check;
    Reactor reactor;
    std::atomic<bool> done{false};
    std::uint64_t seen = 0;
    std::thread reader{[&] {
        const auto give_up = std::chrono::steady_clock::now() + 10s;
        while (seen < 1000 && std::chrono::steady_clock::now() < give_up) {
            seen = reactor.metrics().iterations;
        }
        done = true;
        reactor.stop_threadsafe();
    }};
    // One callback per iteration, until the reader has seen enough.
    std::function<void()> again = [&] {
        if (!done) {
            reactor.call_soon([&] { again(); });
        }
    };
    reactor.call_soon([&] { again(); });
    reactor.run();
    reader.join();
    CHECK(seen >= 1000);
}

TEST_CASE("debug mode warns about callbacks slower than the threshold, naming what they were registered for") {
    FdLeakCheck leak_check;
    CapturedLog log;
    ManualClock clock;
    Reactor reactor{clock.options()};
    reactor.set_slow_callback_threshold(10ms);
    SocketPair pair;
    const int fd = pair.left.get();
    reactor.add_writer(fd, [&] {
        clock.advance(20ms);
        CHECK(reactor.remove_writer(fd));  // gone by the time it is reported: named all the same
    });
    reactor.call_soon([&] { clock.advance(12ms); });
    reactor.call_soon([&] { clock.advance(1ms); });  // fast enough
    reactor.call_later(0s, [&] { clock.advance(10ms); });
    reactor.call_soon_threadsafe([&] { clock.advance(30ms); });
    CHECK(reactor.run_once(0s) == 5);
    const std::string text = log.text();
    CHECK(contains(text, fmt::format("slow callback: writer of fd {} took 20.000 ms (threshold 10.000 ms)", fd)));
    CHECK(contains(text, "slow callback: call_soon callback took 12.000 ms"));
    CHECK_FALSE(contains(text, "took 1.000 ms"));
    CHECK(contains(text, "slow callback: timer took 10.000 ms"));
    CHECK(contains(text, "slow callback: call_soon_threadsafe callback took 30.000 ms"));
    CHECK(reactor.metrics().slow_callbacks == 4);
    // Off again: nothing more is timed.
    reactor.set_slow_callback_threshold(std::nullopt);
    reactor.call_soon([&] { clock.advance(1h); });
    CHECK(reactor.run_once(0s) == 1);
    CHECK(reactor.metrics().slow_callbacks == 4);
}

TEST_CASE("debug mode reports a slow signal handler once, as the handler of its signal") {
    FdLeakCheck leak_check;
    const SavedSignal saved{SIGUSR2};
    CapturedLog log;
    ManualClock clock;
    Reactor reactor{clock.options()};
    reactor.set_slow_callback_threshold(5ms);
    reactor.add_signal_handler(SIGUSR2, [&] { clock.advance(6ms); });
    REQUIRE(::raise(SIGUSR2) == 0);
    for (int iteration = 0; iteration < 3 && reactor.metrics().slow_callbacks == 0; ++iteration) {
        (void)reactor.run_once(1s);
    }
    CHECK(reactor.metrics().slow_callbacks == 1);
    CHECK(contains(log.text(), fmt::format("slow callback: handler of signal {} took 6.000 ms", SIGUSR2)));
    CHECK_FALSE(contains(log.text(), "slow callback: call_soon"));
}

TEST_CASE("debug mode reports the descriptors and timers still registered at close") {
    FdLeakCheck leak_check;
    CapturedLog log;
    ManualClock clock;
    Reactor reactor{clock.options()};
    SocketPair pair;
    reactor.add_reader(pair.left.get(), [] {});
    reactor.add_writer(pair.left.get(), [] {});
    reactor.add_writer(pair.right.get(), [] {});
    reactor.call_later(1h, [] {});
    reactor.close();
    CHECK(log.text().empty());  // debug mode is off
    Reactor debugged{clock.options()};
    debugged.set_slow_callback_threshold(1s);
    debugged.add_reader(pair.left.get(), [] {});
    debugged.add_writer(pair.left.get(), [] {});
    debugged.add_writer(pair.right.get(), [] {});
    debugged.call_later(1h, [] {});
    debugged.call_soon([] {});
    debugged.close();
    const std::string text = log.text();
    CHECK(contains(text, fmt::format("close: fd {} still has a reader and a writer", pair.left.get())));
    CHECK(contains(text, fmt::format("close: fd {} still has a writer", pair.right.get())));
    CHECK(contains(text, "close: 1 timer(s) still scheduled"));
    CHECK(contains(text, "close: 1 call_soon callback(s) still queued"));
}
