// Reactor: an event loop whose selector keys carry the fd's callbacks, with
// timers, thread-safe wakeups, signal handlers and an embeddable descriptor.
#pragma once

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>

#include "muxio/detail/soon_queue.hpp"
#include "muxio/detail/unique_function.hpp"
#include "muxio/selector.hpp"

namespace muxio {

/// A move-only callback; captures up to six pointers' worth are stored
/// without allocating.
using Callback = detail::UniqueFunction<void()>;

class Reactor;

namespace detail {

class FdWatch;
class CompletionRing;
struct ReactorCompletions;

// A link in a reactor's list of close hooks. Whatever refers to a reactor and
// must not outlive it unawares (a socket's readiness watch, a pending await,
// a spawned task's frame) hooks onto it; close() unhooks each hook and calls
// its notify function, once. The list is intrusive and circular around a
// sentinel in the reactor: hooking, unhooking and taking another hook's
// place (how a moved object keeps its place) are a few pointer stores,
// allocate nothing, and unhooking needs no reactor. Like the rest of the
// reactor, hooks belong to its thread.
class CloseHook {
public:
    // Called by close() with the hook already unhooked, so it may destroy
    // the object that holds the hook.
    using Notify = void (*)(CloseHook& hook) noexcept;
    // When close() calls the hook. `early`: first, while the reactor still
    // works (a spawned task's frame, whose destruction removes its
    // registrations). `late`: once it is closed, before its selector is
    // released (watches and awaits, which forget the reactor). In a child
    // forked after the reactor was made, both run once it is closed.
    enum class Phase : std::uint8_t { early, late };

    CloseHook() noexcept = default;
    CloseHook(const CloseHook&) = delete;
    CloseHook& operator=(const CloseHook&) = delete;
    ~CloseHook() { unhook(); }

    // Hooks onto `reactor`, which must not be closed; this must not be hooked.
    void hook(Reactor& reactor, Phase phase, Notify notify) noexcept;
    void unhook() noexcept {
        if (next_ != nullptr) {
            prev_->next_ = next_;
            next_->prev_ = prev_;
            prev_ = nullptr;
            next_ = nullptr;
        }
    }
    // Takes `other`'s place in its list, if it is hooked, and its notify
    // function; `other` ends unhooked. This must not be hooked.
    void replace(CloseHook& other) noexcept {
        if (other.next_ == nullptr) {
            return;
        }
        prev_ = std::exchange(other.prev_, nullptr);
        next_ = std::exchange(other.next_, nullptr);
        notify_ = other.notify_;
        prev_->next_ = this;
        next_->prev_ = this;
    }
    [[nodiscard]] bool hooked() const noexcept { return next_ != nullptr; }

private:
    friend class ::muxio::Reactor;
    struct Sentinel {};
    explicit CloseHook(Sentinel /*tag*/) noexcept : prev_{this}, next_{this} {}

