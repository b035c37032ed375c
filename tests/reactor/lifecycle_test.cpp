// run, run_once, stop and close in every state (fresh, stop pending, running,
// closed); what close() releases; the reactor's own descriptors; awaits that
// outlive their reactor.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/awaitables.hpp"
#include "muxio/combinators.hpp"
#include "muxio/reactor.hpp"
#include "muxio/selectors.hpp"
#include "muxio/task.hpp"
#include "reactor/lifetime_support.hpp"
#include "reactor/reactor_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::Task;
using muxio::TimerHandle;
using muxio::lifetime_test::DoomedReactor;
using muxio::lifetime_test::Held;
using muxio::lifetime_test::hold;
using muxio::reactor_test::ManualClock;
using muxio::reactor_test::Tracked;
using muxio::reactor_test::with_selector;
using muxio::test::FdLeakCheck;
using muxio::test::Pipe;
using muxio::test::SocketPair;
using muxio::test::Stopwatch;
using muxio::test::write_all;

namespace {

// What a call made from inside a callback did: nothing, or threw logic_error.
enum class Outcome { returned, logic_error, other_exception };

Outcome outcome_of(const std::function<void()>& call) {
    try {
        call();
        return Outcome::returned;
    } catch (const std::logic_error&) {
        return Outcome::logic_error;
    } catch (...) {
        return Outcome::other_exception;
    }
}

Task<void> wait_readable(Reactor& reactor, int fd, std::stop_token token) {
    co_await muxio::readable(reactor, fd, std::move(token));
}

Task<void> wait_writable(Reactor& reactor, int fd, std::stop_token token) {
    co_await muxio::writable(reactor, fd, std::move(token));
}

Task<void> sleep_long(Reactor& reactor, std::stop_token token) {
    co_await muxio::sleep_for(reactor, 1h, std::move(token));
}

Task<void> yield_once(Reactor& reactor, std::stop_token token) {
    co_await muxio::yield(reactor, std::move(token));
}

}  // namespace

TEST_CASE("stop before run runs one polling iteration then returns") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        std::vector<std::string> calls;
        reactor.call_soon([&] {
            calls.emplace_back("soon");
            reactor.call_soon([&] { calls.emplace_back("next iteration"); });
        });
        reactor.add_reader(pair.right.get(), [&] {
            calls.emplace_back("reader");
            muxio::test::drain(pair.right.get());
        });
        bool timer_ran = false;
        reactor.call_later(10s, [&] { timer_ran = true; });
        write_all(pair.left.get(), "x");

        reactor.stop();
        CHECK_FALSE(reactor.is_running());
        const Stopwatch stopwatch;
        reactor.run();
        CHECK(stopwatch.elapsed() < 5s);
        CHECK_FALSE(reactor.is_running());
        CHECK(calls == std::vector<std::string>{"soon", "reader"});
        CHECK_FALSE(timer_ran);

        // The stop was used up: the next iteration runs what was scheduled.
        CHECK(reactor.run_once(0s) == 1);
        CHECK(calls.back() == "next iteration");
        CHECK(reactor.remove_reader(pair.right.get()));
    }
}

TEST_CASE("stop in a callback ends run after the current iteration") {
    FdLeakCheck leak_check;
    Reactor reactor;
    std::vector<std::string> calls;
    reactor.call_soon([&] {
        calls.emplace_back("stopper");
        reactor.stop();
        CHECK(reactor.is_running());
        reactor.call_soon([&] { calls.emplace_back("next iteration"); });
    });
    reactor.call_soon([&] { calls.emplace_back("same iteration"); });
    bool timed_out = false;
    reactor.call_later(5s, [&] {
        timed_out = true;
        reactor.stop();
    });
    reactor.run();
    CHECK_FALSE(timed_out);
    CHECK_FALSE(reactor.is_running());
    CHECK(calls == std::vector<std::string>{"stopper", "same iteration"});
    CHECK(reactor.run_once(0s) == 1);
    CHECK(calls.back() == "next iteration");
}

TEST_CASE("run runs again after it returned") {
    FdLeakCheck leak_check;
    Reactor reactor;
    int rounds = 0;
    bool timed_out = false;
    const TimerHandle guard = reactor.call_later(5s, [&] {
        timed_out = true;
        reactor.stop();
    });
    for (int round = 0; round < 3; ++round) {
        // A chain of callbacks across iterations, the last one stops.
        reactor.call_soon([&] {
            reactor.call_soon([&] {
                ++rounds;
                reactor.stop();
            });
        });
        reactor.run();
    }
    CHECK(rounds == 3);
    CHECK_FALSE(timed_out);
    CHECK(guard.pending());
}

