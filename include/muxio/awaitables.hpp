// What a coroutine awaits on a Reactor: fd readiness, time, the next
// iteration, and its own stop token. Every await is cancellable.
#pragma once

#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <memory>
#include <stop_token>

#include "muxio/detail/manual_lifetime.hpp"
#include "muxio/reactor.hpp"
#include "muxio/task.hpp"

namespace muxio {

namespace detail {

class ReactorWait;

// The readiness registration of a descriptor owned by a muxio socket, kept
// from one await to the next: a loop of reads or writes then costs no
// epoll_ctl per await, where adding and removing a reader around each one
// (asyncio's sock_recv) costs two. When the fd is ready and nobody waits,
// the side is dropped, since level-triggered readiness would otherwise call
// back every iteration; the next await adds it again.
//
// It lives inside its socket, so a readiness callback reaches the waiting
// coroutine's frame without a separately allocated hop (at a thousand
// connections each hop is a cache and TLB miss per message). The reactor's
// callbacks and the pending waits point to it: a move re-points them to the
// new place. Releasing or destroying it removes its registrations and ends a
// pending wait with muxio::Cancelled in a later iteration.
//
// It is hooked onto its reactor (a CloseHook, the base, first in the layout
// so that what a read touches stays together after it): the reactor's
// close() detaches it. A detached watch forgets the reactor and its pending
// waits (their coroutines are never resumed; their frames may be destroyed
// at any time after), and keeps the descriptor aside until release().
class FdWatch : private CloseHook {
public:
    FdWatch() noexcept = default;
    // Precondition: `reactor` is usable (see Reactor::require_usable).
    FdWatch(Reactor& reactor, int fd) noexcept : reactor_{&reactor}, fd_{fd} {
        hook(reactor, Phase::late, &on_reactor_close);
    }
    FdWatch(FdWatch&& other) noexcept;
    FdWatch& operator=(FdWatch&& other) noexcept;
    FdWatch(const FdWatch&) = delete;
    FdWatch& operator=(const FdWatch&) = delete;
    ~FdWatch() { (void)release(); }

    /// The descriptor, -1 once released or detached (or for a
    /// default-constructed watch).
    [[nodiscard]] int fd() const noexcept { return fd_; }
    /// Null for a default-constructed watch, one moved from, or one detached.
    [[nodiscard]] Reactor* reactor() const noexcept { return reactor_; }
    /// True while the watch keeps a descriptor whose reactor was closed.
    [[nodiscard]] bool detached() const noexcept { return detached_fd_ >= 0; }
    /// Removes the registrations, ends pending waits with Cancelled and
    /// returns the descriptor, detached or not, which the watch no longer
    /// refers to (-1 if it did not). The reactor stays known.
    [[nodiscard]] int release() noexcept;

private:
    friend class ReactorWait;
    // Takes the side's waiter slot (std::logic_error if another wait has it,
    // if someone else's callback holds the fd's side, or if the watch was
    // released or detached) and registers the side unless it still is.
    // Inline for a read or write loop's case: the slot is free and the side
    // still registered.
    void start(ReactorWait& wait, Events side) {
        const bool reading = side == EVENT_READ;
        ReactorWait*& slot = reading ? reader_ : writer_;
        if (slot == nullptr && (reading ? reading_ : writing_)) [[likely]] {
            slot = &wait;
            return;
        }
        start_registering(wait, side);
    }
    void start_registering(ReactorWait& wait, Events side);
    // The wait ended or was cancelled: frees its slot; the registration stays.
    void stop(const ReactorWait& wait, Events side) noexcept;
    void ready(Events side);
    void register_side(Events side);
    // Moves `other`'s descriptor, registrations, waits and place among the
    // reactor's hooks here (this holds none), then adopt()s them.
    void take(FdWatch& other) noexcept;
    // After a move: the pending waits and the reactor's callbacks point here.
    void adopt() noexcept;
    // Each pending wait ends with Cancelled, posted, and forgets this watch.
    void end_waits() noexcept;
    // The reactor is closing: forget it, its registrations and the waits.
    static void on_reactor_close(CloseHook& hook) noexcept;
    void detach() noexcept;