    CloseHook* prev_ = nullptr;
    CloseHook* next_ = nullptr;
    Notify notify_ = nullptr;
};

// Bumped in a forked child (pthread_atfork): a reactor made before the fork
// refuses to run there, since it shares the parent's epoll or io_uring
// instance. Read on every call_soon(), hence visible here.
extern std::atomic<std::uint64_t> fork_generation;

// Names the calling thread: the address of a thread-local object, unique
// among the threads alive. Cheaper than std::this_thread::get_id() (a call
// into the C library) for a check that call_soon() makes each time.
inline thread_local const char thread_tag = 0;
inline const void* this_thread_tag() noexcept {
    return &thread_tag;
}

// Deadline arithmetic that cannot overflow. The reactor's time points span
// the whole of the clock's range (an injected clock may start anywhere in
// it), so a plain `now + delay` or `deadline - now` can wrap around, and a
// wrapped deadline or wait is centuries off in the other direction.

/// `now + delay`, clamped to the clock's range: a delay of zero or less gives
/// `now`, and a deadline past TimePoint::max() is max(), a timer that never
/// fires, not one in the past.
constexpr std::chrono::steady_clock::time_point deadline_after(std::chrono::steady_clock::time_point now,
                                                               std::chrono::steady_clock::duration delay) noexcept {
    using TimePoint = std::chrono::steady_clock::time_point;
    if (delay <= delay.zero()) {
        return now;
    }
    return now.time_since_epoch() > TimePoint::max().time_since_epoch() - delay ? TimePoint::max() : now + delay;
}

/// The time from `now` until `deadline`: zero once it is due, and
/// Duration::max() when the difference does not fit (a deadline near the
/// end of the clock's range seen from a time near its beginning).
constexpr std::chrono::steady_clock::duration time_until(std::chrono::steady_clock::time_point deadline,
                                                         std::chrono::steady_clock::time_point now) noexcept {
    using Duration = std::chrono::steady_clock::duration;
    if (deadline <= now) {
        return Duration::zero();
    }
    // Positive and below 2^64, so exact in unsigned arithmetic.
    const auto gap = static_cast<std::uint64_t>(deadline.time_since_epoch().count()) -
                     static_cast<std::uint64_t>(now.time_since_epoch().count());
    return gap > static_cast<std::uint64_t>(Duration::max().count()) ? Duration::max()
                                                                     : Duration{static_cast<Duration::rep>(gap)};
}

[[noreturn]] void refuse_nan_delay(std::string_view operation);

/// Any std::chrono duration as the reactor's: rounded up to a whole tick,
/// zero if negative, Duration::max() if too large. std::invalid_argument
/// (naming `operation`) for a floating-point NaN.
template <class Rep, class Period>
std::chrono::steady_clock::duration clamp_delay(std::chrono::duration<Rep, Period> delay, std::string_view operation) {
    using Duration = std::chrono::steady_clock::duration;
    // Compared in long double, where converting any duration is exact or
    // rounds, never overflows.
    using Wide = std::chrono::duration<long double, Duration::period>;
    const Wide wide{delay};
    if (std::isnan(wide.count())) {
        refuse_nan_delay(operation);
    }
    if (wide >= Wide{Duration::max()}) {
        return Duration::max();
    }
    if (wide <= Wide::zero()) {
        return Duration::zero();
    }
    return std::chrono::ceil<Duration>(wide);
}

}  // namespace detail

/// Cancels a callback scheduled with call_soon(), call_later(), call_at() or
/// call_every(), and moves a timer's deadline.
///
/// A plain value: copying it copies the right to cancel. Cancelling twice,
/// after the callback ran, or through a default-constructed handle does
/// nothing; after the reactor's close() cancel() and pending() return false.
/// A handle must not be used after its reactor is destroyed: it is the value
/// every call_soon() returns, and knowing whether the reactor is alive would
/// cost every one of them a shared count. What muxio itself keeps across a
/// reactor's lifetime (an await's timer) is told of the close instead. Like
/// the reactor's own methods, cancel() and pending() throw std::logic_error
/// when called from another thread while the reactor runs (see Reactor,
/// "Threading"); nothing else.
class TimerHandle {
public:
    TimerHandle() = default;

    /// Cancels the callback if it has not run yet; its captures are destroyed
    /// now (a call_every() callback cancelled while it runs: once it
    /// returns). Returns true if this call cancelled it.
    bool cancel();
    /// True while the callback is scheduled and has neither run nor been
    /// cancelled. A call_every() timer stays pending until cancelled, also
    /// while its callback runs.
    [[nodiscard]] bool pending() const;

    /// Moves a pending timer (call_later(), call_at(), call_every()) to
    /// `when`, keeping its callback and this handle: nothing is allocated
    /// once the reactor's timer heap has grown to its high-water mark
    /// (libuv's uv_timer_again, an idle timeout pushed back on each read).
    /// `when` is taken as call_at() takes it. Returns true if the timer was
    /// pending; the callback then runs at `when`, not at its old deadline,
    /// even when that deadline had come and the timer was about to run in
    /// this iteration. A call_every() timer's next tick moves to `when` and
    /// the ticks after follow every interval from there; called from its
    /// own callback, it sets the next tick.
    ///
    /// Returns false and changes nothing when there is nothing to move: a
    /// one-shot timer whose callback ran or is running (schedule a new one),
    /// a cancelled timer, a call_soon() handle (it has no deadline), a
    /// default-constructed handle, or after the reactor's close().
    /// std::bad_alloc if the heap must grow and cannot (nothing changed);
    /// std::logic_error from another thread while the reactor runs.
    bool reschedule_at(std::chrono::steady_clock::time_point when);
    /// reschedule_at() the reactor's time() plus `delay`, clamped as
    /// call_later() clamps it.
    bool reschedule_after(std::chrono::steady_clock::duration delay);
    /// Any std::chrono duration, converted as call_later() converts it
    /// (std::invalid_argument for a floating-point NaN).
    template <class Rep, class Period>
    bool reschedule_after(std::chrono::duration<Rep, Period> delay) {
        return reschedule_after(detail::clamp_delay(delay, "TimerHandle::reschedule_after"));
    }

private:
    friend class Reactor;
    // A call_soon() callback is named by its position in the ready queue
    // (`queued`), a timer by its scheduler slot and generation.
    TimerHandle(Reactor* reactor, std::uint64_t id, bool queued) noexcept
        : reactor_{reactor}, id_{id}, queued_{queued} {}

