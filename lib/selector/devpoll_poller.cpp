// /dev/poll (poll(7d)): Solaris and illumos. The kernel keeps the watched set
// between calls, so a wait costs what the ready descriptors cost, not what
// poll(2) would pay for all of them. It reports descriptors, not tokens: the
// token of each descriptor lives in a table here.

// First, alone: on illumos struct dvpoll uses sigset_t, which
// <sys/devpoll.h> does not declare itself.
#include <signal.h>
#include <sys/types.h>

#include <fcntl.h>
#include <poll.h>
#include <stropts.h>
#include <sys/devpoll.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <span>

#include "muxio/detail/poller.hpp"
#include "muxio/error.hpp"
#include "selector/descriptor_table.hpp"
#include "selector/poll_mask.hpp"

namespace muxio::detail {
namespace {

int open_device() noexcept {
#ifdef O_CLOEXEC
    return ::open("/dev/poll", O_RDWR | O_CLOEXEC);
#else
    // Solaris 10 has no O_CLOEXEC; a fork and exec in another thread between
    // the two calls can leak the descriptor into the child.
    const int fd = ::open("/dev/poll", O_RDWR);
    if (fd >= 0 && ::fcntl(fd, F_SETFD, FD_CLOEXEC) == -1) {
        const int error = errno;
        ::close(fd);
        errno = error;
        return -1;
    }
    return fd;
#endif
}

class DevpollPoller final : public Poller {
public:
    DevpollPoller() {
        // At least one slot even with nothing registered, so DP_POLL always
        // has somewhere to report and waits out its timeout. Sized before the
        // device is opened, so a bad_alloc cannot leak it.
        results_.resize(1);
        dpfd_ = open_device();
        if (dpfd_ < 0) {
            throw_system_error(errno, "open(/dev/poll)");
        }
    }
    ~DevpollPoller() override { close(); }

    std::string_view name() const noexcept override { return "devpoll"; }
    int fileno() const noexcept override { return dpfd_; }

    void add(int fd, Events events, std::uint64_t token) override {
        // /dev/poll accepts any number and only answers POLLNVAL at wait time;
        // checking here gives the caller the error where the mistake was made.
        require_open_descriptor(fd, "write(/dev/poll)");
        // Whatever can allocate is done before the kernel is asked.
        Registration& registration = registrations_.at_growing(fd);
        if (results_.size() < registered_ + 1) {
            results_.resize(std::max(registered_ + 1, results_.size() * 2));
        }
        const std::array<pollfd, 1> entry{{{fd, to_poll_mask(events), 0}}};
        if (const int error = write_entries(entry); error != 0) {
            throw_system_error(error, "write(/dev/poll)", fd);
        }
        registration = Registration{token, true};
        ++registered_;
    }

    void modify(int fd, Events /*old_events*/, Events new_events, std::uint64_t token) override {
        // /dev/poll ORs the masks written for one descriptor, so the old mask
        // is removed first; both entries go in one write().
        const std::array<pollfd, 2> entries{{{fd, POLLREMOVE, 0}, {fd, to_poll_mask(new_events), 0}}};
        if (const int error = write_entries(entries); error != 0) {
            throw_system_error(error, "write(/dev/poll)", fd);
        }
        registrations_.at_growing(fd).token = token;  // present since add(): no allocation
    }

    std::error_code remove(int fd, Events /*events*/) noexcept override {
        if (fd < 0 || !registrations_[fd].registered) {
            return {};
        }
        registrations_.reset(fd);
        --registered_;
        // Needed after close(2) too: unlike poll(2)'s cache, /dev/poll keeps a
        // closed descriptor and reports it POLLNVAL until it is removed.
        const std::array<pollfd, 1> entry{{{fd, POLLREMOVE, 0}}};
        if (const int error = write_entries(entry); error != 0) {
            return {error, std::system_category()};
        }
        return {};
    }

    void close() noexcept override {
        if (dpfd_ >= 0) {
            ::close(dpfd_);
            dpfd_ = -1;
        }
        registrations_.clear();
        registered_ = 0;
    }

    // Closing this process's copy of the descriptor writes nothing to the
    // device; a POLLREMOVE would.
    void abandon() noexcept override { close(); }

protected:
    int wait_once(Timeout timeout, std::vector<PollEvent>& ready) override {
        dvpoll request{};  // zeroed: illumos has a dp_setp that DP_POLL must see null
        request.dp_fds = results_.data();
        request.dp_nfds = static_cast<decltype(request.dp_nfds)>(results_.size());
        // Milliseconds, rounded up: DP_POLL has no finer resolution.
        request.dp_timeout = to_milliseconds(timeout);
        const int count = ::ioctl(dpfd_, DP_POLL, &request);
        if (count < 0) {
            return errno;
        }
        // DP_POLL reports each descriptor at most once per call.
        for (const pollfd& result : std::span{results_.data(), static_cast<std::size_t>(count)}) {
            const Registration& registration = registrations_[result.fd];
            if (!registration.registered) {
                continue;
            }
            ready.push_back({registration.token, from_poll_mask(result.revents)});
        }
        return 0;
    }

private:
    struct Registration {
        std::uint64_t token = 0;
        bool registered = false;
    };

    // Returns 0 or the errno of the failed write(). The driver takes the
    // whole buffer or fails; EINTR comes only while it waits for another
    // writer, before any entry is applied, so the write is simply retried.
    int write_entries(std::span<const pollfd> entries) const noexcept {
        for (;;) {
            const ssize_t written = ::write(dpfd_, entries.data(), entries.size_bytes());
            if (written >= 0) {
                return static_cast<std::size_t>(written) == entries.size_bytes() ? 0 : EIO;
            }
            if (errno != EINTR) {
                return errno;
            }
        }
    }

    int dpfd_ = -1;
    std::vector<pollfd> results_;
    DescriptorTable<Registration> registrations_{Registration{}};
    std::size_t registered_ = 0;
};

}  // namespace

std::unique_ptr<Poller> make_devpoll_poller() {
    return std::make_unique<DevpollPoller>();
}

}  // namespace muxio::detail
