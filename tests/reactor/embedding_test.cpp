// Embedding: one reactor drives another through embed_fd(). The outer loop
// watches the inner one's descriptor and calls run_once(0) when it polls
// readable; the inner one's timers, I/O, call_soon and threadsafe callbacks
// must all run that way, on every pair of mechanisms.
#include <unistd.h>

#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

#include <doctest/doctest.h>

#include "muxio/reactor.hpp"
#include "reactor/reactor_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::reactor_test::embeddable_selectors;
using muxio::reactor_test::usable_selectors;
using muxio::reactor_test::with_selector;
using muxio::test::FdLeakCheck;
using muxio::test::SocketPair;

namespace {

// Drives an inner reactor from an outer one until the inner one did all of
// its work or `limit` passed, and checks that all of it ran.
void check_outer_drives_inner(const std::string& inner_name, const std::string& outer_name, Reactor::Duration limit) {
    Reactor inner{with_selector(inner_name)};
    Reactor outer{with_selector(outer_name)};
    SocketPair pair;
    bool soon = false;
    bool timer = false;
    int chain = 0;
    int reads = 0;
    int threadsafe = 0;
    int inner_iterations = 0;
    std::thread second_poster;
    const auto all_done = [&] { return soon && timer && chain == 3 && reads == 5 && threadsafe == 2; };

    inner.call_soon([&] { soon = true; });
    inner.call_later(2ms, [&] { timer = true; });
    // A chain: each link is queued by the one before, during an inner iteration.
    inner.call_soon([&] {
        ++chain;
        inner.call_soon([&] {
            ++chain;
            inner.call_soon([&] { ++chain; });
        });
    });
    // Level-triggered: one byte per call, five calls.
    muxio::test::write_all(pair.left.get(), "12345");
    inner.add_reader(pair.right.get(), [&] {
        char byte = 0;
        if (::read(pair.right.get(), &byte, 1) == 1) {
            ++reads;
        }
    });
    // A threadsafe callback before the outer loop starts, and one from
    // another thread once the inner reactor has been woken before.
    inner.call_soon_threadsafe([&] {
        ++threadsafe;
        second_poster = std::thread{[&] { inner.call_soon_threadsafe([&] { ++threadsafe; }); }};
    });

    bool timed_out = false;
    outer.call_later(limit, [&] {
        timed_out = true;
        outer.stop();
    });
    outer.add_reader(inner.embed_fd(), [&] {
        inner.run_once(0s);
        ++inner_iterations;
        if (all_done()) {
            outer.stop();
        }
    });
    outer.run();
    if (second_poster.joinable()) {
        second_poster.join();
    }
    CHECK_FALSE(timed_out);
    CHECK(soon);
    CHECK(timer);
    CHECK(chain == 3);
    CHECK(reads == 5);
    CHECK(threadsafe == 2);
    CHECK(inner_iterations < 1000);
    outer.remove_reader(inner.embed_fd());
    inner.remove_reader(pair.right.get());
}

}  // namespace

TEST_CASE("embed_fd needs a selector with a kernel object") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        if (name == "select" || name == "poll") {
            CHECK_THROWS_AS((void)reactor.embed_fd(), std::logic_error);
        } else {
            const int fd = reactor.embed_fd();
            CHECK(fd >= 0);
            CHECK(reactor.embed_fd() == fd);
        }
    }
}

TEST_CASE("an outer reactor drives the timers and I/O and callbacks of an inner one") {
    FdLeakCheck leak_check;
    for (const std::string& inner_name : embeddable_selectors()) {
        for (const std::string& outer_name : usable_selectors()) {
            SUBCASE((inner_name + " inside " + outer_name).c_str()) {
                check_outer_drives_inner(inner_name, outer_name, 2s);
            }
        }
    }
}

TEST_CASE("an idle inner reactor does not wake the outer one") {
    FdLeakCheck leak_check;
    for (const std::string& inner_name : embeddable_selectors()) {
        SUBCASE(inner_name.c_str()) {
            Reactor inner{with_selector(inner_name)};
            Reactor outer{with_selector(inner_name)};
            inner.call_later(1h, [] {});
            int woken = 0;
            outer.add_reader(inner.embed_fd(), [&] {
                ++woken;
                inner.run_once(0s);
            });
            // Whatever was pending at set-up is consumed; then nothing.
            outer.run_once(0s);
            woken = 0;
            CHECK(outer.run_once(20ms) == 0);
            CHECK(woken == 0);
            // Work scheduled from outside wakes it.
            bool ran = false;
            inner.call_soon([&] { ran = true; });
            CHECK(outer.run_once(1s) == 1);
            CHECK(ran);
            outer.remove_reader(inner.embed_fd());
        }
    }
}

TEST_CASE("the embed fd becomes readable when an inner timer is due") {
    FdLeakCheck leak_check;
    for (const std::string& inner_name : embeddable_selectors()) {
        SUBCASE(inner_name.c_str()) {
            Reactor inner{with_selector(inner_name)};
            Reactor outer{with_selector(inner_name)};
            std::optional<Reactor::TimePoint> fired;
            const auto start = Reactor::Clock::now();
            (void)inner.embed_fd();
            inner.call_later(3ms, [&] { fired = Reactor::Clock::now(); });
            outer.add_reader(inner.embed_fd(), [&] { inner.run_once(0s); });
            for (int iteration = 0; iteration < 100 && !fired; ++iteration) {
                outer.run_once(5s);
            }
            REQUIRE(fired.has_value());
            CHECK(*fired - start >= 3ms);
            CHECK(*fired - start < 5s);
            outer.remove_reader(inner.embed_fd());
        }
    }
}
