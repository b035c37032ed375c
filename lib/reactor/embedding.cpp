// Embedding the reactor in another event loop: a timerfd in the selector
// keeps the selector's own descriptor readable whenever the reactor has work.
#include "muxio/reactor.hpp"

#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <ctime>
#include <limits>
#include <stdexcept>

#include <fmt/format.h>

#include "muxio/error.hpp"
#include "reactor/reactor_impl.hpp"
#include "selector/completion_ring.hpp"
#include "selector/descriptor_table.hpp"

namespace muxio {

namespace {

// A positive duration as a timespec: whole seconds and the nanoseconds left.
// Duration::max() is about 292 years, which a 64-bit time_t holds, and the
// kernel clamps a timer that far away to its own limit.
std::timespec to_timespec(Reactor::Duration duration) noexcept {
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(duration);
    std::timespec spec{};
    spec.tv_sec = static_cast<std::time_t>(
        std::min<std::chrono::seconds::rep>(seconds.count(), std::numeric_limits<std::time_t>::max()));
    spec.tv_nsec = static_cast<long>(std::chrono::duration_cast<std::chrono::nanoseconds>(duration - seconds).count());
    return spec;
}

}  // namespace

// ----- Embedding ------------------------------------------------------------------------------------

int Reactor::embed_fd() {
    check_usable("embed_fd");
    Impl& impl = *impl_;
    const int selector_fd = impl.selector->fileno();
    if (selector_fd < 0) {
        throw std::logic_error(
            fmt::format("embed_fd: the {} selector has no pollable descriptor; use epoll, io_uring or kqueue",
                        impl.selector->name()));
    }
    if (impl.embed_timer_fd < 0) {
        detail::OwnedFd timer{::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)};
        if (!timer.valid()) {
            throw_system_error(errno, "timerfd_create");
        }
        impl.selector->register_(timer.get(), EVENT_READ);
        impl.embed_timer_fd = timer.release();
        embedded_ = true;
        rearm_embedding();
    }
    return selector_fd;
}

void Reactor::rearm_embedding() {
    Impl& impl = *impl_;
    // Work queued: fire at once (TimePoint::min() stands for "now").
    // Otherwise at the nearest timer. Ready descriptors make the selector's
    // own descriptor readable without help.
    const std::optional<TimePoint> target =
        soon_.queue.empty() ? impl.scheduler.next_deadline() : std::optional<TimePoint>{TimePoint::min()};
    if (target == impl.embed_armed_for) {
        return;
    }
    itimerspec spec{};  // all zero: disarmed
    int flags = 0;
    if (target) {
        // A zero it_value would disarm the timer: one nanosecond is the
        // earliest expiry that still fires.
        constexpr Duration earliest{1};
        if (impl.clock) {
            // An injected clock has no kernel counterpart: arm for the time
            // left as that clock sees it now, on the real clock.
            spec.it_value = to_timespec(std::max(detail::time_until(*target, impl.now()), earliest));
        } else {
            // steady_clock is CLOCK_MONOTONIC: arm at the deadline itself, so
            // time spent between now and the call cannot push it later.
            spec.it_value = to_timespec(std::max(target->time_since_epoch(), earliest));
            flags = TFD_TIMER_ABSTIME;
        }
    }
    if (::timerfd_settime(impl.embed_timer_fd, flags, &spec, nullptr) == -1) {
        throw_system_error(errno, "timerfd_settime", impl.embed_timer_fd);
    }
    impl.embed_armed_for = target;
}

std::optional<Reactor::Duration> Reactor::time_to_next_work() const {
    check_thread("time_to_next_work");
    if (closed_) {
        return std::nullopt;
    }
    if (!soon_.queue.empty() || (impl_->completions != nullptr && impl_->completions->has_completions())) {
        return Duration::zero();
    }
    if (const auto deadline = impl_->scheduler.next_deadline()) {
        return impl_->time_until(*deadline);
    }
    return std::nullopt;
}

}  // namespace muxio
