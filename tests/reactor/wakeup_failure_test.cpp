// Failures of the reactor's wakeup eventfd, injected through
// detail::wakeup_fault (lib/reactor/wakeup_fault.hpp): a write refused by the kernel
// is reported to call_soon_threadsafe()'s caller and loses no later wakeup,
// EINTR is retried, a full counter still wakes, a failed signal write still
// runs the handler, and a failed drain stops the iteration instead of
// spinning. On every selector; the threaded cases under TSan too.
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/reactor.hpp"
#include "reactor/reactor_support.hpp"
#include "reactor/wakeup_fault.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::detail::WakeupCall;
using muxio::reactor_test::embeddable_selectors;
using muxio::reactor_test::eventfd_count;
using muxio::reactor_test::find_new_eventfd;
using muxio::reactor_test::find_new_timerfd;
using muxio::reactor_test::open_fds;
using muxio::reactor_test::SavedSignal;
using muxio::reactor_test::Tracked;
using muxio::reactor_test::with_selector;
using muxio::test::FdLeakCheck;
using muxio::test::Stopwatch;

namespace {

// A hang check for what must happen at once, not a measure of speed.
constexpr auto prompt = 1s;

// The faults to inject, per kind of call, into calls on one descriptor.
// Lock-free atomics only: the hook runs in signal handlers too.
struct Faults {
    std::atomic<int> fd{-1};
    std::array<std::atomic<int>, 3> remaining{};  // how many calls still fail
    std::array<std::atomic<int>, 3> error{};      // with which errno
    std::array<std::atomic<int>, 3> every{};      // or: every n-th call fails
    std::array<std::atomic<int>, 3> seen{};       // calls on `fd` so far
    // Run (on the calling thread) by the next threadsafe write that fails,
    // before it reports the failure.
    std::function<void()> while_failing;
};
Faults faults;

constexpr std::size_t index_of(WakeupCall call) noexcept {
    return static_cast<std::size_t>(call);
}

int inject(WakeupCall call, int fd) noexcept {
    if (fd != faults.fd.load()) {
        return 0;
    }
    const std::size_t index = index_of(call);
    const int seen = faults.seen[index].fetch_add(1) + 1;
    bool fail = false;
    if (const int every = faults.every[index].load(); every > 0) {
        fail = seen % every == 0;
    }
    for (int left = faults.remaining[index].load(); !fail && left > 0;) {
        fail = faults.remaining[index].compare_exchange_weak(left, left - 1);
    }
    if (!fail) {
        return 0;
    }
    if (call == WakeupCall::threadsafe_write && faults.while_failing) {
        std::exchange(faults.while_failing, nullptr)();
    }
    return faults.error[index].load();
}

// Installs the hook for calls on `fd`; uninstalls it and forgets every
// fault when destroyed.
class ScopedFaults {
public:
    explicit ScopedFaults(int fd) {
        faults.fd = fd;
        muxio::detail::wakeup_fault = &inject;
    }
    ~ScopedFaults() {
        muxio::detail::wakeup_fault = nullptr;
        faults.fd = -1;
        for (std::size_t index = 0; index < faults.remaining.size(); ++index) {
            faults.remaining[index] = 0;
            faults.every[index] = 0;
            faults.seen[index] = 0;
        }
        faults.while_failing = nullptr;
    }
    ScopedFaults(const ScopedFaults&) = delete;
    ScopedFaults& operator=(const ScopedFaults&) = delete;

    // The next `count` calls of kind `call` fail with `error`.
    void fail_next(WakeupCall call, int count, int error) {
        faults.error[index_of(call)] = error;
        faults.remaining[index_of(call)] = count;
    }
    // Every `nth` call of kind `call` fails with `error`.
    void fail_every(WakeupCall call, int nth, int error) {
        faults.error[index_of(call)] = error;
        faults.every[index_of(call)] = nth;
    }
    int seen(WakeupCall call) const { return faults.seen[index_of(call)].load(); }
};

// A reactor on `selector` and its wakeup eventfd.
struct WakeableReactor {
    explicit WakeableReactor(const std::string& selector)
        : before{open_fds()}, reactor{with_selector(selector)}, wake_fd{find_new_eventfd(before)} {}
    std::vector<int> before;
    Reactor reactor;
    int wake_fd;
};

}  // namespace

