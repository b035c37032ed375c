// kqueue(2): FreeBSD, macOS, OpenBSD, NetBSD, DragonFly. The kernel keeps one
// filter per (descriptor, direction), so READ and WRITE are registered,
// counted and reported separately, and merged back here into one PollEvent
// per descriptor.

// First, alone: older BSD <sys/event.h> uses its types without including it.
#include <sys/types.h>

#include <fcntl.h>
#include <sys/event.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <initializer_list>
#include <span>
#include <type_traits>
#include <utility>

#include "muxio/detail/poller.hpp"
#include "muxio/error.hpp"
#include "selector/descriptor_table.hpp"

namespace {
namespace kqueue1_fallback {

// Only chosen where <sys/event.h> declares no kqueue1(int) (macOS, older
// FreeBSD and OpenBSD): a declared non-template kqueue1(int) is the better
// match for the call in KqueuePoller. The gap between kqueue() and
// fcntl() can leak the descriptor into a child that another thread forks and
// execs meanwhile; these systems offer nothing better.
template <class Flags>
int kqueue1(Flags /*O_CLOEXEC*/) {
    const int kq = ::kqueue();
    if (kq >= 0 && ::fcntl(kq, F_SETFD, FD_CLOEXEC) == -1) {
        const int error = errno;
        ::close(kq);
        errno = error;
        return -1;
    }
    return kq;
}

}  // namespace kqueue1_fallback
}  // namespace

