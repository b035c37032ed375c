// Helpers for the reactor suites: the selectors each case runs on, a manual
// clock, destruction counters, the allocation counter, and a look at the
// reactor's wakeup eventfd from outside.
#pragma once

#include "support/support.hpp"

#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/reactor.hpp"

namespace muxio::reactor_test {

/// The mechanisms compiled in that the running kernel accepts, best first. A
/// refused one (io_uring under seccomp) is reported once and left out.
const std::vector<std::string>& usable_selectors();

/// Those of usable_selectors() whose selector owns a pollable kernel object,
/// so embed_fd() works (epoll, io_uring, kqueue).
std::vector<std::string> embeddable_selectors();

/// Runs the rest of the enclosing block once per usable selector, each as its
/// own doctest SUBCASE named after the mechanism.
#define MUXIO_FOR_EACH_SELECTOR(name)                                         \
    for (const std::string& name : ::muxio::reactor_test::usable_selectors()) \
    SUBCASE(name.c_str())

/// Reactor options naming a selector.
inline ReactorOptions with_selector(std::string_view name) {
    ReactorOptions options;
    options.selector = name;
    return options;
}

/// A clock that moves only when told to.
class ManualClock {
public:
    using TimePoint = Reactor::TimePoint;
    using Duration = Reactor::Duration;

    [[nodiscard]] TimePoint now() const noexcept { return now_; }
    void advance(Duration by) noexcept { now_ += by; }
    void set(TimePoint to) noexcept { now_ = to; }

    /// Options for a reactor reading this clock; the clock must outlive it.
    [[nodiscard]] ReactorOptions options(std::string_view selector = {}) {
        ReactorOptions options;
        options.selector = selector;
        options.clock = [this] { return now_; };
        return options;
    }

private:
    TimePoint now_{std::chrono::hours{1}};
};

/// Adds one to a counter when destroyed; a moved-from instance adds nothing.
/// Captured in callbacks to count how many of them were destroyed.
class Tracked {
public:
    explicit Tracked(std::atomic<int>& destroyed) noexcept : destroyed_{&destroyed} {}
    Tracked(Tracked&& other) noexcept : destroyed_{std::exchange(other.destroyed_, nullptr)} {}
    Tracked(const Tracked&) = delete;
    Tracked& operator=(const Tracked&) = delete;
    Tracked& operator=(Tracked&&) = delete;
    ~Tracked() {
        if (destroyed_ != nullptr) {
            destroyed_->fetch_add(1, std::memory_order_relaxed);
        }
    }

private:
    std::atomic<int>* destroyed_;
};

/// True in a ThreadSanitizer build. Its runtime defines operator new itself
/// (a second definition does not link), so such a build counts no
/// allocations; and it skips the single-threaded bulk test of a million
/// timers, which it would slow down tenfold for nothing.
inline constexpr bool under_thread_sanitizer = MUXIO_TEST_TSAN != 0;

using muxio::test::allocation_count;
using muxio::test::counts_allocations;

/// The descriptors open in this process now.
std::vector<int> open_fds();

/// The one eventfd among the descriptors opened since `before` was taken;
/// fails the test unless there is exactly one.
int find_new_eventfd(const std::vector<int>& before);

/// Like find_new_eventfd() for a timerfd (an embedded reactor's timer).
int find_new_timerfd(const std::vector<int>& before);

/// The counter of eventfd `fd`, read from /proc/self/fdinfo without reading
/// (and so resetting) the eventfd itself.
std::uint64_t eventfd_count(int fd);

/// Saves a signal's disposition and restores it when destroyed.
class SavedSignal {
public:
    explicit SavedSignal(int signo);
    ~SavedSignal();
    SavedSignal(const SavedSignal&) = delete;
    SavedSignal& operator=(const SavedSignal&) = delete;

private:
    int signo_;
    struct sigaction saved_ {};
};

/// The handler (sa_handler) installed for `signo` now.
void (*current_handler(int signo))(int);

}  // namespace muxio::reactor_test
