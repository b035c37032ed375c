// The kernel boundary: one small non-template class per readiness mechanism.
//
// Backend contract (every Poller implementation keeps all of it):
//  - Level-triggered: a descriptor that is still ready is reported by every
//    wait() until the condition is consumed, whatever the mechanism does
//    natively (io_uring re-arms one-shot polls to get this meaning).
//  - Error and hang-up conditions are reported as ready for reading and
//    writing; the selector masks them down to the events registered. One
//    exception, select(2)'s: a hang-up without an error is in its read set
//    only, so the select backend reports it as readable only.
//  - A registration whose descriptor is found closed (poll: POLLNVAL;
//    select: the call's EBADF; epoll, io_uring: a modify or re-arm refused
//    with EBADF) is a closed registration: it stays until remove(), and
//    every wait reports it at once as an error condition, so that its owner
//    learns rather than waiting on a descriptor the kernel no longer watches.
//  - A descriptor appears at most once in one wait()'s result.
//  - The kernel carries only the 64-bit token given at add()/modify(), never
//    a pointer: the selector decodes it (fd | generation) and drops events of
//    registrations that no longer exist. Pollers never see user data.
//  - Stale events never end a wait. A backend whose kernel may keep a
//    registration it was told to remove (epoll, when EPOLL_CTL_DEL cannot
//    name a closed descriptor's entry) says so with set_may_report_stale();
//    while it does, a kernel wait that reports only tokens the caller no
//    longer has (LiveFilter) is not a result: wait() asks the backend to
//    purge_stale() and waits on for the time left, so a positive timeout is
//    waited out in full and such a registration cannot make a caller spin.
//    Other stale events (a registration replaced between waits) are dropped
//    by the caller, entry by entry.
//  - add() either succeeds or throws with nothing changed.
//  - remove() never throws: a descriptor closed since it was added is fine.
//  - No allocation per wait() in steady state: buffers grow with the number
//    of registrations, at add() time, and are reused.
//  - fileno() is the kernel object the mechanism owns (epoll, io_uring,
//    kqueue, /dev/poll descriptor), or -1 for select and poll.
//  - abandon() sends nothing to the kernel object: after a fork it is the
//    parent's too, and a removal or cancellation would reach the parent's
//    registrations.
#pragma once

#include <chrono>
#include <cstdint>
#include <ctime>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <system_error>
#include <vector>

#include "muxio/config.hpp"
#include "muxio/events.hpp"

struct timeval;

namespace muxio::detail {

class CompletionRing;

/// How long to wait: nullopt blocks, zero or negative polls, positive waits
/// at least that long.
using Timeout = std::optional<std::chrono::nanoseconds>;

/// One ready descriptor as the kernel reported it.
struct PollEvent {
    std::uint64_t token;  ///< what add()/modify() was given
    Events events;        ///< READ and/or WRITE; errors and hang-ups set both
};

/// Tells Poller::wait() which tokens name a registration its caller still
/// has. Without a function every token counts as live.
struct LiveFilter {
    const void* owner = nullptr;
    bool (*is_live)(const void* owner, std::uint64_t token) noexcept = nullptr;
};

class Poller {
public:
    Poller() = default;
    Poller(const Poller&) = delete;
    Poller& operator=(const Poller&) = delete;
    virtual ~Poller() = default;

    /// The mechanism's name: "select", "poll", "epoll", "io_uring", "kqueue", "devpoll".
    [[nodiscard]] virtual std::string_view name() const noexcept = 0;
    /// The kernel object owned, or -1 (see the contract above).
    [[nodiscard]] virtual int fileno() const noexcept { return -1; }
    /// The socket operations this mechanism can run as completions on the
    /// ring it waits on (io_uring), or nullptr: sockets then use readiness.
    /// Completions reaped by wait() end it like ready descriptors do.
    [[nodiscard]] virtual CompletionRing* completion_ring() noexcept { return nullptr; }

    /// Starts watching `fd` for `events`. Throws std::system_error when the
    /// kernel refuses (the message names the call and fd) and
    /// std::invalid_argument when the mechanism cannot represent `fd`
    /// (select's FD_SETSIZE); on throw nothing changed.
    virtual void add(int fd, Events events, std::uint64_t token) = 0;
    /// Changes the watched events and the token of a descriptor added
    /// before. A descriptor closed since is no error: the registration stays,
    /// as a closed one that every wait reports as an error condition until
    /// remove() (see the contract above). Throws std::system_error only when
    /// the mechanism itself fails (ENOMEM, a refused io_uring submission).
    /// epoll, io_uring, poll and select then leave the registration as it
    /// was: its old events and token, watched again by the next wait at the
    /// latest. kqueue and /dev/poll may have applied part of the change: the
    /// caller must remove the descriptor then (BaseSelector::modify() always
    /// does, Python's rule).
    virtual void modify(int fd, Events old_events, Events new_events, std::uint64_t token) = 0;
    /// add() reporting a refusal in `error` instead of throwing (cleared on
    /// success; on failure nothing changed): the kernel's errno,
    /// std::errc::invalid_argument for a descriptor the mechanism cannot
    /// represent, std::errc::not_enough_memory. The default calls add() and
    /// converts what it throws; a backend may override it to skip the throw.
    virtual void try_add(int fd, Events events, std::uint64_t token, std::error_code& error) noexcept;
    /// modify() reporting a failure in `error` instead of throwing, as
    /// try_add() does; what a failure leaves is what modify() leaves.
    virtual void try_modify(int fd, Events old_events, Events new_events, std::uint64_t token,
                            std::error_code& error) noexcept;
    /// Watches `fd` anew, under a new `token`, for the open file its number
    /// names now: for a caller whose user may have closed the descriptor and
    /// had its number reused by another file without removing it first
    /// (epoll and io_uring would go on watching the old file, or nothing).
    /// Throws std::system_error if `fd` is closed (EBADF) or the kernel
    /// refuses the file; the registration then keeps its events and token,
    /// and if the kernel watches nothing for it now it is a closed one. The
    /// default checks that `fd` is open and calls modify(), right for
    /// mechanisms that watch numbers (select, poll).
    virtual void reregister(int fd, Events old_events, Events new_events, std::uint64_t token);
    /// Stops watching `fd`. Never throws; reports what the kernel said, for
    /// logging (EBADF or ENOENT after the descriptor was closed is expected).
    virtual std::error_code remove(int fd, Events events) noexcept = 0;
    /// Releases the kernel object. Idempotent.
    virtual void close() noexcept = 0;
    /// In a child process forked after the poller was made: releases what
    /// this process owns (its copy of the descriptor, its memory) without
    /// any request to the kernel object, which the parent still uses.
    /// Idempotent; afterwards as after close(). The default is close(),
    /// right for a mechanism whose close() only closes its descriptor.
    virtual void abandon() noexcept { close(); }

