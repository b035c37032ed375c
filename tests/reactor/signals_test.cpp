// Signal handlers: run in the loop (never in signal context), coalesced
// between iterations, one reactor per signal, and the previous disposition
// restored on removal and on close.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <future>
#include <optional>
#include <stdexcept>
#include <thread>

#include <doctest/doctest.h>

#include "muxio/reactor.hpp"
#include "reactor/reactor_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::reactor_test::current_handler;
using muxio::reactor_test::SavedSignal;
using muxio::reactor_test::Tracked;
using muxio::reactor_test::with_selector;
using muxio::test::FdLeakCheck;

namespace {

std::atomic<int> test_handler_calls{0};
extern "C" void test_handler(int /*signo*/) {
    test_handler_calls.fetch_add(1);
}

// Installs `handler` for `signo` with sigaction.
void install(int signo, void (*handler)(int), int flags = 0) {
    struct sigaction action {};
    action.sa_handler = handler;
    sigemptyset(&action.sa_mask);
    action.sa_flags = flags;
    REQUIRE(::sigaction(signo, &action, nullptr) == 0);
}

// Whether `handler` is the one installed for `signo` now.
bool handler_is(int signo, void (*handler)(int)) {
    return current_handler(signo) == handler;
}

int current_flags(int signo) {
    struct sigaction now {};
    REQUIRE(::sigaction(signo, nullptr, &now) == 0);
    return now.sa_flags;
}

}  // namespace

TEST_CASE("a signal is delivered to its handler in the loop") {
    FdLeakCheck leak_check;
    const SavedSignal saved{SIGUSR1};
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        int calls = 0;
        std::thread::id ran_on;
        reactor.add_signal_handler(SIGUSR1, [&] {
            ++calls;
            ran_on = std::this_thread::get_id();
        });
        REQUIRE(::raise(SIGUSR1) == 0);
        CHECK(calls == 0);  // not run in signal context
        CHECK(reactor.run_once(1s) == 1);
        CHECK(calls == 1);
        CHECK(ran_on == std::this_thread::get_id());
        CHECK(reactor.run_once(0s) == 0);
        CHECK(calls == 1);
        CHECK(reactor.remove_signal_handler(SIGUSR1));
    }
}

TEST_CASE("signals delivered between two iterations coalesce into one call") {
    FdLeakCheck leak_check;
    const SavedSignal saved{SIGUSR1};
    Reactor reactor;
    int calls = 0;
    reactor.add_signal_handler(SIGUSR1, [&] { ++calls; });
    for (int i = 0; i < 5; ++i) {
        REQUIRE(::raise(SIGUSR1) == 0);
    }
    CHECK(reactor.run_once(1s) == 1);
    CHECK(calls == 1);
    REQUIRE(::raise(SIGUSR1) == 0);
    CHECK(reactor.run_once(1s) == 1);
    CHECK(calls == 2);
    CHECK(reactor.remove_signal_handler(SIGUSR1));
}

TEST_CASE("a signal from another thread wakes a blocked loop") {
    FdLeakCheck leak_check;
    const SavedSignal saved{SIGUSR2};
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        const pthread_t loop_thread = ::pthread_self();
        bool handled = false;
        bool timed_out = false;
        reactor.add_signal_handler(SIGUSR2, [&] {
            handled = true;
            reactor.stop();
        });
        reactor.call_later(5s, [&] {
            timed_out = true;
            reactor.stop();
        });
        std::promise<void> started;
        reactor.call_soon([&] { started.set_value(); });
        std::thread sender{[&, future = started.get_future()] {
            if (future.wait_for(5s) != std::future_status::ready) {
                return;
            }
            // Only so the loop is likely blocked when the signal comes; the
            // assertions do not depend on it.
            std::this_thread::sleep_for(10ms);
            ::pthread_kill(loop_thread, SIGUSR2);
        }};
        reactor.run();
        sender.join();
        CHECK(handled);
        CHECK_FALSE(timed_out);
        CHECK(reactor.remove_signal_handler(SIGUSR2));
    }
}

TEST_CASE("removing a signal handler restores the previous disposition") {
    FdLeakCheck leak_check;
    const SavedSignal saved{SIGUSR1};
    Reactor reactor;
    SUBCASE("a handler function") {
        install(SIGUSR1, test_handler, SA_RESTART | SA_NODEFER);
        reactor.add_signal_handler(SIGUSR1, [] {});
        CHECK_FALSE(handler_is(SIGUSR1, test_handler));
        CHECK(reactor.remove_signal_handler(SIGUSR1));
        CHECK(handler_is(SIGUSR1, test_handler));
        CHECK((current_flags(SIGUSR1) & SA_NODEFER) != 0);
        const int before = test_handler_calls.load();
        REQUIRE(::raise(SIGUSR1) == 0);
        CHECK(test_handler_calls.load() == before + 1);
    }
    SUBCASE("ignored") {
        install(SIGUSR1, SIG_IGN);
        reactor.add_signal_handler(SIGUSR1, [] {});
        CHECK_FALSE(handler_is(SIGUSR1, SIG_IGN));
        CHECK(reactor.remove_signal_handler(SIGUSR1));
        CHECK(handler_is(SIGUSR1, SIG_IGN));
    }
    SUBCASE("the default") {
        install(SIGUSR1, SIG_DFL);
        reactor.add_signal_handler(SIGUSR1, [] {});
        CHECK_FALSE(handler_is(SIGUSR1, SIG_DFL));
        CHECK(reactor.remove_signal_handler(SIGUSR1));
        CHECK(handler_is(SIGUSR1, SIG_DFL));
    }
    CHECK_FALSE(reactor.remove_signal_handler(SIGUSR1));
}