TEST_CASE("a failed wakeup write throws system_error, drops that callback and loses no later wakeup") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(selector) {
        WakeableReactor wakeable{selector};
        Reactor& reactor = wakeable.reactor;
        ScopedFaults injected{wakeable.wake_fd};
        injected.fail_next(WakeupCall::threadsafe_write, 1, EIO);

        std::atomic<int> destroyed{0};
        bool refused_ran = false;
        try {
            reactor.call_soon_threadsafe([&refused_ran, tracked = Tracked{destroyed}] { refused_ran = true; });
            FAIL("call_soon_threadsafe did not report the failed write");
        } catch (const std::system_error& error) {
            CHECK(error.code() == std::error_code{EIO, std::system_category()});
            CHECK(std::string{error.what()}.find("call_soon_threadsafe") != std::string::npos);
        }
        // The refused callback was destroyed before the throw, not queued.
        CHECK(destroyed == 1);
        CHECK(eventfd_count(wakeable.wake_fd) == 0);

        // The next calls write again and wake the loop.
        for (int round = 0; round < 2; ++round) {
            CAPTURE(round);
            bool ran = false;
            reactor.call_soon_threadsafe([&] { ran = true; });
            CHECK(eventfd_count(wakeable.wake_fd) == 1);
            const Stopwatch stopwatch;
            CHECK(reactor.run_once(2s) == 1);
            CHECK(ran);
            CHECK(stopwatch.elapsed() < prompt);
        }
        CHECK_FALSE(refused_ran);
    }
}

TEST_CASE("callbacks queued behind a failed wakeup write run in the next iteration") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(selector) {
        WakeableReactor wakeable{selector};
        Reactor& reactor = wakeable.reactor;
        ScopedFaults injected{wakeable.wake_fd};
        injected.fail_next(WakeupCall::threadsafe_write, 1, EIO);
        // Queued while the first call's write is under way, so it does not
        // write itself: it counts on the write that is about to fail.
        int behind = 0;
        faults.while_failing = [&] { reactor.call_soon_threadsafe([&] { ++behind; }); };
        CHECK_THROWS_AS(reactor.call_soon_threadsafe([] {}), std::system_error);
        CHECK(eventfd_count(wakeable.wake_fd) == 0);
        // Whatever wakes the loop next (here: a poll) takes it.
        CHECK(reactor.run_once(0s) == 1);
        CHECK(behind == 1);
        // And the wakeup works again.
        reactor.call_soon_threadsafe([&] { ++behind; });
        CHECK(reactor.run_once(2s) == 1);
        CHECK(behind == 2);
    }
}

TEST_CASE("a wakeup missed by one reactor does not disturb another's") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(selector) {
        WakeableReactor first{selector};
        WakeableReactor second{selector};
        int ran = 0;
        first.reactor.call_soon_threadsafe([&] { ++ran; });
        {
            // A failed write in the second reactor, with a callback behind it.
            ScopedFaults injected{second.wake_fd};
            injected.fail_next(WakeupCall::threadsafe_write, 1, EIO);
            faults.while_failing = [&] { second.reactor.call_soon_threadsafe([&] { ran += 10; }); };
            CHECK_THROWS_AS(second.reactor.call_soon_threadsafe([] {}), std::system_error);
        }
        // The first reactor's iteration takes its queue once for the drained
        // wakeup, once more for the missed one: each callback runs once.
        const Stopwatch stopwatch;
        CHECK(first.reactor.run_once(2s) == 1);
        CHECK(ran == 1);
        CHECK(stopwatch.elapsed() < prompt);
        CHECK(first.reactor.run_once(0s) == 0);
        first.reactor.call_soon_threadsafe([&] { ++ran; });
        CHECK(first.reactor.run_once(2s) == 1);
        CHECK(ran == 2);
        CHECK(second.reactor.run_once(0s) == 1);
        CHECK(ran == 12);
    }
}