namespace muxio::detail {
namespace {

using Kevent = struct kevent;
using Filter = decltype(std::declval<Kevent&>().filter);
using Action = decltype(std::declval<Kevent&>().flags);

// udata is void* on most systems but intptr_t on NetBSD before 10; on 32-bit
// systems it is too narrow for the 64-bit token, which the descriptor table
// then carries instead.
template <class K>
constexpr bool udata_holds_token = sizeof(std::declval<K&>().udata) >= sizeof(std::uint64_t);

template <class K>
void set_token(K& change, std::uint64_t token) noexcept {
    using Udata = decltype(change.udata);
    if constexpr (!udata_holds_token<K>) {
        change.udata = Udata{};
    } else if constexpr (std::is_pointer_v<Udata>) {
        change.udata = reinterpret_cast<Udata>(static_cast<std::uintptr_t>(token));
    } else {
        change.udata = static_cast<Udata>(token);
    }
}

template <class K>
std::uint64_t token_of(const K& event, std::uint64_t table_token) noexcept {
    if constexpr (!udata_holds_token<K>) {
        return table_token;
    } else if constexpr (std::is_pointer_v<decltype(event.udata)>) {
        return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(event.udata));
    } else {
        return static_cast<std::uint64_t>(event.udata);
    }
}

// NetBSD counts changes and events in size_t, the other systems in int.
template <class R, class Count, class... Rest>
Count kevent_count_type(R (*)(int, const Kevent*, Count, Rest...));
using KeventCount = decltype(kevent_count_type(&::kevent));

int call_kevent(int kq, std::span<const Kevent> changes, std::span<Kevent> events,
                const std::timespec* timeout) noexcept {
    return ::kevent(kq, changes.data(), static_cast<KeventCount>(changes.size()), events.data(),
                    static_cast<KeventCount>(events.size()), timeout);
}

constexpr Filter read_filter = EVFILT_READ;
constexpr Filter write_filter = EVFILT_WRITE;

// EV_RECEIPT makes every change report back (data 0 on success) without
// draining pending events. Where it is missing only failures report back, and
// pending events may fill the other slots; they are ignored, and level-
// triggered filters report them again at the next wait.
#ifdef EV_RECEIPT
constexpr Action receipt = EV_RECEIPT;
#else
constexpr Action receipt = 0;
#endif
constexpr Action add_action = static_cast<Action>(EV_ADD | receipt);
constexpr Action delete_action = static_cast<Action>(EV_DELETE | receipt);

// Darwin answers EINVAL to a timeout over 10^8 seconds; a wait that long is,
// to any caller, a wait without limit.
constexpr std::time_t longest_timeout_seconds = 100'000'000;

constexpr Events filter_event(Filter filter) noexcept {
    return filter == read_filter ? EVENT_READ : EVENT_WRITE;
}

std::size_t count_filters(Events events) noexcept {
    return static_cast<std::size_t>(std::popcount((events & EVENT_READ_WRITE).bits()));
}

Events to_events(const Kevent& event) noexcept {
    Events events;
    if (event.filter == read_filter) {
        events |= EVENT_READ;
    } else if (event.filter == write_filter) {
        events |= EVENT_WRITE;
    }
    // EV_EOF alone is the hang-up of this filter's own direction and is
    // already reported as its event: after a read EOF (the peer's half-close)
    // writing may still block, so it must not make WRITE ready (epoll, too,
    // reports EPOLLOUT then only if there is room). A full hang-up fires both
    // filters. EV_EOF with fflags carries a socket error, and EV_ERROR an
    // error: ready both ways, like EPOLLERR.
    if ((event.flags & EV_ERROR) != 0 || ((event.flags & EV_EOF) != 0 && event.fflags != 0)) {
        events |= EVENT_READ_WRITE;
    }
    return events;
}

// At most two changes (one per filter) go to the kernel in one kevent() call.
class Changes {
public:
    void push(int fd, Filter filter, Action action, std::uint64_t token) noexcept {
        Kevent& change = list_[size_++];
        change = Kevent{};  // not EV_SET: NetBSD's casts udata, FreeBSD's has ext[]
        change.ident = static_cast<std::uintptr_t>(fd);
        change.filter = filter;
        change.flags = action;
        set_token(change, token);
    }
    [[nodiscard]] std::span<const Kevent> view() const noexcept { return {list_.data(), size_}; }
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    [[nodiscard]] const Kevent& operator[](std::size_t i) const noexcept { return list_[i]; }
    [[nodiscard]] bool empty() const noexcept { return size_ == 0; }

private:
    std::array<Kevent, 2> list_{};
    std::size_t size_ = 0;
};

// What the kernel said about each change of one kevent() call.
struct Outcome {
    std::array<int, 2> errors{};  // per change: 0 or the errno it failed with
    bool call_failed = false;     // kevent() itself failed: state of each change unknown
    [[nodiscard]] bool ok() const noexcept { return !call_failed && errors[0] == 0 && errors[1] == 0; }
};

class KqueuePoller final : public Poller {
public:
    KqueuePoller() {
        // At least one slot even with nothing registered: with an empty event
        // list kevent() returns at once and ignores the timeout (kqueue(2);
        // CPython bpo-29255). Sized before the queue exists, so a bad_alloc
        // cannot leak it.
        events_.resize(1);
        using namespace kqueue1_fallback;  // brings in the fallback; see there
        kq_ = kqueue1(O_CLOEXEC);
        if (kq_ < 0) {
            throw_system_error(errno, "kqueue");
        }
    }
    ~KqueuePoller() override { close(); }

    std::string_view name() const noexcept override { return "kqueue"; }
    int fileno() const noexcept override { return kq_; }

    void add(int fd, Events events, std::uint64_t token) override {
        // Whatever can allocate is done before the kernel is asked, so a
        // bad_alloc cannot leave a filter registered behind the caller's back.
        Descriptor& descriptor = descriptors_.at_growing(fd);
        reserve_slots(filters_ + count_filters(events));

        Changes changes;
        if (events.contains(EVENT_READ)) {
            changes.push(fd, read_filter, add_action, token);
        }
        if (events.contains(EVENT_WRITE)) {
            changes.push(fd, write_filter, add_action, token);
        }
        const Outcome outcome = apply(changes);
        if (!outcome.ok()) {
            // Nothing may stay registered: delete what was (or may have been) added.
            Changes undo;
            for (std::size_t i = 0; i < changes.size(); ++i) {
                if (outcome.call_failed || outcome.errors[i] == 0) {
                    undo.push(fd, changes[i].filter, delete_action, token);
                }
            }
            (void)apply(undo);
            throw_first_error(changes, outcome, fd);
        }
        descriptor = Descriptor{token, events & EVENT_READ_WRITE, -1};
        filters_ += count_filters(events);
    }