TEST_CASE("close restores the previous disposition of every handled signal") {
    FdLeakCheck leak_check;
    const SavedSignal saved1{SIGUSR1};
    const SavedSignal saved2{SIGUSR2};
    install(SIGUSR1, test_handler);
    install(SIGUSR2, SIG_IGN);
    std::atomic<int> destroyed{0};
    {
        Reactor reactor;
        reactor.add_signal_handler(SIGUSR1, [tracked = Tracked{destroyed}] {});
        reactor.add_signal_handler(SIGUSR2, [tracked = Tracked{destroyed}] {});
        CHECK_FALSE(handler_is(SIGUSR1, test_handler));
        CHECK_FALSE(handler_is(SIGUSR2, SIG_IGN));
        reactor.close();
        CHECK(destroyed == 2);
        CHECK(handler_is(SIGUSR1, test_handler));
        CHECK(handler_is(SIGUSR2, SIG_IGN));
    }
    // The destructor of a reactor never closed explicitly does the same.
    {
        Reactor reactor;
        reactor.add_signal_handler(SIGUSR1, [] {});
    }
    CHECK(handler_is(SIGUSR1, test_handler));
}

TEST_CASE("replacing a signal handler keeps the first saved disposition") {
    FdLeakCheck leak_check;
    const SavedSignal saved{SIGUSR1};
    install(SIGUSR1, test_handler);
    Reactor reactor;
    std::atomic<int> old_destroyed{0};
    int first = 0;
    int second = 0;
    reactor.add_signal_handler(SIGUSR1, [&, tracked = Tracked{old_destroyed}] { ++first; });
    reactor.add_signal_handler(SIGUSR1, [&] { ++second; });
    CHECK(old_destroyed == 1);
    REQUIRE(::raise(SIGUSR1) == 0);
    CHECK(reactor.run_once(1s) == 1);
    CHECK(first == 0);
    CHECK(second == 1);
    CHECK(reactor.remove_signal_handler(SIGUSR1));
    CHECK(handler_is(SIGUSR1, test_handler));
}

TEST_CASE("a signal handler may remove itself") {
    FdLeakCheck leak_check;
    const SavedSignal saved{SIGUSR1};
    install(SIGUSR1, SIG_IGN);
    Reactor reactor;
    int calls = 0;
    std::optional<bool> removed;
    reactor.add_signal_handler(SIGUSR1, [&] {
        ++calls;
        removed = reactor.remove_signal_handler(SIGUSR1);
    });
    REQUIRE(::raise(SIGUSR1) == 0);
    CHECK(reactor.run_once(1s) == 1);
    CHECK(removed == true);
    CHECK(handler_is(SIGUSR1, SIG_IGN));
    REQUIRE(::raise(SIGUSR1) == 0);  // ignored now
    CHECK(reactor.run_once(0s) == 0);
    CHECK(calls == 1);
    CHECK_FALSE(reactor.remove_signal_handler(SIGUSR1));
}

TEST_CASE("a signal pending when its handler is removed is not delivered to it") {
    FdLeakCheck leak_check;
    const SavedSignal saved{SIGUSR1};
    Reactor reactor;
    int calls = 0;
    reactor.add_signal_handler(SIGUSR1, [&] { ++calls; });
    REQUIRE(::raise(SIGUSR1) == 0);
    CHECK(reactor.remove_signal_handler(SIGUSR1));
    reactor.run_once(0s);
    CHECK(calls == 0);
}

TEST_CASE("one reactor per signal") {
    FdLeakCheck leak_check;
    const SavedSignal saved{SIGUSR1};
    Reactor first;
    Reactor second;
    first.add_signal_handler(SIGUSR1, [] {});
    CHECK_THROWS_AS(second.add_signal_handler(SIGUSR1, [] {}), std::logic_error);
    CHECK_FALSE(second.remove_signal_handler(SIGUSR1));
    CHECK(first.remove_signal_handler(SIGUSR1));
    int calls = 0;
    CHECK_NOTHROW(second.add_signal_handler(SIGUSR1, [&] { ++calls; }));
    REQUIRE(::raise(SIGUSR1) == 0);
    CHECK(first.run_once(0s) == 0);
    CHECK(second.run_once(1s) == 1);
    CHECK(calls == 1);
    CHECK(second.remove_signal_handler(SIGUSR1));
}

TEST_CASE("add_signal_handler refuses SIGKILL and SIGSTOP and numbers out of range") {
    FdLeakCheck leak_check;
    Reactor reactor;
    for (const int signo : {SIGKILL, SIGSTOP, 0, -1, 65, 1000}) {
        CAPTURE(signo);
        CHECK_THROWS_AS(reactor.add_signal_handler(signo, [] {}), std::invalid_argument);
        CHECK_FALSE(reactor.remove_signal_handler(signo));
    }
}