TEST_CASE("a wakeup write interrupted by a signal is retried") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(selector) {
        WakeableReactor wakeable{selector};
        Reactor& reactor = wakeable.reactor;
        ScopedFaults injected{wakeable.wake_fd};
        injected.fail_next(WakeupCall::threadsafe_write, 3, EINTR);
        bool ran = false;
        reactor.call_soon_threadsafe([&] { ran = true; });
        CHECK(injected.seen(WakeupCall::threadsafe_write) == 4);
        CHECK(eventfd_count(wakeable.wake_fd) == 1);
        const Stopwatch stopwatch;
        CHECK(reactor.run_once(2s) == 1);
        CHECK(ran);
        CHECK(stopwatch.elapsed() < prompt);
    }
}

TEST_CASE("a full eventfd counter still wakes the loop") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(selector) {
        WakeableReactor wakeable{selector};
        Reactor& reactor = wakeable.reactor;
        // The largest count an eventfd holds: one more is EAGAIN.
        const std::uint64_t full = 0xffff'ffff'ffff'fffeU;
        REQUIRE(::write(wakeable.wake_fd, &full, sizeof full) == sizeof full);
        for (int round = 0; round < 2; ++round) {
            CAPTURE(round);
            if (round == 1) {
                REQUIRE(::write(wakeable.wake_fd, &full, sizeof full) == sizeof full);
            }
            int ran = 0;
            reactor.call_soon_threadsafe([&] { ++ran; });
            reactor.call_soon_threadsafe([&] { ++ran; });
            const Stopwatch stopwatch;
            CHECK(reactor.run_once(2s) == 2);
            CHECK(ran == 2);
            CHECK(stopwatch.elapsed() < prompt);
            CHECK(eventfd_count(wakeable.wake_fd) == 0);
        }
        // Back to one write per wakeup.
        reactor.call_soon_threadsafe([] {});
        CHECK(eventfd_count(wakeable.wake_fd) == 1);
        CHECK(reactor.run_once(2s) == 1);
    }
}

TEST_CASE("a failed wakeup write from another thread does not stop the loop from being woken") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(selector) {
        WakeableReactor wakeable{selector};
        Reactor& reactor = wakeable.reactor;
        ScopedFaults injected{wakeable.wake_fd};
        injected.fail_next(WakeupCall::threadsafe_write, 1, EBADF);
        bool watchdog_fired = false;
        reactor.call_later(10s, [&] {
            watchdog_fired = true;
            reactor.stop();
        });
        std::promise<void> started;
        reactor.call_soon([&] { started.set_value(); });
        std::atomic<bool> refused{false};
        std::atomic<bool> ran{false};
        std::thread waker{[&, running = started.get_future()] {
            if (running.wait_for(5s) != std::future_status::ready) {
                return;
            }
            try {
                reactor.call_soon_threadsafe([] {});
            } catch (const std::system_error&) {
                refused = true;
            }
            reactor.call_soon_threadsafe([&] {
                ran = true;
                reactor.stop();
            });
        }};
        const Stopwatch stopwatch;
        reactor.run();
        waker.join();
        CHECK(refused);
        CHECK(ran);
        CHECK_FALSE(watchdog_fired);
        CHECK(stopwatch.elapsed() < 5s);
    }
}

TEST_CASE("threadsafe callbacks from many threads all run or are refused while wakeup writes fail") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(selector) {
        WakeableReactor wakeable{selector};
        Reactor& reactor = wakeable.reactor;
        ScopedFaults injected{wakeable.wake_fd};
        injected.fail_every(WakeupCall::threadsafe_write, 3, EIO);
        constexpr int threads = 4;
        constexpr int per_thread = 500;
        std::atomic<int> accepted{0};
        std::atomic<int> refused{0};
        std::atomic<int> destroyed{0};
        std::atomic<int> finished{0};
        int ran = 0;  // the loop thread's
        std::vector<std::thread> posters;
        for (int t = 0; t < threads; ++t) {
            posters.emplace_back([&] {
                for (int i = 0; i < per_thread; ++i) {
                    try {
                        reactor.call_soon_threadsafe([&ran, tracked = Tracked{destroyed}] { ++ran; });
                        ++accepted;
                    } catch (const std::system_error&) {
                        ++refused;
                    }
                }
                ++finished;
            });
        }
        // Iterations of at most 5 ms: a callback queued behind a failed write
        // waits for the next iteration, not for a wakeup.
        const Stopwatch stopwatch;
        while (!(finished == threads && ran == accepted) && stopwatch.elapsed() < 20s) {
            reactor.run_once(5ms);
        }
        for (std::thread& poster : posters) {
            poster.join();
        }
        CHECK(accepted + refused == threads * per_thread);
        CHECK(ran == accepted);
        CHECK(destroyed == threads * per_thread);
        CHECK(reactor.run_once(0s) == 0);
    }
}