    Reactor* reactor_ = nullptr;
    std::uint64_t id_ = 0;
    bool queued_ = false;
};

/// Options for constructing a Reactor.
struct ReactorOptions {
    /// A mechanism name from available_selectors(); empty picks DefaultSelector's choice.
    std::string_view selector;
    /// The clock for time(), call_later() and timers; steady_clock::now when
    /// empty. Tests inject a manual clock here.
    std::function<std::chrono::steady_clock::time_point()> clock;
};

/// What a callback was registered as: told to the exception handler and
/// named in debug mode's warnings.
enum class CallbackKind : std::uint8_t {
    reader,      ///< add_reader(); CallbackOrigin::fd says which descriptor
    writer,      ///< add_writer(); CallbackOrigin::fd says which descriptor
    timer,       ///< call_later(), call_at() or call_every()
    soon,        ///< call_soon()
    threadsafe,  ///< call_soon_threadsafe() (stop_threadsafe() too)
    signal,      ///< add_signal_handler(); CallbackOrigin::signo says which signal
};

/// Names one callback of a reactor.
struct CallbackOrigin {
    CallbackKind kind = CallbackKind::soon;  ///< what it was registered as
    int fd = -1;                             ///< the descriptor of a reader or writer; -1 otherwise
    int signo = 0;                           ///< the signal of a signal handler; 0 otherwise
};

/// The origin as words for a log line: "reader of fd 7", "writer of fd 7",
/// "timer", "call_soon callback", "call_soon_threadsafe callback",
/// "handler of signal 15".
[[nodiscard]] std::string describe(const CallbackOrigin& origin);

/// What a reactor holds now (Reactor::stats()); the reactor's own
/// descriptors (wakeup eventfd, embedding timerfd) are not counted.
struct ReactorStats {
    std::size_t descriptors = 0;      ///< descriptors with a reader, a writer or both
    std::size_t readers = 0;          ///< descriptors with a reader
    std::size_t writers = 0;          ///< descriptors with a writer
    std::size_t soon_callbacks = 0;   ///< call_soon() callbacks queued, not run or cancelled
    std::size_t timers = 0;           ///< timers scheduled, not run or cancelled (call_every(): until cancelled)
    std::size_t signal_handlers = 0;  ///< signals with a handler
};

/// Running totals of a reactor's loop (Reactor::metrics()), counted from its
/// construction. Each field is read atomically; together they are not one
/// snapshot (a read during an iteration may see one field updated and the
/// next not yet).
struct ReactorMetrics {
    std::uint64_t iterations = 0;     ///< iterations of run() and run_once() completed
    std::uint64_t callbacks_run = 0;  ///< callbacks run by those iterations
    /// Time spent blocked in the kernel wait (select). Measured only in debug
    /// mode or after Reactor::set_idle_time_measurement(true); what was
    /// measured stays when it is turned off.
    std::chrono::steady_clock::duration idle_time{};
    /// How late the loop took due timers: the time from the earliest due
    /// timer's deadline to the clock reading that took it, in the last
    /// iteration that took any, and the largest ever seen.
    std::chrono::steady_clock::duration timer_lag_last{};
    std::chrono::steady_clock::duration timer_lag_max{};  ///< see timer_lag_last
    std::uint64_t slow_callbacks = 0;                     ///< callbacks debug mode logged as slow
};

/// An event loop in the model of asyncio's selector loop.
///
/// Threading: while a thread runs the reactor (is inside run() or
/// run_once()), that thread alone may call its methods. A call from another
/// thread meanwhile throws std::logic_error naming the thread-safe way:
/// call_soon_threadsafe() to run code on the reactor's thread, or
/// stop_threadsafe() in place of stop() and before close(). The exceptions,
/// callable from any thread at any time: call_soon_threadsafe(),
/// stop_threadsafe(), is_running(), is_closed(), selector_name(), and time()
/// if the injected clock is thread-safe (steady_clock is). While nobody runs
/// it, any thread may use the reactor, one at a time: ordering those calls
/// (as handing any object from one thread to another needs) is the caller's
/// part, which the reactor cannot check. Destroying a reactor while another
/// thread runs it is fatal: the destructor's close() throws, and a
/// destructor cannot, so std::terminate reports it.
///
/// Errors: std::invalid_argument for a bad argument (negative fd, bad signal
/// number, an empty callback), std::system_error when the kernel refuses (the
/// message names the call and fd), std::logic_error when the reactor is
/// closed, running when it must not be, called from another thread while it
/// runs, or used in a process forked after it was created.
///
/// Fork: a child process shares the reactor's kernel objects (its epoll or
/// io_uring instance, eventfd, timerfd) with the parent, and nothing the
/// child does to the reactor it inherited reaches them. There, run(),
/// run_once(), every add_*, remove_reader(), remove_writer(), call_soon*(),
/// call_later(), call_at(), embed_fd() and the socket constructors throw
/// the fork error (a std::logic_error that says so); a child forked by a
/// callback finishes that iteration, then run() throws it. close() and the
/// destructor release the child's memory and its own copies of the
/// descriptors only, and detach what is bound to the reactor, as below;
/// remove_signal_handler(), stop(), TimerHandle::cancel() and the const
/// members work on the child's memory. A signal delivered to the child
/// wakes nothing in the parent. A child builds a reactor of its own.
///
/// Lifetimes: close() (and so the destructor) destroys spawned tasks'
/// frames and detaches whatever else is still bound to the reactor: a
/// socket then only closes its descriptor when destroyed, a pending await
/// of a task the reactor does not own stays suspended and no longer refers
/// to the reactor (destroying its task is safe, also after the reactor is
/// gone), a pending name lookup posts nothing. See detail::CloseHook.
///
/// One iteration (run_once) in order: compute the wait from the queued
/// callbacks and the nearest timer; select; take the due timers; run exactly
/// what is queued so far: call_soon callbacks, threadsafe ones, I/O
/// callbacks, due timers. Callbacks scheduled while they run go to the next
/// iteration, so nothing starves I/O.
class Reactor {
public:
    using Clock = std::chrono::steady_clock;  ///< Timers' clock, unless ReactorOptions::clock replaces it.
    using TimePoint = Clock::time_point;      ///< A deadline; any value is valid (see call_at()).
    using Duration = Clock::duration;         ///< A delay, in steady_clock's ticks.
    /// Receives an exception that escaped a callback.
    using ExceptionHandler = std::function<void(std::exception_ptr)>;
    /// Receives an exception that escaped a callback, and which callback it was.
    using OriginExceptionHandler = std::function<void(std::exception_ptr, const CallbackOrigin&)>;