    void modify(int fd, Events old_events, Events new_events, std::uint64_t token) override {
        Descriptor& descriptor = descriptors_.at_growing(fd);
        const Events kept = old_events & new_events & EVENT_READ_WRITE;
        const Events added = new_events & ~old_events & EVENT_READ_WRITE;
        const Events deleted = old_events & ~new_events & EVENT_READ_WRITE;
        reserve_slots(filters_ + count_filters(added));

        // Only what changed, in one call. A kept filter is added again only
        // to carry a new token (re-adding updates udata in place).
        Changes changes;
        for (const Filter filter : {read_filter, write_filter}) {
            const Events event = filter_event(filter);
            if (added.contains(event) || (kept.contains(event) && token != descriptor.token)) {
                changes.push(fd, filter, add_action, token);
            } else if (deleted.contains(event)) {
                changes.push(fd, filter, delete_action, token);
            }
        }
        const Outcome outcome = apply(changes);

        // Record what the kernel now holds, so that remove() deletes exactly
        // that even after a change that failed half-way. When kevent() itself
        // failed, assume the most, so nothing is left behind.
        const std::size_t before = count_filters(descriptor.filters);
        if (outcome.call_failed) {
            descriptor.filters |= added;
        } else {
            for (std::size_t i = 0; i < changes.size(); ++i) {
                if (outcome.errors[i] != 0) {
                    continue;
                }
                const Events event = filter_event(changes[i].filter);
                if ((changes[i].flags & EV_DELETE) != 0) {
                    descriptor.filters &= ~event;
                } else {
                    descriptor.filters |= event;
                }
            }
        }
        filters_ = filters_ - before + count_filters(descriptor.filters);
        if (!outcome.ok()) {
            throw_first_error(changes, outcome, fd);
        }
        descriptor.token = token;
    }

    std::error_code remove(int fd, Events /*events*/) noexcept override {
        // The table, not `events`, says which filters the kernel holds: the
        // two differ after a modify() that failed half-way.
        if (fd < 0 || descriptors_[fd].filters.empty()) {
            return {};
        }
        Descriptor& descriptor = descriptors_.at_growing(fd);  // present: no allocation
        Changes changes;
        for (const Filter filter : {read_filter, write_filter}) {
            if (descriptor.filters.contains(filter_event(filter))) {
                changes.push(fd, filter, delete_action, descriptor.token);
            }
        }
        filters_ -= std::min(filters_, count_filters(descriptor.filters));
        descriptors_.reset(fd);

        // A closed descriptor's filters are already gone (close(2) drops
        // them): EBADF, or ENOENT once the number was reused, is expected.
        const Outcome outcome = apply(changes);
        for (const int error : outcome.errors) {
            if (error != 0) {
                return {error, std::system_category()};
            }
        }
        return {};
    }

    void close() noexcept override {
        if (kq_ >= 0) {
            ::close(kq_);
            kq_ = -1;
        }
        descriptors_.clear();
        filters_ = 0;
    }

