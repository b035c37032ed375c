// select(2): the portable baseline. Descriptors are limited to FD_SETSIZE.
#include <fcntl.h>
#include <sys/select.h>

#include <cerrno>
#include <cstdint>
#include <stdexcept>

#include <fmt/format.h>

#include "muxio/detail/poller.hpp"
#include "selector/descriptor_table.hpp"

namespace muxio::detail {
namespace {

class SelectPoller final : public Poller {
public:
    SelectPoller() {
        FD_ZERO(&readers_);
        FD_ZERO(&writers_);
    }

    std::string_view name() const noexcept override { return "select"; }

    void add(int fd, Events events, std::uint64_t token) override {
        if (fd >= FD_SETSIZE) {
            // FD_SET past the end of an fd_set writes out of bounds.
            throw std::invalid_argument(
                fmt::format("select: fd {} is not below FD_SETSIZE ({}); use poll or epoll", fd, FD_SETSIZE));
        }
        require_open_descriptor(fd, "select: register");
        set(fd, events, token);
    }

    void modify(int fd, Events /*old_events*/, Events new_events, std::uint64_t token) override {
        set(fd, new_events, token);
    }

    std::error_code remove(int fd, Events /*events*/) noexcept override {
        if (fd < FD_SETSIZE) {
            FD_CLR(fd, &readers_);
            FD_CLR(fd, &writers_);
            tokens_.reset(fd);
            while (max_fd_ >= 0 && tokens_[max_fd_] == no_token) {
                --max_fd_;
            }
        }
        return {};
    }

    void close() noexcept override {
        FD_ZERO(&readers_);
        FD_ZERO(&writers_);
        tokens_.clear();
        max_fd_ = -1;
    }

    // No kernel object to share with a parent: closing is abandoning.
    void abandon() noexcept override { close(); }

protected:
    int wait_once(Timeout timeout, std::vector<PollEvent>& ready) override {
        fd_set readable = readers_;
        fd_set writable = writers_;
        // Exceptional conditions (TCP urgent data) are not an event muxio
        // offers, so no third set.
        ::timeval limit{};
        const bool bounded = to_timeval(timeout, limit);
        const int count = ::select(max_fd_ + 1, &readable, &writable, nullptr, bounded ? &limit : nullptr);
        if (count < 0) {
            return errno == EBADF ? report_closed(ready) : errno;
        }
        report(readable, writable, count, ready);
        return 0;
    }

private:
    static constexpr std::uint64_t no_token = ~std::uint64_t{0};

    [[gnu::always_inline]] void report(const fd_set& readable, const fd_set& writable, int count,
                                       std::vector<PollEvent>& ready) const {
        for (int fd = 0, left = count; fd <= max_fd_ && left > 0; ++fd) {
            Events events;
            if (FD_ISSET(fd, &readable)) {
                events |= EVENT_READ;
                --left;
            }
            if (FD_ISSET(fd, &writable)) {
                events |= EVENT_WRITE;
                --left;
            }
            if (events) {
                ready.push_back({tokens_[fd], events});
            }
        }
    }

    // select(2) fails the whole call (EBADF) when one registered descriptor
    // was closed. Those are reported as poll(2) reports POLLNVAL: as an error
    // condition, ready for both directions, at every wait until they are
    // removed; the others are polled without them. Costs a check per
    // registered descriptor, only while one is closed.
    [[gnu::noinline, gnu::cold]] int report_closed(std::vector<PollEvent>& ready) const {
        fd_set readable = readers_;
        fd_set writable = writers_;
        for (int fd = 0; fd <= max_fd_; ++fd) {
            if ((FD_ISSET(fd, &readable) || FD_ISSET(fd, &writable)) && ::fcntl(fd, F_GETFD) == -1 && errno == EBADF) {
                FD_CLR(fd, &readable);
                FD_CLR(fd, &writable);
                ready.push_back({tokens_[fd], EVENT_READ_WRITE});
            }
        }
        if (ready.empty()) {
            return EBADF;  // nothing registered is closed: not ours to explain
        }
        ::timeval now{};
        const int count = ::select(max_fd_ + 1, &readable, &writable, nullptr, &now);
        if (count > 0) {
            report(readable, writable, count, ready);
        }
        // A failure here (a signal, another descriptor closed meanwhile)
        // leaves the open ones for the next wait: they are level-triggered.
        return 0;
    }

    void set(int fd, Events events, std::uint64_t token) {
        tokens_.at_growing(fd) = token;
        if (events.contains(EVENT_READ)) {
            FD_SET(fd, &readers_);
        } else {
            FD_CLR(fd, &readers_);
        }
        if (events.contains(EVENT_WRITE)) {
            FD_SET(fd, &writers_);
        } else {
            FD_CLR(fd, &writers_);
        }
        max_fd_ = std::max(max_fd_, fd);
    }

    fd_set readers_;
    fd_set writers_;
    DescriptorTable<std::uint64_t> tokens_{no_token};
    int max_fd_ = -1;
};

}  // namespace

std::unique_ptr<Poller> make_select_poller() {
    return std::make_unique<SelectPoller>();
}

}  // namespace muxio::detail
