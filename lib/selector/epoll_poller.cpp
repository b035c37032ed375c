// epoll(7): Linux. Cost per wait follows the ready descriptors, not the
// registered ones.
//
// epoll watches open files, not descriptor numbers: its entries are keyed by
// (file, number), and the kernel drops one only when the file's last
// descriptor closes. Close a registered number while a duplicate (dup,
// fork, SCM_RIGHTS) keeps the file open, and EPOLL_CTL_DEL can no longer name
// the entry (EBADF, or ENOENT once the number is reused): it stays in the set
// and keeps reporting under its old token. The poller keeps its own table
// of what it registered, so when waits bring nothing but such stale events
// it rebuilds the set from that table in a fresh epoll instance.
//
// A registration whose number turns out closed (EPOLL_CTL_MOD says EBADF)
// is kept as closed: the kernel watches nothing for it any more, so every
// wait reports it as an error condition until it is removed, as poll(2)
// reports POLLNVAL.
#include <fcntl.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>

#include "muxio/detail/poller.hpp"
#include "muxio/error.hpp"
#include "selector/descriptor_table.hpp"

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

// 0 or the errno of a refused epoll_ctl.
int control(int epfd, int op, int fd, std::uint32_t mask, std::uint64_t token) noexcept {
    epoll_event event{};
    event.events = mask;
    event.data.u64 = token;
    return ::epoll_ctl(epfd, op, fd, &event) == -1 ? errno : 0;
}

// epoll_pwait2 (Linux 5.11) takes a timespec; older kernels answer ENOSYS
// once and the process falls back to millisecond epoll_wait for good.
std::atomic<bool> kernel_has_epoll_pwait2{true};

class EpollPoller final : public Poller {
public:
    EpollPoller() : epfd_{::epoll_create1(EPOLL_CLOEXEC)} {
        if (!epfd_.valid()) {
            throw_system_error(errno, "epoll_create1");
        }
        events_.resize(1);
    }
    ~EpollPoller() override { close(); }

    std::string_view name() const noexcept override { return "epoll"; }

    // Whoever takes the descriptor may watch it with an epoll of its own (a
    // loop embedding a reactor), which watches the open file: a rebuild must
    // not swap the file under it. So the descriptor handed out is a second
    // set that holds only the working one, and a rebuild swaps the working
    // set inside it. Waits go to the working set directly, at no extra cost.
    int fileno() const noexcept override {
        if (!epfd_.valid()) {
            return -1;
        }
        if (!outer_.valid() && !working_set_handed_out_) {
            OwnedFd outer{::epoll_create1(EPOLL_CLOEXEC)};
            if (outer.valid() && control(outer.get(), EPOLL_CTL_ADD, epfd_.get(), EPOLLIN, 0) == 0) {
                outer_ = std::move(outer);
            } else {
                working_set_handed_out_ = true;  // then a rebuild keeps at least the number
            }
        }
        return outer_.valid() ? outer_.get() : epfd_.get();
    }

    void add(int fd, Events events, std::uint64_t token) override {
        const std::uint32_t mask = to_epoll_mask(events);
        if (const int error = add_to_set(fd, mask, token); error != 0) {
            throw_system_error(error, "epoll_ctl(ADD)", fd);
        }
        record(fd, mask, token);
    }

    // A refusal is an expected outcome for the error_code form (a regular
    // file, a closed number), so it costs no exception and no message.
    void try_add(int fd, Events events, std::uint64_t token, std::error_code& error) noexcept override {
        error.clear();
        const std::uint32_t mask = to_epoll_mask(events);
        if (const int refused = add_to_set(fd, mask, token); refused != 0) {
            error.assign(refused, std::system_category());
            return;
        }
        try {
            record(fd, mask, token);
        } catch (...) {
            error = std::make_error_code(std::errc::not_enough_memory);
        }
    }

    // Notes a registration the set has just taken; on a throw (no memory)
    // takes it out of the set again.
    void record(int fd, std::uint32_t mask, std::uint64_t token) {
        try {
            registrations_.at_growing(fd) = {token, mask, State::watched};
            // One slot per registration, as Python does, so one wait can report
            // every ready descriptor; grown here, never in wait().
            if (events_.size() < registered_ + 1) {
                events_.resize(std::max(registered_ + 1, events_.size() * 2));
            }
            // Room for every registration to turn out closed, so that noting
            // one (in modify() or a rebuild) never allocates.
            if (closed_.capacity() < registered_ + 1) {
                closed_.reserve(std::max(registered_ + 1, closed_.capacity() * 2));
            }
        } catch (...) {
            (void)::epoll_ctl(epfd_.get(), EPOLL_CTL_DEL, fd, nullptr);
            registrations_.reset(fd);
            throw;
        }
        ++registered_;
    }