TEST_CASE("stop when not running is kept for run and does not shorten run_once") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        reactor.stop();
        const Stopwatch waited;
        CHECK(reactor.run_once(2ms) == 0);
        CHECK(waited.elapsed() >= 2ms);

        bool timer_ran = false;
        reactor.call_later(10s, [&] { timer_ran = true; });
        const Stopwatch stopwatch;
        reactor.run();  // the stop still pending: one polling iteration
        CHECK(stopwatch.elapsed() < 5s);
        CHECK_FALSE(timer_ran);
    }
}

TEST_CASE("stop called in run_once does not make later run_once calls spin") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        reactor.call_soon([&] { reactor.stop(); });
        CHECK(reactor.run_once(0s) == 1);
        const Stopwatch waited;
        CHECK(reactor.run_once(2ms) == 0);
        CHECK(waited.elapsed() >= 2ms);
    }
}

TEST_CASE("run and run_once and close refuse inside a callback") {
    FdLeakCheck leak_check;
    Reactor reactor;
    std::optional<bool> running_inside;
    Outcome run = Outcome::returned;
    Outcome run_once = Outcome::returned;
    Outcome close = Outcome::returned;
    reactor.call_soon([&] {
        running_inside = reactor.is_running();
        run = outcome_of([&] { reactor.run(); });
        run_once = outcome_of([&] { reactor.run_once(0s); });
        close = outcome_of([&] { reactor.close(); });
    });
    CHECK(reactor.run_once(0s) == 1);
    CHECK(running_inside == true);
    CHECK(run == Outcome::logic_error);
    CHECK(run_once == Outcome::logic_error);
    CHECK(close == Outcome::logic_error);
    CHECK_FALSE(reactor.is_closed());
    CHECK_FALSE(reactor.is_running());

    // The refused close left the reactor whole, and inside run() too.
    reactor.call_soon([&] {
        close = outcome_of([&] { reactor.close(); });
        run_once = outcome_of([&] { reactor.run_once(0s); });
        reactor.stop();
    });
    reactor.run();
    CHECK(close == Outcome::logic_error);
    CHECK(run_once == Outcome::logic_error);
    reactor.close();
    CHECK(reactor.is_closed());
}

TEST_CASE("an exception escaping close in a callback goes to the exception handler") {
    FdLeakCheck leak_check;
    Reactor reactor;
    int logic_errors = 0;
    reactor.set_exception_handler([&](const std::exception_ptr& error) {
        try {
            std::rethrow_exception(error);
        } catch (const std::logic_error&) {
            ++logic_errors;
        } catch (...) {
        }
    });
    reactor.call_soon([&] { reactor.close(); });
    CHECK(reactor.run_once(0s) == 1);
    CHECK(logic_errors == 1);
    CHECK_FALSE(reactor.is_closed());
}

TEST_CASE("a closed reactor refuses to run and to schedule") {
    FdLeakCheck leak_check;
    Reactor reactor;
    SocketPair pair;
    reactor.close();
    CHECK(reactor.is_closed());
    CHECK_THROWS_AS(reactor.run(), std::logic_error);
    CHECK_THROWS_AS(reactor.run_once(0s), std::logic_error);
    CHECK_THROWS_AS(reactor.call_soon([] {}), std::logic_error);
    CHECK_THROWS_AS(reactor.call_later(1s, [] {}), std::logic_error);
    CHECK_THROWS_AS(reactor.call_at(reactor.time(), [] {}), std::logic_error);
    CHECK_THROWS_AS(reactor.add_reader(pair.left.get(), [] {}), std::logic_error);
    CHECK_THROWS_AS(reactor.add_writer(pair.left.get(), [] {}), std::logic_error);
    CHECK_THROWS_AS(reactor.add_signal_handler(SIGUSR1, [] {}), std::logic_error);
    CHECK_THROWS_AS(reactor.call_soon_threadsafe([] {}), std::logic_error);
    CHECK_THROWS_AS(reactor.stop_threadsafe(), std::logic_error);
    CHECK_THROWS_AS((void)reactor.embed_fd(), std::logic_error);
    CHECK_FALSE(reactor.remove_reader(pair.left.get()));
    CHECK_FALSE(reactor.remove_writer(pair.left.get()));
    CHECK_FALSE(reactor.remove_signal_handler(SIGUSR1));
    CHECK(reactor.scheduled_count() == 0);
    CHECK_FALSE(reactor.time_to_next_work().has_value());
    CHECK_NOTHROW(reactor.stop());
    CHECK_NOTHROW(reactor.close());
    CHECK(reactor.is_closed());
}