    /// Creates the selector (std::system_error if the kernel refuses every
    /// mechanism, std::invalid_argument for an unknown name) and the wakeup
    /// descriptor.
    explicit Reactor(ReactorOptions options = {});
    /// Closes the reactor (see close()).
    ~Reactor();
    Reactor(const Reactor&) = delete;
    Reactor& operator=(const Reactor&) = delete;

    // ----- I/O --------------------------------------------------------------

    /// Calls `callback` each iteration in which `fd` is readable (level-
    /// triggered: until the data is consumed or the reader removed). Replaces
    /// an earlier reader of `fd`. The reactor does not own `fd`; remove the
    /// reader before closing it.
    ///
    /// Every add, first, second side or replacement, has the kernel watch
    /// the open file `fd` names now, under a new registration: a number
    /// closed and reused without remove_reader() gets a reader that fires for
    /// its new file, and late readiness of the old file is dropped. So
    /// replacing a callback costs a system call; the callback is in place
    /// only once the kernel agreed. std::system_error with EBADF if `fd` is
    /// closed: nothing changes then, and a side `fd` already has stays, and is
    /// called as for an error condition (see remove_reader()). Any other
    /// refusal (ENOMEM, a failed io_uring submission) throws
    /// std::system_error too and changes nothing either: a callback being
    /// replaced stays in place.
    void add_reader(int fd, Callback callback);
    /// Like add_reader() for writability.
    void add_writer(int fd, Callback callback);
    /// add_reader() that reports a failure in `ec` instead of throwing
    /// (asio's convention); `ec` is cleared on success. On any failure the
    /// reactor is exactly as before (a callback being replaced stays) and
    /// `callback` is destroyed before the call returns: it never runs.
    ///
    /// - std::errc::invalid_argument: a negative `fd`, one of the reactor's
    ///   own descriptors, or an empty `callback` (what the throwing form
    ///   reports as std::invalid_argument).
    /// - the kernel's error, in std::system_category(): e.g. EBADF for a
    ///   closed `fd`, ENOMEM.
    /// - std::errc::not_enough_memory: an allocation failed.
    /// - std::errc::operation_canceled: the reactor is closed.
    /// - std::errc::operation_not_permitted: a call from another thread
    ///   while the reactor runs, or in a process forked after the reactor
    ///   was made. Programming errors, which the throwing form reports as
    ///   std::logic_error; here they are codes too, since this form never
    ///   throws.
    void add_reader(int fd, Callback callback, std::error_code& ec) noexcept;
    /// Like the add_reader() above for writability.
    void add_writer(int fd, Callback callback, std::error_code& ec) noexcept;
    /// Removes the reader of `fd`; returns whether there was one. The fd is
    /// unregistered when it has neither reader nor writer. A callback removed
    /// during an iteration is not called again in that iteration.
    ///
    /// On a descriptor closed behind the reactor's back it works the same:
    /// never throws, and only the reader goes; the writer stays (has_writer()
    /// stays true until remove_writer()). The kernel watches nothing for a
    /// closed descriptor, so a side left on one is called in every iteration,
    /// as for an error condition (as poll(2) reports POLLNVAL), until it is
    /// removed: its own read or write fails with EBADF and tells its owner.
    /// Before any call reveals the close, what happens depends on the
    /// mechanism (docs/ARCHITECTURE.md, "Contracts under misuse").
    ///
    /// When `fd` keeps a writer, the kernel is asked to stop watching
    /// readability. If it refuses for another reason than EBADF (ENOMEM, a
    /// failed io_uring submission), std::system_error is thrown and nothing
    /// changed: the reader and the writer both stay registered and are
    /// called as before, also when the reader was removing itself from its
    /// own callback.
    ///
    /// False once the reactor is closed; the fork error in a forked child
    /// (the registration is the parent's too).
    bool remove_reader(int fd);
    /// Like remove_reader() for the writer (a refusal keeps both sides too).
    bool remove_writer(int fd);
    /// remove_reader() that reports a refusal in `ec` instead of throwing;
    /// `ec` is cleared on success. Returns whether a reader was removed
    /// (false whenever `ec` is set; nothing changed then). The kernel's
    /// error in std::system_category(), std::errc::not_enough_memory, or
    /// std::errc::operation_not_permitted from another thread while the
    /// reactor runs or in a forked child. A closed reactor or a negative fd
    /// is no error: false, as remove_reader() returns.
    bool remove_reader(int fd, std::error_code& ec) noexcept;
    /// Like the remove_reader() above for the writer.
    bool remove_writer(int fd, std::error_code& ec) noexcept;
    /// True if `fd` has a reader now (added and not removed). False for a
    /// negative fd, the reactor's own descriptors, and once the reactor is
    /// closed. Lets a caller refuse to replace someone else's reader, as the
    /// coroutine awaits do.
    [[nodiscard]] bool has_reader(int fd) const;
    /// Like has_reader() for the writer.
    [[nodiscard]] bool has_writer(int fd) const;
    /// Throws what add_reader() throws for a reactor that takes no more
    /// registrations: std::logic_error "<operation>: reactor is closed", or
    /// the fork error in a child forked after the reactor was made. What the
    /// functions that bind something to a reactor (the socket constructors,
    /// connect, resolve) check before they open anything.
    void require_usable(std::string_view operation) const { check_usable(operation); }