    Reactor* reactor_ = nullptr;
    int fd_ = -1;
    int detached_fd_ = -1;  // the descriptor, once detached
    ReactorWait* reader_ = nullptr;
    ReactorWait* writer_ = nullptr;
    bool reading_ = false;  // this watch's reader is registered
    bool writing_ = false;
};

// One pending await on the reactor: a reader, a writer, a timer, the next
// iteration, or parked, resumed exactly once, either by the reactor (ready),
// by its owner (a parked wait's wake()) or by a stop request (cancelled).
//
// A parked wait registers nothing with the reactor (no descriptor, no timer:
// Reactor::stats() does not see it); it is for a coroutine that waits for
// something else on the loop thread to hand over, such as a write queued
// behind another. Its owner either wakes it or destroys it and hands the
// suspended coroutine to another wait.
//
// Who resumes is decided by one atomic exchange on `claimed_`, because a stop
// request may come from another thread at any moment. A stop request never
// resumes inline: it posts the resumption to the loop with
// call_soon_threadsafe(), so request_stop() on the loop thread returns before
// the coroutine runs, and no stop callback ever runs a coroutine on a foreign
// thread. Until the post runs, the registration stays (a reader that fires
// meanwhile finds the wait claimed and does nothing); the post removes it.
//
// The wait lives in the awaiting coroutine's frame, which may be destroyed
// while suspended: the destructor then removes the registration and disarms
// a posted cancellation (the one allocation, made only when cancelled).
//
// The frame may also outlive the reactor (a Task held by its owner and
// destroyed later). While registered, a wait that is not on a watch is
// hooked onto the reactor (its watch answers for one that is): the reactor's
// close() makes it forget the reactor, stop listening for stop requests and
// leave its coroutine suspended, so that neither a later stop request nor
// the frame's destruction reaches the reactor.
class ReactorWait {
public:
    /// What the wait waits for: `parked` is resumed only by wake() or a stop request.
    enum class Kind : std::uint8_t { read, write, timer, soon, parked };

    ReactorWait(Reactor& reactor, Kind kind, int fd, Reactor::TimePoint when, std::stop_token token) noexcept
        : token_{std::move(token)}, kind_{kind}, reactor_{&reactor}, fd_{fd}, when_{when} {}
    /// A read or write wait through `watch`'s lasting registration, on the
    /// watch's reactor (the wait refuses a watch released or detached).
    ReactorWait(Kind kind, FdWatch& watch, std::stop_token token) noexcept
        : watch_{&watch}, token_{std::move(token)}, kind_{kind}, reactor_{watch.reactor()}, fd_{watch.fd()} {}

    /// Does an operation's I/O when the fd turns ready, before the coroutine
    /// resumes: true when the operation is over (done or failed), false when
    /// it would block again, which keeps the wait. So a socket operation is
    /// its own awaiter, and a spurious wakeup costs no resumption.
    using Attempt = bool (*)(void* operation) noexcept;
    /// A watched read or write wait that calls `attempt(operation)` on readiness.
    ReactorWait(Kind kind, FdWatch& watch, std::stop_token token, Attempt attempt, void* operation) noexcept
        : watch_{&watch},
          attempt_{attempt},
          operation_{operation},
          token_{std::move(token)},
          kind_{kind},
          reactor_{watch.reactor()},
          fd_{watch.fd()} {}
    ReactorWait(const ReactorWait&) = delete;
    ReactorWait& operator=(const ReactorWait&) = delete;
    /// Moves a wait that was not awaited yet (precondition), so that a
    /// combinator can keep `readable(...)` and its kin in a frame of its own.
    ReactorWait(ReactorWait&& other) noexcept
        : watch_{other.watch_},
          attempt_{other.attempt_},
          operation_{other.operation_},
          token_{std::move(other.token_)},
          kind_{other.kind_},
          reactor_{other.reactor_},
          fd_{other.fd_},
          when_{other.when_} {}
    ReactorWait& operator=(ReactorWait&&) = delete;
    ~ReactorWait() {
        // After an ordinary resumption there is nothing left to undo.
        if (registered_ || on_token_stop_alive_ || on_ambient_stop_alive_ || cancel_posted_) [[unlikely]] {
            abandon();
        }
    }

