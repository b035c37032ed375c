// epoll(7): Linux. Cost per wait follows the ready descriptors, not the
// registered ones.
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>

#include "muxio/detail/poller.hpp"
#include "muxio/error.hpp"

namespace muxio::detail {
namespace {

std::uint32_t to_epoll_mask(Events events) noexcept {
    std::uint32_t mask = 0;
    if (events.contains(EVENT_READ)) {
        mask |= EPOLLIN;
    }
    if (events.contains(EVENT_WRITE)) {
        mask |= EPOLLOUT;
    }
    return mask;
}

// epoll_pwait2 (Linux 5.11) takes a timespec; older kernels answer ENOSYS
// once and the process falls back to millisecond epoll_wait for good.
std::atomic<bool> kernel_has_epoll_pwait2{true};

class EpollPoller final : public Poller {
public:
    EpollPoller() : epfd_{::epoll_create1(EPOLL_CLOEXEC)} {
        if (epfd_ < 0) {
            throw_system_error(errno, "epoll_create1");
        }
        events_.resize(1);
    }
    ~EpollPoller() override { close(); }

    std::string_view name() const noexcept override { return "epoll"; }
    int fileno() const noexcept override { return epfd_; }

    void add(int fd, Events events, std::uint64_t token) override {
        control(EPOLL_CTL_ADD, fd, events, token, "epoll_ctl(ADD)");
        ++registered_;
        // One slot per registration, as Python does, so one wait can report
        // every ready descriptor; grown here, never in wait().
        if (events_.size() < registered_) {
            events_.resize(std::max(registered_, events_.size() * 2));
        }
    }

    void modify(int fd, Events /*old_events*/, Events new_events, std::uint64_t token) override {
        control(EPOLL_CTL_MOD, fd, new_events, token, "epoll_ctl(MOD)");
    }

    std::error_code remove(int fd, Events /*events*/) noexcept override {
        if (registered_ > 0) {
            --registered_;
        }
        if (::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr) == -1) {
            return {errno, std::system_category()};
        }
        return {};
    }

    void close() noexcept override {
        if (epfd_ >= 0) {
            ::close(epfd_);
            epfd_ = -1;
        }
    }

    // Closing this process's copy of the descriptor leaves the instance, and
    // the parent's registrations in it, as they are; epoll_ctl would not.
    void abandon() noexcept override { close(); }

protected:
    int wait_once(Timeout timeout, std::vector<PollEvent>& ready) override {
        const int capacity = static_cast<int>(std::min<std::size_t>(events_.size(), INT32_MAX));
        const int count = wait_kernel(timeout, capacity);
        if (count < 0) {
            return errno;
        }
        for (int i = 0; i < count; ++i) {
            const epoll_event& event = events_[static_cast<std::size_t>(i)];
            Events events;
            if ((event.events & EPOLLIN) != 0) {
                events |= EVENT_READ;
            }
            if ((event.events & EPOLLOUT) != 0) {
                events |= EVENT_WRITE;
            }
            if ((event.events & (EPOLLERR | EPOLLHUP)) != 0) {
                events |= EVENT_READ_WRITE;
            }
            ready.push_back({event.data.u64, events});
        }
        return 0;
    }

private:
    int wait_kernel(Timeout timeout, int capacity) noexcept {
        // epoll_pwait2 costs more per call than epoll_wait (it copies in a
        // timespec and sets up an hrtimer), so it is used only when the
        // timeout has a sub-millisecond part that epoll_wait would round up.
        const bool needs_fine_timeout = timeout && *timeout > std::chrono::nanoseconds::zero() &&
                                        *timeout % std::chrono::milliseconds{1} != std::chrono::nanoseconds::zero();
        if (needs_fine_timeout && kernel_has_epoll_pwait2.load(std::memory_order_relaxed)) {
            const auto spec = to_timespec(timeout);
            const int count = ::epoll_pwait2(epfd_, events_.data(), capacity, spec ? &*spec : nullptr, nullptr);
            if (count >= 0 || errno != ENOSYS) {
                return count;
            }
            kernel_has_epoll_pwait2.store(false, std::memory_order_relaxed);
        }
        return ::epoll_wait(epfd_, events_.data(), capacity, to_milliseconds(timeout));
    }

    void control(int op, int fd, Events events, std::uint64_t token, std::string_view operation) {
        epoll_event event{};
        event.events = to_epoll_mask(events);
        event.data.u64 = token;
        if (::epoll_ctl(epfd_, op, fd, &event) == -1) {
            throw_system_error(errno, operation, fd);
        }
    }

    int epfd_;
    std::vector<epoll_event> events_;
    std::size_t registered_ = 0;
};

}  // namespace

std::unique_ptr<Poller> make_epoll_poller() {
    return std::make_unique<EpollPoller>();
}

}  // namespace muxio::detail