    // ----- Callbacks and timers ---------------------------------------------

    /// Runs `callback` in the next iteration, after those scheduled before it.
    /// From another thread while the reactor runs: std::logic_error; use
    /// call_soon_threadsafe().
    TimerHandle call_soon(Callback callback);
    /// call_soon() of a lambda or other function object, built in place in
    /// the queue (inline: no call, no move). Same contract.
    template <class F>
    requires(std::is_class_v<std::remove_cvref_t<F>> && !std::is_same_v<std::remove_cvref_t<F>, Callback> &&
             std::is_invocable_v<std::decay_t<F>&>) TimerHandle call_soon(F&& callback) {
        check_usable("call_soon");
        const std::uint64_t position = soon_.queue.emplace(std::forward<F>(callback));
        return queued_soon(position);
    }
    /// Runs `callback` once `delay` has passed: never earlier; callbacks due at
    /// the same instant run in the order they were scheduled. A delay of zero
    /// or less runs it in the next iteration that takes due timers; one that
    /// would pass the end of the clock's range saturates at TimePoint::max()
    /// (a timer that never fires) instead of wrapping into the past.
    TimerHandle call_later(Duration delay, Callback callback);
    /// Runs `callback` at `when` or as soon after as the loop can. Any time
    /// point is valid: one in the past, TimePoint::min() included, is due at
    /// once; TimePoint::max() never comes.
    TimerHandle call_at(TimePoint when, Callback callback);
    /// Any std::chrono duration; fractional ones round up, and one too large
    /// for Duration saturates (never fires) instead of overflowing.
    /// std::invalid_argument for a floating-point NaN.
    template <class Rep, class Period>
    TimerHandle call_later(std::chrono::duration<Rep, Period> delay, Callback callback) {
        return call_later(detail::clamp_delay(delay, "call_later"), std::move(callback));
    }
    /// Runs `callback` every `interval`, first once `interval` has passed,
    /// until the returned handle's cancel() (which its own callback may
    /// call: it then does not run again).
    ///
    /// Fixed rate: the ticks are `start + k * interval` (start is the time of
    /// this call), so the period does not drift by the callback's own run
    /// time or the loop's lateness. No catch-up burst: a tick taken late (a
    /// slow callback, a busy or suspended loop) runs once, as soon as the
    /// loop gets to it, and the next tick is the first one of the grid still
    /// ahead of the time the loop read when it took the late one; the ticks
    /// missed meanwhile are skipped, not run. Never early, like any timer.
    /// TimerHandle::reschedule_at() moves the grid. Nothing is allocated per
    /// tick.
    ///
    /// std::invalid_argument for an interval of zero or less (a timer due
    /// in every iteration would spin) and an empty callback; otherwise the
    /// errors of call_at(). An interval too large for the clock fires never.
    TimerHandle call_every(Duration interval, Callback callback);
    /// Any std::chrono duration, rounded up to a tick (std::invalid_argument
    /// for a NaN).
    template <class Rep, class Period>
    TimerHandle call_every(std::chrono::duration<Rep, Period> interval, Callback callback) {
        return call_every(detail::clamp_delay(interval, "call_every"), std::move(callback));
    }
    /// The reactor's clock now.
    [[nodiscard]] TimePoint time() const;