TEST_CASE("a refused callback is destroyed on the calling thread") {
    FdLeakCheck leak_check;
    Reactor reactor;
    reactor.close();
    std::atomic<int> destroyed{0};
    CHECK_THROWS_AS(reactor.call_soon([tracked = Tracked{destroyed}] {}), std::logic_error);
    CHECK_THROWS_AS(reactor.call_later(1s, [tracked = Tracked{destroyed}] {}), std::logic_error);
    CHECK_THROWS_AS(reactor.call_soon_threadsafe([tracked = Tracked{destroyed}] {}), std::logic_error);
    CHECK(destroyed == 3);
}

TEST_CASE("close drops every callback and destroys its captures without running it") {
    FdLeakCheck leak_check;
    const muxio::reactor_test::SavedSignal saved{SIGUSR2};
    MUXIO_FOR_EACH_SELECTOR(name) {
        std::atomic<int> destroyed{0};
        std::atomic<int> ran{0};
        SocketPair pair;
        Reactor reactor{with_selector(name)};
        const auto counted = [&] { return [&ran, tracked = Tracked{destroyed}] { ++ran; }; };
        // Queued for the next iteration by a callback of a stopped run().
        reactor.call_soon([&] {
            reactor.call_soon(counted());
            reactor.call_soon(counted());
            reactor.stop();
        });
        reactor.run();
        REQUIRE(ran == 0);
        REQUIRE(destroyed == 0);
        reactor.call_soon(counted());
        reactor.call_later(1h, counted());
        reactor.call_at(reactor.time() - 1s, counted());  // due, not yet run
        reactor.add_reader(pair.left.get(), counted());
        reactor.add_writer(pair.left.get(), counted());
        reactor.add_signal_handler(SIGUSR2, counted());
        reactor.call_soon_threadsafe(counted());  // not yet taken by the loop
        reactor.call_soon_threadsafe(counted());
        CHECK(destroyed == 0);
        reactor.close();
        CHECK(ran == 0);
        CHECK(destroyed == 10);
        CHECK(reactor.scheduled_count() == 0);
    }
}

TEST_CASE("the destructor drops every callback like close") {
    FdLeakCheck leak_check;
    std::atomic<int> destroyed{0};
    std::atomic<int> ran{0};
    SocketPair pair;
    {
        Reactor reactor;
        const auto counted = [&] { return [&ran, tracked = Tracked{destroyed}] { ++ran; }; };
        reactor.call_soon(counted());
        reactor.call_later(1h, counted());
        reactor.add_reader(pair.left.get(), counted());
        reactor.call_soon_threadsafe(counted());
    }
    CHECK(ran == 0);
    CHECK(destroyed == 4);
}

TEST_CASE("captures destroyed by close may call back into the closed reactor") {
    FdLeakCheck leak_check;
    Reactor reactor;
    SocketPair pair;
    const int fd = pair.left.get();
    TimerHandle other = reactor.call_later(2h, [] {});
    std::vector<std::optional<bool>> results;
    struct CallsBack {
        std::function<void()> on_destroy;
        CallsBack(std::function<void()> f) : on_destroy{std::move(f)} {}  // NOLINT
        CallsBack(CallsBack&& moved) noexcept : on_destroy{std::exchange(moved.on_destroy, nullptr)} {}
        CallsBack(const CallsBack&) = delete;
        CallsBack& operator=(const CallsBack&) = delete;
        CallsBack& operator=(CallsBack&&) = delete;
        ~CallsBack() {
            if (on_destroy) {
                on_destroy();
            }
        }
    };
    reactor.add_reader(fd, [guard = CallsBack{[&] { results.emplace_back(reactor.remove_reader(fd)); }}] {});
    reactor.call_later(1h, [guard = CallsBack{[&] { results.emplace_back(other.cancel()); }}] {});
    reactor.close();
    CHECK(results == std::vector<std::optional<bool>>{false, false});
}

