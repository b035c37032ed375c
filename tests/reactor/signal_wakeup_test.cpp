// Reactor::wakeup_from_signal() called from a raw signal handler the test
// installs with sigaction: the loop's wait returns at once, errno is left
// alone, a refused write is not lost, and nothing happens after close().
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <thread>

#include <doctest/doctest.h>

#include "muxio/reactor.hpp"
#include "reactor/reactor_support.hpp"
#include "reactor/wakeup_fault.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::reactor_test::SavedSignal;
using muxio::reactor_test::with_selector;
using muxio::test::FdLeakCheck;
using muxio::test::Stopwatch;

namespace {

// What the raw handler reaches: set before the signal is raised.
std::atomic<Reactor*> woken_reactor{nullptr};
std::atomic<int> deliveries{0};
std::atomic<int> errno_after_wakeup{0};

extern "C" void raw_handler(int /*signo*/) {
    deliveries.fetch_add(1, std::memory_order_relaxed);
    if (Reactor* reactor = woken_reactor.load(std::memory_order_acquire)) {
        // A value the wakeup must leave alone; the interrupted code's errno
        // is restored after, as a signal handler must.
        const int interrupted_errno = errno;
        errno = EDOM;
        reactor->wakeup_from_signal();
        errno_after_wakeup.store(errno, std::memory_order_relaxed);
        errno = interrupted_errno;
    }
}

void install_raw_handler(int signo) {
    struct sigaction action {};
    action.sa_handler = raw_handler;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    REQUIRE(::sigaction(signo, &action, nullptr) == 0);
}

// Makes the signal handler's wakeup write fail, as a kernel refusing it would.
int refuse_signal_writes(muxio::detail::WakeupCall call, int /*fd*/) noexcept {
    return call == muxio::detail::WakeupCall::signal_write ? ENOSPC : 0;
}

struct FaultGuard {
    explicit FaultGuard(muxio::detail::WakeupFault fault) { muxio::detail::wakeup_fault.store(fault); }
    ~FaultGuard() { muxio::detail::wakeup_fault.store(nullptr); }
    FaultGuard(const FaultGuard&) = delete;
    FaultGuard& operator=(const FaultGuard&) = delete;
};

struct ForgetReactor {
    ~ForgetReactor() { woken_reactor.store(nullptr); }
};

}  // namespace

TEST_CASE("wakeup_from_signal in a raw signal handler makes run_once return without waiting out its timeout") {
    FdLeakCheck leak_check;
    const SavedSignal saved{SIGUSR1};
    install_raw_handler(SIGUSR1);
    const ForgetReactor forget;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        woken_reactor.store(&reactor);
        deliveries = 0;
        errno_after_wakeup = 0;
        REQUIRE(::raise(SIGUSR1) == 0);
        CHECK(deliveries == 1);
        CHECK(errno_after_wakeup == EDOM);  // the handler's errno, untouched
        const Stopwatch stopwatch;
        CHECK(reactor.run_once(30s) == 0);
        CHECK(stopwatch.elapsed() < 10s);
        // Consumed: the next wait is waited out.
        CHECK(reactor.run_once(1ms) == 0);
        woken_reactor.store(nullptr);
    }
}

TEST_CASE("wakeup_from_signal from a signal sent to the loop's thread by another thread ends its blocking wait") {
    FdLeakCheck leak_check;
    const SavedSignal saved{SIGUSR1};
    install_raw_handler(SIGUSR1);
    const ForgetReactor forget;
    Reactor reactor;
    woken_reactor.store(&reactor);
    deliveries = 0;
    const pthread_t loop_thread = ::pthread_self();
    std::thread sender{[&] {
        // Before or during the wait: either way the wait must end.
        REQUIRE(::pthread_kill(loop_thread, SIGUSR1) == 0);
    }};
    const Stopwatch stopwatch;
    std::size_t ran = 0;
    for (int iteration = 0; iteration < 100 && deliveries == 0; ++iteration) {
        ran += reactor.run_once(30s);
    }
    sender.join();
    CHECK(deliveries == 1);
    CHECK(ran == 0);
    CHECK(stopwatch.elapsed() < 10s);
}

TEST_CASE("wakeup_from_signal from another thread wakes the loop and races with nothing") {
    FdLeakCheck leak_check;
    Reactor reactor;
    std::atomic<bool> stop{false};
    std::thread waker{[&] {
        const auto give_up = std::chrono::steady_clock::now() + 10s;
        while (!stop && std::chrono::steady_clock::now() < give_up) {
            reactor.wakeup_from_signal();
            std::this_thread::yield();
        }
    }};
    int woke = 0;
    for (; woke < 50; ++woke) {
        (void)reactor.run_once(10s);
    }
    stop = true;
    waker.join();
    CHECK(woke == 50);
    CHECK(reactor.metrics().iterations == 50);
}

TEST_CASE("a wakeup_from_signal whose write the kernel refuses keeps errno and breaks no later wakeup") {
    FdLeakCheck leak_check;
    Reactor reactor;
    {
        const FaultGuard fault{refuse_signal_writes};
        errno = EDOM;
        reactor.wakeup_from_signal();
        CHECK(errno == EDOM);
    }
    reactor.wakeup_from_signal();
    const Stopwatch stopwatch;
    CHECK(reactor.run_once(30s) == 0);
    CHECK(stopwatch.elapsed() < 10s);
}

TEST_CASE("wakeup_from_signal after close does nothing and keeps errno") {
    FdLeakCheck leak_check;
    Reactor reactor;
    reactor.close();
    errno = EDOM;
    reactor.wakeup_from_signal();
    CHECK(errno == EDOM);
}