    /// Schedules `callback` from any thread and wakes the loop if it is
    /// blocked. Wakeups coalesce: many calls before the loop wakes cost one
    /// write to the reactor's eventfd.
    ///
    /// Errors: std::logic_error once the reactor is closed or in a forked
    /// child; std::system_error
    /// when the kernel refuses the wakeup write (EINTR is retried; EAGAIN, a
    /// full counter, wakes the loop anyway and is no error). On either throw
    /// the call had no effect: `callback` was not queued and has been
    /// destroyed on the calling thread. No wakeup is lost to a failed write:
    /// the next call writes again, and callbacks that other threads queued
    /// meanwhile, counting on that write, run in the loop's next iteration,
    /// whatever ends its wait.
    void call_soon_threadsafe(Callback callback);
    /// stop(), from any thread.
    void stop_threadsafe();
    /// Wakes the loop from a signal handler of the caller's own (one
    /// installed with sigaction(2), where add_signal_handler() does not
    /// fit). Async-signal-safe: it only loads a few atomics and write(2)s
    /// to the reactor's wakeup eventfd, and it leaves errno as it found it.
    /// Any thread, any time; never blocks, never throws, allocates nothing.
    ///
    /// The loop's current wait, or its next one, returns at once; that
    /// iteration runs what is due as usual (run_once() may return 0) and
    /// the caller's own flag, set by its handler before this call, tells
    /// the loop's owner why it woke. Wakeups coalesce with each other and
    /// with call_soon_threadsafe()'s. A write the kernel refuses (a full
    /// counter is no refusal) is not retried: nothing in a signal handler
    /// could report it.
    ///
    /// Does nothing once close() has begun, or in a process forked after
    /// the reactor was made. The reactor must still exist: uninstall the
    /// handler, or make it forget the reactor, before destroying it.
    void wakeup_from_signal() const noexcept;

    // ----- Signals ----------------------------------------------------------

    /// Runs `callback` in the loop (never in signal context) after `signo` is
    /// delivered; deliveries between two iterations coalesce into one call.
    /// If the signal handler cannot write its wakeup (the kernel refuses),
    /// the delivery is kept and the callback runs in the loop's next
    /// iteration, whatever ends its wait.
    /// Replaces an earlier handler of this reactor. The previous disposition
    /// is saved and restored by remove_signal_handler() and close(). One
    /// reactor per signal: std::logic_error if another reactor handles it.
    /// std::invalid_argument for SIGKILL, SIGSTOP or a number out of range.
    void add_signal_handler(int signo, Callback callback);
    /// Removes the handler and restores the previous disposition; returns
    /// whether there was a handler.
    bool remove_signal_handler(int signo);

    // ----- Running ----------------------------------------------------------

    /// Runs iterations until stop(). If stop() was called before, runs one
    /// iteration that polls without blocking, then returns. std::logic_error
    /// if already running, closed, or in a forked child. std::system_error
    /// when a read of the reactor's own eventfd or timerfd fails: that
    /// iteration ends there, before running anything, and what was queued
    /// stays queued for the next (a descriptor left readable would
    /// otherwise make the loop spin).
    void run();
    /// Runs one iteration, waiting at most `timeout` for something to do
    /// (nullopt: as long as needed; zero or negative, Duration::min()
    /// included: poll; Duration::max(): as long as needed). Returns the
    /// number of callbacks run. Errors as run().
    std::size_t run_once(std::optional<Duration> timeout = std::nullopt);
    /// Makes run() return after the current iteration. Harmless when not
    /// running. From another thread while the reactor runs: std::logic_error;
    /// use stop_threadsafe().
    void stop();
    /// Whether a thread is inside run() or run_once(). Any thread may ask.
    [[nodiscard]] bool is_running() const noexcept { return owner_.load(std::memory_order_relaxed) != nullptr; }

    /// Releases everything: the frames of spawned tasks that have not ended
    /// (destroyed first, while the reactor still works, so their pending
    /// awaits remove their registrations), signal handlers (previous
    /// dispositions restored), every callback still queued, registered or
    /// scheduled (their captures destroyed, none run), the selector and the
    /// wakeup descriptor. Sockets, awaits and lookups still bound to the
    /// reactor are detached (see the class comment). In a forked child the
    /// reactor counts as closed before the frames are destroyed, and the
    /// selector is abandoned (BaseSelector::abandon), not closed: no
    /// removal or cancellation reaches the parent's kernel objects.
    /// std::logic_error while running (from another thread: stop it with
    /// stop_threadsafe() first, then close it); harmless when already closed.
    /// On io_uring the kernel finishes tearing the ring down some
    /// milliseconds later and then interrupts, once, a blocking system call
    /// of each thread that ever submitted to it (the thread that made the
    /// reactor, the one that ran it): such a call may fail with EINTR, which
    /// callers of blocking calls must retry anyway.
    void close();
    /// Any thread may ask: a running reactor cannot be closed.
    [[nodiscard]] bool is_closed() const noexcept { return closed_; }