    void modify(int fd, Events /*old_events*/, Events new_events, std::uint64_t token) override {
        Registration& registration = registrations_.at_growing(fd);  // there since add(): no allocation
        const std::uint32_t mask = to_epoll_mask(new_events);
        if (registration.state == State::closed) {
            const Registration before = registration;
            registration.token = token;
            registration.mask = mask;
            if (is_own(fd) || ::fcntl(fd, F_GETFD) == -1) {
                return;  // still closed, as far as its owner knows
            }
            // The number names an open file again, which select, poll and
            // io_uring watch from now on: so does epoll. Its old file may
            // still be in the set under this very token (a duplicate keeps it
            // open), so the set is rebuilt from the table rather than the
            // number added to it. Refused (EPERM): closed again.
            unlist_closed(fd);
            registration.state = State::watched;
            if (const int error = rebuild(); error != 0) {
                note_closed(fd);
                registration = before;  // closed, with its old events and token (Poller::modify())
                throw_system_error(error, "epoll: rebuilding the set", fd);
            }
            return;
        }
        const int error = control(epfd_.get(), EPOLL_CTL_MOD, fd, mask, token);
        if (error != 0 && error != EBADF && error != ENOENT) {
            throw_system_error(error, "epoll_ctl(MOD)", fd);
        }
        registration = {token, mask, State::watched};
        if (error == EBADF) {
            note_closed(fd);
        } else if (error == ENOENT) {
            // The number names another open file now: the registered one was
            // closed behind our back, and may live on in the set under this
            // very token if a duplicate keeps it open. A fresh set from the
            // table watches the number's new file and drops the old entry.
            if (rebuild() != 0) {
                set_may_report_stale(true);
                if (add_to_set(fd, mask, token) != 0) {
                    note_closed(fd);
                }
            }
        }
    }

    void reregister(int fd, Events /*old_events*/, Events new_events, std::uint64_t token) override {
        Registration& registration = registrations_.at_growing(fd);  // there since add(): no allocation
        const std::uint32_t mask = to_epoll_mask(new_events);
        if (registration.state == State::closed) {
            // The number may name an open file again.
            if (const int error = add_to_set(fd, mask, token); error != 0) {
                throw_system_error(error, "epoll_ctl(ADD)", fd);
            }
            // If a duplicate keeps the old file open, its entry is still in
            // the set, under the old token: stale from now on.
            set_may_report_stale(true);
            unlist_closed(fd);
            registration = {token, mask, State::watched};
            return;
        }
        const int error = control(epfd_.get(), EPOLL_CTL_MOD, fd, mask, token);
        if (error == ENOENT) {
            // The number names another open file: watch that one. If a
            // duplicate keeps the old file in the set, its entry carries the
            // old token, stale from now on (purge_stale() drops it).
            set_may_report_stale(true);
            if (const int refused = add_to_set(fd, mask, token); refused != 0) {
                note_closed(fd);
                throw_system_error(refused, "epoll_ctl(ADD)", fd);
            }
        } else if (error != 0) {
            if (error == EBADF) {
                note_closed(fd);
            }
            throw_system_error(error, "epoll_ctl(MOD)", fd);
        }
        registration = {token, mask, State::watched};
    }

    std::error_code remove(int fd, Events /*events*/) noexcept override {
        const State state = registrations_[fd].state;
        if (state != State::unused) {
            registrations_.reset(fd);
            --registered_;
        }
        if (state == State::closed) {
            unlist_closed(fd);
            set_may_report_stale(true);  // its old file may be in the set, under its token
            return {EBADF, std::system_category()};
        }
        if (::epoll_ctl(epfd_.get(), EPOLL_CTL_DEL, fd, nullptr) == -1) {
            // EBADF or ENOENT: the number no longer names the registered
            // file. If a duplicate keeps that file open, its entry stays in
            // the set; purge_stale() gets rid of it once it reports.
            const int error = errno;
            set_may_report_stale(true);
            return {error, std::system_category()};
        }
        return {};
    }

    int purge_stale() noexcept override { return rebuild(); }

    void close() noexcept override {
        epfd_.reset();
        outer_.reset();
        registrations_.clear();
        closed_.clear();
        has_closed_ = false;
        registered_ = 0;
    }