    /// Waits for readiness. Retries after a signal with the time left (PEP 475),
    /// so it never returns early because of EINTR. While may_report_stale(),
    /// a kernel wait whose events all fail `live` is treated the same way,
    /// after purge_stale(): stale events neither end the wait early nor,
    /// repeated, make the caller spin. The span stays valid until the next
    /// call; it may hold stale events next to live ones. Throws
    /// std::system_error for any other kernel error, and when purge_stale()
    /// fails.
    std::span<const PollEvent> wait(Timeout timeout, LiveFilter live = {});

    /// Whether the kernel may hold a registration this poller was told to
    /// remove and could not, whose events would be stale.
    [[nodiscard]] bool may_report_stale() const noexcept { return may_report_stale_; }

    /// Called by wait() when a kernel wait reported events, but only of
    /// registrations the caller no longer has. Gets rid of what the kernel
    /// keeps against the poller's will, where the mechanism can (epoll
    /// rebuilds its set), and then clears may_report_stale(). Returns 0 or
    /// the errno of a failure.
    virtual int purge_stale() noexcept { return 0; }

protected:
    /// See may_report_stale(): wait() checks its answers for stale events
    /// only while this is set, so that it costs nothing otherwise.
    void set_may_report_stale(bool may) noexcept { may_report_stale_ = may; }

    /// One kernel wait of at most `timeout` (nullopt: no limit; zero: do not
    /// block), appending to `ready`, which the caller cleared. Returns 0 or the
    /// errno value of the failed call; EINTR is retried by wait().
    virtual int wait_once(Timeout timeout, std::vector<PollEvent>& ready) = 0;

    // Conversions for the kernel interfaces, each rounding *up* so a wait
    // never ends before the timeout: rounding down would turn a caller's timer
    // loop into a busy loop of zero-length waits. Huge values saturate.

    /// Milliseconds for poll(2)/epoll_wait(2): -1 to block, 0 to poll.
    [[nodiscard]] static int to_milliseconds(Timeout timeout) noexcept;
    /// A timespec (nanosecond resolution), or nullopt to block.
    [[nodiscard]] static std::optional<std::timespec> to_timespec(Timeout timeout) noexcept;
    /// A timeval (microsecond resolution) for select(2), or nullopt to block.
    [[nodiscard]] static bool to_timeval(Timeout timeout, ::timeval& out) noexcept;

private:
    std::vector<PollEvent> ready_;
    bool may_report_stale_ = false;
};

// Factories for the mechanisms compiled on this platform (see muxio/config.hpp).
// Each throws std::system_error when the kernel refuses to create its object.
std::unique_ptr<Poller> make_select_poller();
std::unique_ptr<Poller> make_poll_poller();
#if MUXIO_HAS_EPOLL
std::unique_ptr<Poller> make_epoll_poller();
#endif
#if MUXIO_HAS_IO_URING
std::unique_ptr<Poller> make_io_uring_poller();
#endif
#if MUXIO_HAS_KQUEUE
std::unique_ptr<Poller> make_kqueue_poller();
#endif
#if MUXIO_HAS_DEVPOLL
std::unique_ptr<Poller> make_devpoll_poller();
#endif

/// A named way to make a poller, as listed by available_pollers().
struct PollerFactory {
    std::string_view name;
    std::unique_ptr<Poller> (*make)();
};

/// The mechanisms compiled in, best first.
[[nodiscard]] std::span<const PollerFactory> available_pollers() noexcept;

/// The poller called `name`. Throws std::invalid_argument for a name not
/// compiled in (the message lists those that are) and std::system_error when
/// the kernel refuses it.
[[nodiscard]] std::unique_ptr<Poller> make_poller(std::string_view name);

/// The first of `candidates` the kernel accepts, logging each refusal through
/// the `muxio` logger. Throws the last std::system_error if none is accepted.
[[nodiscard]] std::unique_ptr<Poller> make_first_accepted(std::span<const PollerFactory> candidates);

/// What DefaultSelector uses: `MUXIO_SELECTOR` if set (no fallback then: the
/// override is for testing one mechanism), else make_first_accepted() over
/// available_pollers().
[[nodiscard]] std::unique_ptr<Poller> make_default_poller();

}  // namespace muxio::detail