    // A child does not inherit a kqueue (kqueue(2)): the number is not this
    // process's queue, and may already name another of its descriptors, so
    // it is forgotten, not closed.
    void abandon() noexcept override {
        kq_ = -1;
        descriptors_.clear();
        filters_ = 0;
    }

protected:
    int wait_once(Timeout timeout, std::vector<PollEvent>& ready) override {
        auto spec = to_timespec(timeout);
        if (spec && spec->tv_sec > longest_timeout_seconds) {
            spec.reset();
        }
        const std::size_t capacity = std::min<std::size_t>(events_.size(), INT_MAX);
        const int count = call_kevent(kq_, {}, {events_.data(), capacity}, spec ? &*spec : nullptr);
        if (count < 0) {
            return errno;
        }
        const std::span<const Kevent> events{events_.data(), static_cast<std::size_t>(count)};

        // Reserved first so that no push_back can throw between marking a
        // descriptor below and clearing the marks.
        ready.reserve(ready.size() + events.size());
        for (const Kevent& event : events) {
            const Events ready_events = to_events(event);
            if (ready_events.empty()) {
                continue;
            }
            // add() made the entry, so this does not allocate.
            Descriptor& descriptor = descriptors_.at_growing(static_cast<int>(event.ident));
            if (descriptor.ready >= 0) {
                // The other filter of a descriptor already reported: merge, so
                // the descriptor appears once.
                ready[static_cast<std::size_t>(descriptor.ready)].events |= ready_events;
            } else {
                descriptor.ready = static_cast<int>(ready.size());
                ready.push_back({token_of(event, descriptor.token), ready_events});
            }
        }
        for (const Kevent& event : events) {
            descriptors_.at_growing(static_cast<int>(event.ident)).ready = -1;
        }
        return 0;
    }

private:
    struct Descriptor {
        std::uint64_t token = 0;  // also in udata where udata is 64 bits wide
        Events filters;           // READ and/or WRITE: what the kernel holds
        int ready = -1;           // index in the current wait's result, or -1
    };

    // Applies `changes` in one kevent() call, reading back per-change errors.
    Outcome apply(const Changes& changes) noexcept {
        Outcome outcome;
        if (changes.empty()) {
            return outcome;
        }
        std::array<Kevent, 2> receipts{};
        constexpr std::timespec no_wait{};
        const int count = call_kevent(kq_, changes.view(), {receipts.data(), changes.size()}, &no_wait);
        if (count < 0) {
            outcome.call_failed = true;
            outcome.errors.fill(errno);
            return outcome;
        }
        for (const Kevent& receipt_event : std::span{receipts.data(), static_cast<std::size_t>(count)}) {
            if ((receipt_event.flags & EV_ERROR) == 0 || receipt_event.data == 0) {
                continue;  // a success receipt, or a pending event (no EV_RECEIPT)
            }
            for (std::size_t i = 0; i < changes.size(); ++i) {
                if (changes[i].filter == receipt_event.filter && changes[i].ident == receipt_event.ident) {
                    outcome.errors[i] = static_cast<int>(receipt_event.data);
                }
            }
        }
        return outcome;
    }

    [[noreturn]] static void throw_first_error(const Changes& changes, const Outcome& outcome, int fd) {
        for (std::size_t i = 0; i < changes.size(); ++i) {
            if (outcome.errors[i] != 0) {
                const bool deleting = (changes[i].flags & EV_DELETE) != 0;
                throw_system_error(outcome.errors[i], deleting ? "kevent(EV_DELETE)" : "kevent(EV_ADD)", fd);
            }
        }
        throw_system_error(EIO, "kevent", fd);  // not reached: !ok() has an error
    }

    // One slot per registered filter, as a descriptor watched both ways can
    // be reported twice; grown when filters are added, never in wait().
    void reserve_slots(std::size_t filters) {
        if (events_.size() < filters) {
            events_.resize(std::max(filters, events_.size() * 2));
        }
    }

    int kq_ = -1;
    std::vector<Kevent> events_;
    DescriptorTable<Descriptor> descriptors_{Descriptor{}};
    std::size_t filters_ = 0;  // registered filters, not descriptors
};

}  // namespace

std::unique_ptr<Poller> make_kqueue_poller() {
    return std::make_unique<KqueuePoller>();
}

}  // namespace muxio::detail