    // ----- Errors -----------------------------------------------------------

    /// Replaces the handler of exceptions escaping callbacks; an empty
    /// function restores the default, which logs the exception through the
    /// `muxio` logger, naming the callback (e.g. "reactor: exception in
    /// reader of fd 7: ..."), and goes on. Other callbacks of the iteration
    /// still run. An exception the handler itself throws goes to the
    /// default. A call_every() timer whose callback throws keeps repeating.
    void set_exception_handler(ExceptionHandler handler);
    /// Like the other overload; the handler is also told which callback
    /// threw (its kind, and its fd or signal number).
    void set_exception_handler(OriginExceptionHandler handler);
    /// Restores the default handler.
    void set_exception_handler(std::nullptr_t /*none*/) { set_exception_handler(ExceptionHandler{}); }

    // ----- Introspection and debugging ---------------------------------------

    /// Counts of registered descriptors, queued callbacks and timers, kept
    /// as the reactor changes (no walk over its tables). Thread rules as for
    /// has_reader(): the loop's thread while it runs, any one thread when it
    /// does not. All zero once closed.
    [[nodiscard]] ReactorStats stats() const;
    /// The loop's running totals. Any thread, any time until the reactor is
    /// destroyed, also while it runs and after close(): the loop stores each
    /// field atomically, with no system call and no clock read of its own
    /// (see ReactorMetrics::idle_time).
    [[nodiscard]] ReactorMetrics metrics() const noexcept;
    /// Turns debug mode (asyncio's) on with a threshold, or off with
    /// nullopt (the default). While it is on, every callback that runs for
    /// `threshold` or longer is logged as a warning through the `muxio`
    /// logger, naming what it was registered for (see describe()), and
    /// counted in ReactorMetrics::slow_callbacks; close() logs the
    /// descriptors still registered and the timers and callbacks still
    /// scheduled; idle time is measured. It costs two clock reads per
    /// callback and per iteration. Thread rules as for stop(); takes effect
    /// from the next iteration at the latest.
    void set_slow_callback_threshold(std::optional<Duration> threshold);
    /// Measures ReactorMetrics::idle_time outside debug mode too (libuv's
    /// UV_METRICS_IDLE_TIME): two clock reads per iteration, around the
    /// kernel wait. Off by default: the plain loop reads the clock only
    /// when it has timers. Thread rules as for stop().
    void set_idle_time_measurement(bool on);

    // ----- Embedding --------------------------------------------------------

    /// A descriptor that polls readable whenever the reactor has work (I/O
    /// ready, a timer due, a callback queued), so another loop can watch it
    /// and call run_once(0). Needs a selector that owns a kernel object
    /// (epoll, io_uring): std::logic_error with select or poll.
    /// Timers reach it through a timerfd: on steady_clock it is armed at the
    /// nearest deadline itself; on an injected clock, for the time left as
    /// that clock reads when work is scheduled and after each iteration,
    /// counted on the kernel's monotonic clock (a clock that jumps is seen
    /// at the next of those). A deadline already due makes it readable at
    /// once; TimePoint::max() never does.
    [[nodiscard]] int embed_fd();
    /// How long until the reactor has work: zero if callbacks are queued, a
    /// timer is due or socket completions wait to be dispatched, the time
    /// to the nearest timer (Duration::max() if it is further than that),
    /// or nullopt if nothing is scheduled or the reactor is closed.
    [[nodiscard]] std::optional<Duration> time_to_next_work() const;

    /// The selector's mechanism name.
    [[nodiscard]] std::string_view selector_name() const noexcept;

    /// Number of callbacks scheduled (queued or on timers) and not yet run;
    /// 0 once closed.
    [[nodiscard]] std::size_t scheduled_count() const;

private:
    friend class TimerHandle;
    friend class detail::FdWatch;
    TimerHandle schedule_timer(TimePoint when, Callback&& callback, Duration interval, std::string_view operation);
    friend class detail::CloseHook;
    friend struct detail::ReactorCompletions;
    struct Impl;