    [[nodiscard]] bool await_ready() const noexcept { return false; }
    template <class Promise>
    bool await_suspend(std::coroutine_handle<Promise> awaiter) {
        return start(awaiter, ambient_stop_token(awaiter));
    }
    /// Ends a pending parked wait: its coroutine resumes in the next
    /// iteration, normally, and a stop request from now on no longer cancels
    /// it. False if a stop request came first (its posted resumption then
    /// ends the wait with Cancelled) or an earlier wake() did. Loop thread
    /// only. std::logic_error if this is not a parked wait suspended on a
    /// reactor that is still open; what Reactor::call_soon() throws (on
    /// another thread, or out of memory), the wait then unchanged.
    bool wake();
    /// Throws Cancelled if a stop token ended the wait.
    void await_resume() const {
        if (cancelled_) [[unlikely]] {
            throw_cancelled();
        }
    }

private:
    friend class FdWatch;
    struct OnStop {
        ReactorWait* wait;
        void operator()() const noexcept { wait->on_stop(); }
    };
    // Built only for a registered wait that is not on a watch, so a socket's
    // read or write pays nothing for it.
    struct Hook : CloseHook {
        explicit Hook(ReactorWait& owner) noexcept : wait{&owner} {}
        ReactorWait* wait;
    };

    bool start(std::coroutine_handle<> awaiter, std::stop_token ambient);
    // The frame is destroyed while the wait is pending or cancelled.
    void abandon() noexcept;
    [[noreturn]] static void throw_cancelled();
    void on_ready();
    void on_woken();
    void on_stop() noexcept;
    void finish_cancel();
    void disarm();
    // The reactor is closing (see the class comment).
    void forget_reactor() noexcept;
    static void on_reactor_close(CloseHook& hook) noexcept;
    // Registered last: from here on a stop request may claim the wait, on
    // any thread, even inside these constructors if it already happened.
    void listen_for_stop(std::stop_token ambient) {
        if (token_.stop_possible() || ambient.stop_possible()) {
            listen_for_stop_requests(std::move(ambient));
        }
    }
    void listen_for_stop_requests(std::stop_token ambient);
    void stop_listening() noexcept {
        if (on_token_stop_alive_) [[unlikely]] {
            on_token_stop_alive_ = false;
            on_token_stop_.destroy();
        }
        if (on_ambient_stop_alive_) [[unlikely]] {
            on_ambient_stop_alive_ = false;
            on_ambient_stop_.destroy();
        }
    }
    bool claim() noexcept { return !claimed_.exchange(true); }