TEST_CASE("close returns every descriptor the reactor opened") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        const muxio::reactor_test::SavedSignal saved{SIGUSR1};
        const int before = muxio::test::count_open_fds();
        Reactor reactor{with_selector(name)};
        CHECK(muxio::test::count_open_fds() > before);
        if (reactor.selector_name() != "select" && reactor.selector_name() != "poll") {
            (void)reactor.embed_fd();
        }
        reactor.add_signal_handler(SIGUSR1, [] {});
        reactor.call_soon_threadsafe([] {});
        CHECK(reactor.run_once(0s) == 1);
        reactor.close();
        CHECK(muxio::test::count_open_fds() == before);
    }
}

TEST_CASE("the reactor's descriptors are close-on-exec") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        const std::vector<int> before = muxio::reactor_test::open_fds();
        Reactor reactor{with_selector(name)};
        if (reactor.selector_name() != "select" && reactor.selector_name() != "poll") {
            (void)reactor.embed_fd();
        }
        int checked = 0;
        for (const int fd : muxio::reactor_test::open_fds()) {
            if (std::find(before.begin(), before.end(), fd) == before.end()) {
                CAPTURE(fd);
                CHECK((::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
                ++checked;
            }
        }
        CHECK(checked >= 1);
    }
}

TEST_CASE("a reactor that cannot be built leaks nothing") {
    FdLeakCheck leak_check;
    CHECK_THROWS_AS(Reactor{with_selector("no-such-mechanism")}, std::invalid_argument);
}

TEST_CASE("selector_name names the mechanism chosen") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        const Reactor reactor{with_selector(name)};
        CHECK(reactor.selector_name() == name);
    }
    const Reactor chosen;
    const auto names = muxio::available_selectors();
    CHECK(std::find(names.begin(), names.end(), chosen.selector_name()) != names.end());
}

TEST_CASE("scheduling and running small callbacks does not allocate in steady state") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        ManualClock clock;
        Reactor reactor{clock.options(name)};
        SocketPair pair;
        write_all(pair.left.get(), "x");
        int calls = 0;
        reactor.add_reader(pair.right.get(), [&calls] { ++calls; });
        const auto one_round = [&] {
            reactor.call_soon([&calls, a = 1, b = 2] { calls += a + b - 3; });
            reactor.call_later(1ms, [&calls] { ++calls; });
            reactor.call_soon_threadsafe([&calls] { ++calls; });
            clock.advance(1ms);
            return reactor.run_once(0s);
        };
        for (int warm_up = 0; warm_up < 50; ++warm_up) {
            (void)one_round();
        }
        const std::size_t before = muxio::reactor_test::allocation_count();
        std::size_t ran = 0;
        for (int round = 0; round < 100; ++round) {
            ran += one_round();
        }
        CHECK(muxio::reactor_test::allocation_count() == before);
        CHECK(ran == 400);
        CHECK(reactor.remove_reader(pair.right.get()));
    }
}

TEST_CASE("tasks suspended on a reactor's awaits are destroyed safely after it closed or was destroyed") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        for (const bool destroy : {false, true}) {
            CAPTURE(destroy);
            DoomedReactor reactor{with_selector(name)};
            SocketPair pair;
            std::stop_source stop;
            std::vector<Held> waiting;
            waiting.push_back(hold(wait_readable(*reactor, pair.left.get(), stop.get_token())));
            waiting.push_back(hold(wait_writable(*reactor, pair.right.get(), stop.get_token())));
            waiting.push_back(hold(sleep_long(*reactor, stop.get_token())));
            waiting.push_back(hold(yield_once(*reactor, stop.get_token())));
            // A timeout's timer is armed on the reactor for as long as its frame lives.
            waiting.push_back(
                hold(muxio::with_timeout(*reactor, std::chrono::hours{1}, sleep_long(*reactor, stop.get_token()))));
            for (const Held& task : waiting) {
                REQUIRE_FALSE(task.done());
            }
            if (destroy) {
                reactor.destroy();
            } else {
                reactor->close();
            }
            // The stop callbacks of the waits no longer reach the reactor.
            stop.request_stop();
            for (const Held& task : waiting) {
                CHECK_FALSE(task.done());  // nothing resumes them any more
            }
            waiting.clear();  // their frames go now: nothing left to undo
        }
    }
}