    // Closing this process's copy of the descriptor leaves the instance, and
    // the parent's registrations in it, as they are; epoll_ctl would not.
    void abandon() noexcept override { close(); }

protected:
    int wait_once(Timeout timeout, std::vector<PollEvent>& ready) override {
        if (has_closed_) [[unlikely]] {
            return wait_with_closed(ready);
        }
        int count = wait_kernel(timeout, capacity());
        if (may_report_stale() && count == capacity()) [[unlikely]] {
            // A full answer while the set may hold stale entries: they may
            // have taken the room of live ones (the buffer has a slot per
            // registration). Drop them and look again, without waiting.
            if (const int error = rebuild(); error != 0) {
                return error;
            }
            if (has_closed_) {
                return wait_with_closed(ready);  // the rebuild met closed numbers
            }
            count = wait_kernel(std::chrono::nanoseconds::zero(), capacity());
            if (count == 0) {
                return EINTR;  // all stale: the base waits on for the time left
            }
        }
        if (count < 0) {
            return errno;
        }
        for (int i = 0; i < count; ++i) {
            const epoll_event& event = events_[static_cast<std::size_t>(i)];
            ready.push_back({event.data.u64, to_events(event.events)});
        }
        return 0;
    }

private:
    static Events to_events(std::uint32_t mask) noexcept {
        Events events;
        if ((mask & EPOLLIN) != 0) {
            events |= EVENT_READ;
        }
        if ((mask & EPOLLOUT) != 0) {
            events |= EVENT_WRITE;
        }
        if ((mask & (EPOLLERR | EPOLLHUP)) != 0) {
            events |= EVENT_READ_WRITE;
        }
        return events;
    }

    [[nodiscard]] int capacity() const noexcept {
        return static_cast<int>(std::min<std::size_t>(events_.size(), INT32_MAX));
    }

    // A wait while closed registrations exist: they are ready now, so the
    // kernel is only polled, for the others.
    [[gnu::noinline, gnu::cold]] int wait_with_closed(std::vector<PollEvent>& ready) {
        int count = wait_kernel(std::chrono::nanoseconds::zero(), capacity());
        if (may_report_stale() && count == capacity()) {
            // As in wait_once(): stale entries may have taken the room of live ones.
            if (const int error = rebuild(); error != 0) {
                return error;
            }
            count = wait_kernel(std::chrono::nanoseconds::zero(), capacity());
        }
        if (count < 0) {
            return errno;
        }
        for (int i = 0; i < count; ++i) {
            const epoll_event& event = events_[static_cast<std::size_t>(i)];
            // A closed registration's old file, kept open by a duplicate,
            // reports under the same token: it is reported below, once.
            if (!is_closed_token(event.data.u64)) {
                ready.push_back({event.data.u64, to_events(event.events)});
            }
        }
        for (const int fd : closed_) {
            ready.push_back({registrations_[fd].token, EVENT_READ_WRITE});
        }
        return 0;
    }

    enum class State : std::uint8_t {
        unused,
        watched,  // in the working set
        closed,   // its number was found closed: in closed_, reported by every wait
        refused,  // during a rebuild: the fresh set refused it
    };
    struct Registration {
        std::uint64_t token = 0;
        std::uint32_t mask = 0;
        State state = State::unused;
    };

    // EPOLL_CTL_ADD to the working set; 0 or the errno.
    int add_to_set(int fd, std::uint32_t mask, std::uint64_t token) noexcept {
        const int error = control(epfd_.get(), EPOLL_CTL_ADD, fd, mask, token);
        if (error == EEXIST) {
            // The set still holds this very file under this number: it was
            // closed while a duplicate kept it open, and the duplicate has
            // been given the number back. Take the entry over.
            return control(epfd_.get(), EPOLL_CTL_MOD, fd, mask, token) == 0 ? 0 : EEXIST;
        }
        return error;
    }

    void unlist_closed(int fd) noexcept {
        closed_.erase(std::remove(closed_.begin(), closed_.end(), fd), closed_.end());
        has_closed_ = !closed_.empty();
    }

    void note_closed(int fd) noexcept {
        registrations_.at_growing(fd).state = State::closed;  // there since add(): no allocation
        closed_.push_back(fd);                                // within the capacity add() reserved
        has_closed_ = true;
    }

    // Whether `fd` is one of this poller's own sets: a registered number that
    // was closed behind our back can be given to one of them by the kernel.
    [[nodiscard]] bool is_own(int fd) const noexcept { return fd == epfd_.get() || fd == outer_.get(); }