    // What a resumption and the destructor read, together in the first 64
    // bytes: at a thousand connections the frame is cold when its fd turns
    // ready, and each further cache line is one more miss per message.
    std::coroutine_handle<> awaiter_;
    FdWatch* watch_ = nullptr;  // set for a watched read or write
    Attempt attempt_ = nullptr;
    void* operation_ = nullptr;
    std::shared_ptr<bool> cancel_posted_;  // *cancel_posted_: the post may still resume
    std::stop_token token_;
    std::atomic<bool> claimed_{false};
    // A stop request came. It may find the wait claimed by an attempt that
    // then gives the claim back (it would block): the attempt reads this
    // afterwards, so the request is not lost.
    std::atomic<bool> stop_seen_{false};
    Kind kind_;
    bool registered_ = false;
    bool cancelled_ = false;
    bool on_token_stop_alive_ = false;
    bool on_ambient_stop_alive_ = false;
    // What an await that is not on a watch, or a cancellation, needs.
    Reactor* reactor_;
    int fd_;
    Reactor::TimePoint when_;
    TimerHandle timer_;  // a timer's, a soon wait's, or a parked wait's posted wake
    ManualLifetime<std::stop_callback<OnStop>> on_token_stop_;
    ManualLifetime<std::stop_callback<OnStop>> on_ambient_stop_;
    ManualLifetime<Hook> hook_;  // alive while registered_ and not on a watch
};

// Reads the ambient stop token without suspending.
struct StopTokenAwaiter {
    std::stop_token token;
    [[nodiscard]] bool await_ready() const noexcept { return false; }
    template <class Promise>
    bool await_suspend(std::coroutine_handle<Promise> awaiter) noexcept {
        token = ambient_stop_token(awaiter);
        return false;
    }
    std::stop_token await_resume() noexcept { return std::move(token); }
};

}  // namespace detail

/// `co_await readable(reactor, fd)` resumes, from a reactor callback, once
/// `fd` is readable (or has an error or hang-up). The reader is registered for
/// the wait only and removed before the coroutine resumes.
///
/// Throws (at the co_await) muxio::Cancelled if `token` or the awaiting
/// task's stop token is stopped first, the registration then removed;
/// std::logic_error if `fd` already has a reader (two coroutines cannot wait
/// to read the same fd; one reading and one writing is fine); what
/// Reactor::add_reader() throws.
[[nodiscard]] inline detail::ReactorWait readable(Reactor& reactor, int fd, std::stop_token token = {}) noexcept {
    return {reactor, detail::ReactorWait::Kind::read, fd, {}, std::move(token)};
}

/// Like readable() for writability; one writer per fd.
[[nodiscard]] inline detail::ReactorWait writable(Reactor& reactor, int fd, std::stop_token token = {}) noexcept {
    return {reactor, detail::ReactorWait::Kind::write, fd, {}, std::move(token)};
}

/// Resumes at `when` or as soon after as the loop can (a Reactor timer):
/// any time point, as Reactor::call_at(), so TimePoint::min() resumes in the
/// next iteration and TimePoint::max() never. muxio::Cancelled as readable().
[[nodiscard]] inline detail::ReactorWait sleep_until(Reactor& reactor, Reactor::TimePoint when,
                                                     std::stop_token token = {}) noexcept {
    return {reactor, detail::ReactorWait::Kind::timer, -1, when, std::move(token)};
}

/// Resumes once `delay` has passed, never earlier; muxio::Cancelled as
/// readable(). The deadline is taken when this is called, with the
/// arithmetic of Reactor::call_later(): a negative delay resumes in the next
/// iteration, one past the end of the clock's range never.
/// std::invalid_argument (here, not at the co_await) for a floating-point NaN.
template <class Rep, class Period>
[[nodiscard]] detail::ReactorWait sleep_for(Reactor& reactor, std::chrono::duration<Rep, Period> delay,
                                            std::stop_token token = {}) {
    const Reactor::Duration clamped = detail::clamp_delay(delay, "sleep_for");
    return sleep_until(reactor, detail::deadline_after(reactor.time(), clamped), std::move(token));
}

/// Resumes in the next iteration of the loop, after the callbacks already
/// queued: lets other tasks and I/O run. muxio::Cancelled as readable().
[[nodiscard]] inline detail::ReactorWait yield(Reactor& reactor, std::stop_token token = {}) noexcept {
    return {reactor, detail::ReactorWait::Kind::soon, -1, {}, std::move(token)};
}

/// `co_await get_stop_token()` returns the awaiting task's ambient stop token
/// (see Task), for code that passes it on or polls it. Never suspends.
[[nodiscard]] inline detail::StopTokenAwaiter get_stop_token() noexcept {
    return {};
}

}  // namespace muxio