TEST_CASE("a failed signal wakeup write still runs the handler in the next iteration") {
    FdLeakCheck leak_check;
    const SavedSignal saved{SIGUSR1};
    MUXIO_FOR_EACH_SELECTOR(selector) {
        WakeableReactor wakeable{selector};
        Reactor& reactor = wakeable.reactor;
        int calls = 0;
        reactor.add_signal_handler(SIGUSR1, [&] { ++calls; });
        {
            ScopedFaults injected{wakeable.wake_fd};
            injected.fail_next(WakeupCall::signal_write, 1, EIO);
            REQUIRE(::raise(SIGUSR1) == 0);
            CHECK(injected.seen(WakeupCall::signal_write) == 1);
        }
        CHECK(eventfd_count(wakeable.wake_fd) == 0);
        // Whatever wakes the loop next (here: a poll) runs the handler.
        CHECK(reactor.run_once(0s) == 1);
        CHECK(calls == 1);
        // And signals wake it as before.
        REQUIRE(::raise(SIGUSR1) == 0);
        CHECK(reactor.run_once(2s) == 1);
        CHECK(calls == 2);
        CHECK(reactor.remove_signal_handler(SIGUSR1));
    }
}

TEST_CASE("a failed drain of the wakeup eventfd throws from run_once and loses nothing") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(selector) {
        WakeableReactor wakeable{selector};
        Reactor& reactor = wakeable.reactor;
        int ran = 0;
        reactor.call_soon_threadsafe([&] { ++ran; });
        {
            ScopedFaults injected{wakeable.wake_fd};
            injected.fail_next(WakeupCall::drain_read, 2, EIO);
            // Each iteration stops at the failed read rather than spinning
            // on a descriptor that stays readable.
            for (int attempt = 0; attempt < 2; ++attempt) {
                CHECK_THROWS_AS(reactor.run_once(2s), std::system_error);
            }
            CHECK(ran == 0);
        }
        const Stopwatch stopwatch;
        CHECK(reactor.run_once(2s) == 1);
        CHECK(ran == 1);
        CHECK(stopwatch.elapsed() < prompt);
        CHECK(eventfd_count(wakeable.wake_fd) == 0);
        CHECK(reactor.run_once(0s) == 0);
        // Wakeups work again.
        reactor.call_soon_threadsafe([&] { ++ran; });
        CHECK(reactor.run_once(2s) == 1);
        CHECK(ran == 2);
    }
}

TEST_CASE("a failed drain of the embedding timerfd throws from run_once and loses nothing") {
    FdLeakCheck leak_check;
    for (const std::string& selector : embeddable_selectors()) {
        SUBCASE(selector.c_str()) {
            Reactor reactor{with_selector(selector)};
            const std::vector<int> before = open_fds();
            (void)reactor.embed_fd();
            const int timer_fd = find_new_timerfd(before);
            int ran = 0;
            reactor.call_at(Reactor::TimePoint::min(), [&] { ++ran; });
            {
                ScopedFaults injected{timer_fd};
                injected.fail_next(WakeupCall::drain_read, 1, EIO);
                CHECK_THROWS_AS(reactor.run_once(2s), std::system_error);
                CHECK(ran == 0);
            }
            CHECK(reactor.run_once(2s) == 1);
            CHECK(ran == 1);
            // Drained and disarmed: the next iteration waits its timeout out.
            const Stopwatch stopwatch;
            CHECK(reactor.run_once(10ms) == 0);
            CHECK(stopwatch.elapsed() >= 10ms);
        }
    }
}
