// The embedding examples README.md shows, compiled and run. The code between
// each pair of readme-begin and readme-end markers is printed in README.md
// verbatim; readme_snippets_test.cpp fails when the two differ.

// readme-begin: host-loop
#include <poll.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <functional>
#include <system_error>

#include <muxio/muxio.hpp>

// A program's own poll(2) loop, with a reactor as one of its sources. The
// reactor's embed_fd() polls readable whenever the reactor has work: ready
// I/O, a queued callback, a signal, or a timer that has come due. So the
// loop passes poll() only its own deadline: here, how long it tolerates
// silence. Returns true once `done()` holds, false after that silence.
bool host_loop(muxio::Reactor& reactor, int own_fd, const std::function<void()>& on_own_fd,
               const std::function<bool()>& done, int silence_ms) {
    std::array<pollfd, 2> watched{};
    watched[0] = {reactor.embed_fd(), POLLIN, 0};
    watched[1] = {own_fd, POLLIN, 0};
    while (!done()) {
        const int ready = ::poll(watched.data(), watched.size(), silence_ms);
        if (ready < 0 && errno == EINTR) {
            continue;  // a signal the reactor handles makes embed_fd() readable
        }
        if (ready < 0) {
            throw std::system_error(errno, std::system_category(), "poll");
        }
        if (ready == 0) {
            return false;
        }
        if (watched[0].revents != 0) {
            reactor.run_once(std::chrono::seconds{0});  // runs what is due, never waits
        }
        if (watched[1].revents != 0) {
            on_own_fd();
        }
    }
    return true;
}
// readme-end: host-loop

// readme-begin: host-timeout
#include <algorithm>
#include <climits>
#include <optional>

// poll()'s timeout in a host loop whose reactor reads an injected clock
// (ReactorOptions::clock). embed_fd() learns of that clock's timers through
// the time left as the clock read when they were scheduled and after each
// iteration, counted on the kernel's clock: a clock that jumps ahead in
// between is seen by time_to_next_work() alone.
int poll_timeout_ms(const muxio::Reactor& reactor, int own_timeout_ms) {
    const std::optional<muxio::Reactor::Duration> wait = reactor.time_to_next_work();
    if (!wait) {
        return own_timeout_ms;  // no callback or timer: only I/O brings work, and embed_fd() shows it
    }
    // Rounded up: waking before the deadline would find nothing due, and spin.
    const auto ms = std::chrono::ceil<std::chrono::milliseconds>(*wait).count();
    const int reactor_ms = static_cast<int>(std::clamp<decltype(ms)>(ms, 0, INT_MAX));
    return own_timeout_ms < 0 ? reactor_ms : std::min(own_timeout_ms, reactor_ms);
}
// readme-end: host-timeout

#include <unistd.h>

#include <string>

#include <doctest/doctest.h>

#include "reactor/reactor_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::reactor_test::embeddable_selectors;
using muxio::reactor_test::ManualClock;
using muxio::reactor_test::with_selector;
using muxio::test::FdLeakCheck;
using muxio::test::Pipe;
using muxio::test::SocketPair;
using muxio::test::Stopwatch;

TEST_CASE("the README's host loop runs the reactor's I/O, callbacks and timers with its own work") {
    FdLeakCheck leak_check;
    for (const std::string& name : embeddable_selectors()) {
        SUBCASE(name.c_str()) {
            Reactor reactor{with_selector(name)};
            SocketPair pair;
            Pipe own;
            bool read_by_reactor = false;
            bool soon_ran = false;
            bool timer_ran = false;
            bool own_work = false;
            Stopwatch since_start;
            std::chrono::nanoseconds timer_after{};

            reactor.add_reader(pair.right.get(), [&] {
                read_by_reactor = muxio::test::drain(pair.right.get()) > 0;
                reactor.remove_reader(pair.right.get());
            });
            reactor.call_soon([&] { soon_ran = true; });
            // The host's poll() has no timeout shorter than 5 s: only
            // embed_fd() can bring this timer in time.
            reactor.call_later(20ms, [&] {
                timer_ran = true;
                timer_after = since_start.elapsed();
            });
            muxio::test::write_all(pair.left.get(), "x");
            muxio::test::write_all(own.write_end.get(), "y");

            const bool done = host_loop(
                reactor, own.read_end.get(), [&] { own_work = muxio::test::drain(own.read_end.get()) > 0; },
                [&] { return read_by_reactor && soon_ran && timer_ran && own_work; }, 5000);
            CHECK(done);
            CHECK(read_by_reactor);
            CHECK(soon_ran);
            CHECK(own_work);
            CHECK(timer_ran);
            CHECK(timer_after >= 20ms);
            CHECK(since_start.elapsed() < 4s);
        }
    }
}

TEST_CASE("the README's host loop returns after its own silence when the reactor has nothing to do") {
    FdLeakCheck leak_check;
    for (const std::string& name : embeddable_selectors()) {
        SUBCASE(name.c_str()) {
            Reactor reactor{with_selector(name)};
            Pipe own;
            reactor.call_later(1h, [] {});
            int own_calls = 0;
            Stopwatch stopwatch;
            CHECK_FALSE(host_loop(
                reactor, own.read_end.get(), [&] { ++own_calls; }, [] { return false; }, 30));
            CHECK(stopwatch.elapsed() >= 30ms);
            CHECK(own_calls == 0);
        }
    }
}

TEST_CASE("the README's host timeout sees an injected clock's timer that embed_fd does not") {
    FdLeakCheck leak_check;
    for (const std::string& name : embeddable_selectors()) {
        SUBCASE(name.c_str()) {
            ManualClock clock;
            Reactor reactor{clock.options(name)};
            pollfd watched{reactor.embed_fd(), POLLIN, 0};

            // Nothing scheduled: the host's own timeout, whatever it is.
            CHECK(poll_timeout_ms(reactor, -1) == -1);
            CHECK(poll_timeout_ms(reactor, 250) == 250);

            bool ran = false;
            reactor.call_later(1h, [&] { ran = true; });
            CHECK(poll_timeout_ms(reactor, -1) == 3'600'000);
            CHECK(poll_timeout_ms(reactor, 250) == 250);

            // The injected clock jumps past the deadline. The descriptor's
            // timer still counts the hour on the kernel's clock.
            clock.advance(2h);
            CHECK(::poll(&watched, 1, 0) == 0);
            CHECK(poll_timeout_ms(reactor, -1) == 0);
            reactor.run_once(0s);
            CHECK(ran);
            CHECK(poll_timeout_ms(reactor, -1) == -1);

            // Rounded up, never down.
            reactor.call_later(1500us, [] {});
            CHECK(poll_timeout_ms(reactor, -1) == 2);
            // A queued callback: no wait at all.
            reactor.call_soon([] {});
            CHECK(poll_timeout_ms(reactor, -1) == 0);
        }
    }
}