    // Whether the calling thread may use the reactor now: it is the one
    // running it, or nobody is. An atomic, so that asking from another thread
    // is no data race.
    [[nodiscard]] bool on_loop_thread() const noexcept {
        // The loop thread's own calls, the common case, decide at the first
        // comparison.
        const void* const owner = owner_.load(std::memory_order_relaxed);
        return owner == detail::this_thread_tag() || owner == nullptr;
    }
    // Inline and branch-only on the way through: call_soon() pays it per call.
    // Reading closed_ from another thread is no race: it does not change
    // while the reactor runs.
    void check_usable(std::string_view operation) const {
        if (closed_ || detail::fork_generation.load(std::memory_order_relaxed) != fork_generation_ || !on_loop_thread())
            [[unlikely]] {
            refuse(operation);
        }
    }
    // For what works on a closed reactor too.
    void check_thread(std::string_view operation) const {
        if (!on_loop_thread()) [[unlikely]] {
            refuse_thread(operation);
        }
    }
    // In a child forked after the reactor was made: its kernel objects are
    // the parent's too.
    [[nodiscard]] bool forked_away() const noexcept {
        return detail::fork_generation.load(std::memory_order_relaxed) != fork_generation_;
    }
    TimerHandle queued_soon(std::uint64_t position) {
        ++soon_.live;
        if (embedded_ && !running_) [[unlikely]] {
            rearm_embedding();
        }
        return {this, position, true};
    }
    [[noreturn, gnu::cold, gnu::noinline]] void refuse(std::string_view operation) const;
    [[noreturn, gnu::cold, gnu::noinline]] static void refuse_thread(std::string_view operation);
    void enter_loop(std::string_view operation);
    void leave_loop() noexcept;
    [[noreturn, gnu::cold, gnu::noinline]] static void refuse_in_child(std::string_view operation);
    // pthread_atfork's child handler.
    [[gnu::cold]] static void after_fork_in_child() noexcept;
    [[gnu::cold]] void notify_close_hooks(detail::CloseHook& sentinel) noexcept;
    // Debug mode and idle-time measurement run another instantiation of the
    // loop (Timed), so that the plain one carries none of their checks.
    void run_iteration(std::optional<Duration> timeout, std::size_t& ran) {
        if (timed_) [[unlikely]] {
            run_iteration<true>(timeout, ran);
        } else {
            run_iteration<false>(timeout, ran);
        }
    }
    template <bool Timed>
    void run_iteration(std::optional<Duration> timeout, std::size_t& ran);
    template <bool Timed>
    std::size_t dispatch_io(std::uint64_t token, Events events);
    template <bool Timed>
    void invoke(Callback& callback, CallbackKind kind) noexcept;
    [[gnu::noinline]] void invoke_timed(Callback& callback, CallbackKind kind) noexcept;
    [[gnu::cold, gnu::noinline]] void report(std::exception_ptr error, CallbackKind kind) noexcept;
    [[nodiscard]] CallbackOrigin origin_of(CallbackKind kind) const noexcept;
    [[gnu::cold]] void report_still_registered() const noexcept;
    void add_handler(int fd, Events side, Callback callback);
    void add_handler(int fd, Events side, Callback callback, std::error_code& ec) noexcept;
    bool remove_handler(int fd, Events side, std::error_code& ec) noexcept;
    [[nodiscard]] std::errc misuse() const noexcept;
    // Swaps the callback of a side `fd` has, and nothing else: no system
    // call, no new token. For FdWatch, whose callbacks point at it and follow
    // it when it moves. std::logic_error if `fd` has no such side.
    void replace_handler(int fd, Events side, Callback callback);
    bool remove_handler(int fd, Events side);
    [[nodiscard]] bool has_handler(int fd, Events side) const;
    void drain_wakeups();
    void take_wakeups();
    [[gnu::cold, gnu::noinline]] void wakeup_failed(int error, int wake_fd, std::size_t position, std::uint64_t takes);
    void run_signal_handler(int signo);
    void rearm_embedding();

    std::unique_ptr<Impl> impl_;
    detail::SoonQueue soon_;
    std::uint64_t fork_generation_ = 0;
    bool embedded_ = false;  // embed_fd() was called: queuing work re-arms its timer
    bool debug_ = false;     // a slow-callback threshold is set: callbacks are timed
    bool timed_ = false;     // debug_, or idle time measured: the loop reads the clock around its wait
    bool running_ = false;   // the loop thread's own view of whether owner_ is set
    // The detail::this_thread_tag() of the thread in run() or run_once(),
    // or null when none is.
    std::atomic<const void*> owner_{nullptr};
    bool stopping_ = false;
    bool closed_ = false;
    // While run() runs: the reactor whose run() this thread was in when it
    // began (a callback running another reactor), for after_fork_in_child().
    Reactor* enclosing_run_ = nullptr;
    // The sentinels of the close hooks' lists, one per phase (see CloseHook).
    detail::CloseHook early_hooks_{detail::CloseHook::Sentinel{}};
    detail::CloseHook late_hooks_{detail::CloseHook::Sentinel{}};
};

inline void detail::CloseHook::hook(Reactor& reactor, Phase phase, Notify notify) noexcept {
    CloseHook& sentinel = phase == Phase::early ? reactor.early_hooks_ : reactor.late_hooks_;
    notify_ = notify;
    prev_ = sentinel.prev_;
    next_ = &sentinel;
    prev_->next_ = this;
    sentinel.prev_ = this;
}

}  // namespace muxio
