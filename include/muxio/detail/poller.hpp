// The kernel boundary: one small non-template class per readiness mechanism.
//
// Backend contract (every Poller implementation keeps all of it):
//  - Level-triggered: a descriptor that is still ready is reported by every
//    wait() until the condition is consumed, whatever the mechanism does
//    natively (io_uring re-arms one-shot polls to get this meaning).
//  - Error and hang-up conditions are reported as ready for reading and
//    writing; the selector masks them down to the events registered.
//  - A descriptor appears at most once in one wait()'s result.
//  - The kernel carries only the 64-bit token given at add()/modify(), never
//    a pointer: the selector decodes it (fd | generation) and drops events of
//    registrations that no longer exist. Pollers never see user data.
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

/// How long to wait: nullopt blocks, zero or negative polls, positive waits
/// at least that long.
using Timeout = std::optional<std::chrono::nanoseconds>;

/// One ready descriptor as the kernel reported it.
struct PollEvent {
    std::uint64_t token;  ///< what add()/modify() was given
    Events events;        ///< READ and/or WRITE; errors and hang-ups set both
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

    /// Starts watching `fd` for `events`. Throws std::system_error when the
    /// kernel refuses (the message names the call and fd) and
    /// std::invalid_argument when the mechanism cannot represent `fd`
    /// (select's FD_SETSIZE); on throw nothing changed.
    virtual void add(int fd, Events events, std::uint64_t token) = 0;
    /// Changes the watched events of a descriptor added before. Throws
    /// std::system_error; the caller then removes the descriptor.
    virtual void modify(int fd, Events old_events, Events new_events, std::uint64_t token) = 0;
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
    /// so it never returns early because of EINTR. The span stays valid until
    /// the next call. Throws std::system_error for any other kernel error.
    std::span<const PollEvent> wait(Timeout timeout);

protected:
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