    [[nodiscard]] bool is_closed_token(std::uint64_t token) const noexcept {
        return std::any_of(closed_.begin(), closed_.end(), [&](int fd) { return registrations_[fd].token == token; });
    }

    int wait_kernel(Timeout timeout, int capacity) noexcept {
        // epoll_pwait2 costs more per call than epoll_wait (it copies in a
        // timespec and sets up an hrtimer), so it is used only when the
        // timeout has a sub-millisecond part that epoll_wait would round up.
        const bool needs_fine_timeout = timeout && *timeout > std::chrono::nanoseconds::zero() &&
                                        *timeout % std::chrono::milliseconds{1} != std::chrono::nanoseconds::zero();
        if (needs_fine_timeout && kernel_has_epoll_pwait2.load(std::memory_order_relaxed)) {
            const auto spec = to_timespec(timeout);
            const int count = ::epoll_pwait2(epfd_.get(), events_.data(), capacity, spec ? &*spec : nullptr, nullptr);
            if (count >= 0 || errno != ENOSYS) {
                return count;
            }
            kernel_has_epoll_pwait2.store(false, std::memory_order_relaxed);
        }
        return ::epoll_wait(epfd_.get(), events_.data(), capacity, to_milliseconds(timeout));
    }

    // A fresh set holding exactly the registrations in the table, in place
    // of the working one; whatever the old set kept against our will goes
    // with it. The descriptor handed out by fileno() stays the same open
    // file (the outer set), or at least the same number. Returns 0 or an
    // errno; on failure the working set is unchanged.
    int rebuild() noexcept {
        OwnedFd fresh{::epoll_create1(EPOLL_CLOEXEC)};
        if (!fresh.valid()) {
            return errno;
        }
        // Registrations the fresh set cannot take are marked first and noted
        // as closed only once the fresh set is in place.
        bool refused = false;
        for (int fd = 0; fd < registrations_.size(); ++fd) {
            Registration& registration = registrations_.at_growing(fd);  // within the table: no allocation
            if (registration.state == State::watched) {
                // A number of one of the sets themselves was closed behind
                // our back and taken by it: closed, as far as its owner knows.
                const int error = is_own(fd) || fd == fresh.get()
                                      ? EBADF
                                      : control(fresh.get(), EPOLL_CTL_ADD, fd, registration.mask, registration.token);
                if (error == ENOMEM || error == ENOSPC) {
                    settle_refused(State::watched);
                    return error;
                }
                // Any other refusal is about what the number names now:
                // closed (EBADF), a file epoll cannot watch (EPERM), an epoll
                // set that would nest too deep (ELOOP). The kernel watches
                // nothing for it; one such number must not make every wait fail.
                if (error != 0) {
                    registration.state = State::refused;
                    refused = true;
                }
            }
        }
        if (outer_.valid()) {
            if (const int error = control(outer_.get(), EPOLL_CTL_ADD, fresh.get(), EPOLLIN, 0); error != 0) {
                settle_refused(State::watched);
                return error;
            }
            (void)::epoll_ctl(outer_.get(), EPOLL_CTL_DEL, epfd_.get(), nullptr);
            epfd_ = std::move(fresh);
        } else if (::dup3(fresh.get(), epfd_.get(), O_CLOEXEC) == -1) {
            const int error = errno;
            settle_refused(State::watched);
            return error;
        }
        if (refused) {
            settle_refused(State::closed);
        }
        set_may_report_stale(false);
        return 0;
    }

    // Ends a rebuild's marks: back to watched if it failed, closed if not.
    void settle_refused(State outcome) noexcept {
        for (int fd = 0; fd < registrations_.size(); ++fd) {
            if (registrations_[fd].state == State::refused) {
                if (outcome == State::closed) {
                    note_closed(fd);
                } else {
                    registrations_.at_growing(fd).state = outcome;
                }
            }
        }
    }

    OwnedFd epfd_;           // the working set
    mutable OwnedFd outer_;  // see fileno()
    mutable bool working_set_handed_out_ = false;
    std::vector<epoll_event> events_;
    DescriptorTable<Registration> registrations_{Registration{}};
    std::vector<int> closed_;  // descriptors whose registration is closed
    bool has_closed_ = false;  // !closed_.empty(), which every wait asks
    std::size_t registered_ = 0;
};

}  // namespace

std::unique_ptr<Poller> make_epoll_poller() {
    return std::make_unique<EpollPoller>();
}

}  // namespace muxio::detail
