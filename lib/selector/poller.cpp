// The parts every mechanism shares: the PEP 475 retry loop, timeout
// conversions, and choosing a mechanism by name or by what the kernel accepts.
#include "muxio/detail/poller.hpp"

#include <fcntl.h>
#include <sys/time.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "base/exception_code.hpp"
#include "muxio/error.hpp"
#include "muxio/log.hpp"
#include "muxio/selectors.hpp"

namespace muxio::detail {

using std::chrono::nanoseconds;
using Clock = std::chrono::steady_clock;

namespace {

bool reports_live(std::span<const PollEvent> events, LiveFilter live) noexcept {
    if (live.is_live == nullptr) {
        return true;
    }
    return std::any_of(events.begin(), events.end(),
                       [&](const PollEvent& event) { return live.is_live(live.owner, event.token); });
}

}  // namespace

std::span<const PollEvent> Poller::wait(Timeout timeout, LiveFilter live) {
    ready_.clear();
    if (timeout && *timeout < nanoseconds::zero()) {
        timeout = nanoseconds::zero();
    }
    // The deadline is taken once, so a retry after a signal waits only for
    // the time left, and a flood of signals cannot stretch the wait.
    const bool bounded = timeout && *timeout > nanoseconds::zero();
    const Clock::time_point deadline = bounded && *timeout < Clock::time_point::max() - Clock::now()
                                           ? Clock::now() + *timeout
                                           : Clock::time_point::max();
    bool purged_while_polling = false;
    for (;;) {
        const int error = wait_once(timeout, ready_);
        if (error == 0) {
            if (!may_report_stale_ || ready_.empty() || reports_live(ready_, live)) [[likely]] {
                return ready_;
            }
            ready_.clear();
            if (const int failed = purge_stale(); failed != 0) {
                throw_system_error(failed, fmt::format("{} wait: dropping stale registrations", name()));
            }
            // A poll looks once more after the purge: stale events may have
            // taken the room of live ones in the kernel's answer.
            if (timeout && *timeout == nanoseconds::zero()) {
                if (purged_while_polling) {
                    return ready_;
                }
                purged_while_polling = true;
            }
        } else if (error != EINTR) {
            throw_system_error(error, fmt::format("{} wait", name()));
        }
        ready_.clear();
        if (bounded && deadline != Clock::time_point::max()) {
            timeout = std::max(nanoseconds::zero(), std::chrono::duration_cast<nanoseconds>(deadline - Clock::now()));
        }
    }
}

void Poller::try_add(int fd, Events events, std::uint64_t token, std::error_code& error) noexcept {
    error.clear();
    try {
        add(fd, events, token);
    } catch (...) {
        error = detail::code_of_current_exception();
    }
}

void Poller::try_modify(int fd, Events old_events, Events new_events, std::uint64_t token,
                        std::error_code& error) noexcept {
    error.clear();
    try {
        modify(fd, old_events, new_events, token);
    } catch (...) {
        error = detail::code_of_current_exception();
    }
}

void Poller::reregister(int fd, Events old_events, Events new_events, std::uint64_t token) {
    if (::fcntl(fd, F_GETFD) == -1) {
        throw_system_error(errno, fmt::format("{}: register", name()), fd);
    }
    modify(fd, old_events, new_events, token);
}

int Poller::to_milliseconds(Timeout timeout) noexcept {
    if (!timeout) {
        return -1;
    }
    if (*timeout <= nanoseconds::zero()) {
        return 0;
    }
    const auto millis = std::chrono::ceil<std::chrono::milliseconds>(*timeout).count();
    return millis > INT_MAX ? INT_MAX : static_cast<int>(millis);
}

std::optional<std::timespec> Poller::to_timespec(Timeout timeout) noexcept {
    if (!timeout) {
        return std::nullopt;
    }
    const auto ns = std::max(timeout->count(), nanoseconds::rep{0});
    std::timespec spec{};
    spec.tv_sec = static_cast<std::time_t>(ns / 1'000'000'000);
    spec.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    return spec;
}

bool Poller::to_timeval(Timeout timeout, ::timeval& out) noexcept {
    if (!timeout) {
        return false;
    }
    const auto us =
        std::max(std::chrono::ceil<std::chrono::microseconds>(*timeout).count(), std::chrono::microseconds::rep{0});
    out.tv_sec = static_cast<decltype(out.tv_sec)>(us / 1'000'000);
    out.tv_usec = static_cast<decltype(out.tv_usec)>(us % 1'000'000);
    return true;
}

namespace {

// Best first: io_uring and epoll cost nothing per idle descriptor. Which of
// the two leads is decided by bench-select (bench/select_bench.cpp; see
// docs/BENCHMARKS.md).
constexpr auto compiled_pollers = std::to_array<PollerFactory>({
#if MUXIO_HAS_EPOLL
    {"epoll", &make_epoll_poller},
#endif
#if MUXIO_HAS_IO_URING
        {"io_uring", &make_io_uring_poller},
#endif
#if MUXIO_HAS_KQUEUE
        {"kqueue", &make_kqueue_poller},
#endif
#if MUXIO_HAS_DEVPOLL
        {"devpoll", &make_devpoll_poller},
#endif
        {"poll", &make_poll_poller}, {"select", &make_select_poller},
});

}  // namespace

std::span<const PollerFactory> available_pollers() noexcept {
    return compiled_pollers;
}

std::unique_ptr<Poller> make_poller(std::string_view name) {
    for (const PollerFactory& factory : compiled_pollers) {
        if (factory.name == name) {
            return factory.make();
        }
    }
    std::vector<std::string_view> names;
    for (const PollerFactory& factory : compiled_pollers) {
        names.push_back(factory.name);
    }
    throw std::invalid_argument(fmt::format("unknown selector '{}'; this build has: {}", name, fmt::join(names, ", ")));
}

std::unique_ptr<Poller> make_first_accepted(std::span<const PollerFactory> candidates) {
    std::optional<std::system_error> last_refusal;
    for (const PollerFactory& factory : candidates) {
        try {
            auto poller = factory.make();
            if (last_refusal) {
                logger().info("selector: using {}", factory.name);
            }
            return poller;
        } catch (const std::system_error& refusal) {
            logger().info("selector: the kernel refused {} ({}); trying the next mechanism", factory.name,
                          refusal.what());
            last_refusal = refusal;
        }
    }
    if (last_refusal) {
        throw *last_refusal;
    }
    throw std::invalid_argument("make_first_accepted: no candidate mechanisms");
}

std::unique_ptr<Poller> make_default_poller() {
    if (const char* forced = std::getenv("MUXIO_SELECTOR"); forced != nullptr && *forced != '\0') {
        return make_poller(forced);
    }
    return make_first_accepted(compiled_pollers);
}

}  // namespace muxio::detail

namespace muxio {

std::vector<std::string_view> available_selectors() {
    std::vector<std::string_view> names;
    for (const detail::PollerFactory& factory : detail::available_pollers()) {
        names.push_back(factory.name);
    }
    return names;
}

}  // namespace muxio
