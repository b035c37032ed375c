// The reactor's state and the pieces its files share: the loop
// (reactor.cpp), thread-safe wakeups (wakeups.cpp), signals (signals.cpp) and
// embedding (embedding.cpp). Private to lib/.
#pragma once

#include <signal.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <vector>

#include "muxio/detail/ring_queue.hpp"
#include "muxio/detail/selector_loop.hpp"
#include "muxio/reactor.hpp"
#include "muxio/selector.hpp"
#include "reactor/scheduler.hpp"
#include "reactor/wakeup_fault.hpp"

namespace muxio {

namespace detail {

// ----- Signal routing -----------------------------------------------------------
// The handler only records the signal and pokes the owning reactor's wakeup
// descriptor; the callback runs later in the loop. Lock-free atomics and
// write(2) are async-signal-safe.
struct SignalRoute {
    std::atomic<int> wake_fd{-1};
    std::atomic<bool> pending{false};
    const void* owner = nullptr;  // guarded by signal_owners_mutex
};
constexpr int signal_limit = 65;  // NSIG on Linux; checked below where defined
#ifdef NSIG
static_assert(NSIG <= signal_limit, "signal table too small for this platform");
#endif
// The route of each signal number, and the lock its owners change it under.
extern std::array<SignalRoute, signal_limit> signal_routes;
extern std::mutex signal_owners_mutex;

// Wakeup writes that failed in this process: by a signal handler, or by a
// call_soon_threadsafe() that other callers' callbacks were counting on.
// Each reactor compares it with the value it saw last once per iteration, and
// on a change takes its threadsafe queue and looks at its signals, whatever
// woke it: what the failed write should have announced is not lost, only
// late. Written only on failures, so reading it costs no cache traffic.
extern std::atomic<std::uint64_t> missed_wakeups;

// Adds one to an eventfd's counter, retrying after a signal. Returns 0 once
// the descriptor is sure to poll readable: the write went through, or the
// counter is at its maximum (EAGAIN), which is readable already. Else the
// errno value, with nothing written. Async-signal-safe.
int write_wakeup(int fd, WakeupCall call) noexcept;

// Empties the counter of an eventfd (the wakeups or the embedding timerfd),
// retrying after a signal. Returns 0 once it is empty (EAGAIN: it was
// already, a spurious readiness), else the errno value.
int drain_wakeup(int fd, WakeupCall call) noexcept;

// A drain that fails leaves the descriptor readable: the loop would spin on
// it. The iteration stops here, before anything is taken, so nothing is
// lost, and the caller of run() hears of it.
[[noreturn, gnu::cold, gnu::noinline]] void refuse_drain(int error, int fd);

// Logs what a callback threw, naming it, when the user set no handler of
// their own.
void default_exception_handler(std::exception_ptr error, const CallbackOrigin& origin);

// The loop's totals: stored by the loop thread alone, read by any thread.
// A plain load and store, not an atomic add (one writer): no locked
// instruction on the loop's path.
struct LoopMetrics {
    std::atomic<std::uint64_t> iterations{0};
    std::atomic<std::uint64_t> callbacks_run{0};
    std::atomic<std::uint64_t> slow_callbacks{0};
    std::atomic<std::chrono::steady_clock::rep> idle_time{0};
    std::atomic<std::chrono::steady_clock::rep> timer_lag_last{0};
    std::atomic<std::chrono::steady_clock::rep> timer_lag_max{0};

    template <class T>
    static void add(std::atomic<T>& total, T amount) noexcept {
        total.store(total.load(std::memory_order_relaxed) + amount, std::memory_order_relaxed);
    }
};

[[noreturn, gnu::cold, gnu::noinline]] void refuse_empty_callback(std::string_view operation);

inline void require_callback(const Callback& callback, std::string_view operation) {
    if (!callback) [[unlikely]] {
        refuse_empty_callback(operation);
    }
}

}  // namespace detail

// The selector's key data: the fd's pair of handlers. Which of them exists is
// told by the key's events (READ: a reader, WRITE: a writer), not by whether
// the callback is empty, because a running callback is moved out of its slot.
struct FdHandlers {
    Callback reader;
    Callback writer;
};

struct Reactor::Impl {
    using Key = SelectorKey<FdHandlers>;

    std::function<TimePoint()> clock;
    std::unique_ptr<BaseSelector<FdHandlers>> selector;
    // The selector's poller's completion ring, when it has one (io_uring):
    // its completions are dispatched after the ready descriptors'.
    detail::CompletionRing* completions = nullptr;
    // Timers only; call_soon() callbacks wait in Reactor::soon_.
    detail::Scheduler scheduler;
    // The batch an iteration runs: soon_ as it was when the iteration began.
    // The two queues swap roles each iteration, so the batch runs in place
    // (what its callbacks schedule goes to soon_, which may grow; this one
    // never does while it runs) and positions stay unique across both.
    detail::RingQueue<Callback> running_batch;
    std::vector<detail::Scheduler::Id> due;  // this iteration's due timers
    OriginExceptionHandler exception_handler = detail::default_exception_handler;

    // The fd callback running now, moved out of its key: which fd and side;
    // whether it changed its fd's registration meanwhile (then the key must
    // be looked up again), and whether it replaced or removed itself (then
    // it must not be put back).
    int running_fd = -1;
    Events running_side;
    bool running_touched = false;
    bool running_replaced = false;
    // Set by add_handler() when it made the running callback's registration
    // anew (never without running_touched): the callback goes back under the
    // new token. Cleared where it is read.
    bool running_renewed = false;
    std::uint64_t renewed_token = 0;
    int running_signal = 0;  // the signal whose handler runs now, for its CallbackOrigin

    // What stats() reports, kept as registrations change.
    std::size_t descriptor_count = 0;
    std::size_t reader_count = 0;
    std::size_t writer_count = 0;

    // Debug mode (Reactor::debug_ says whether it is on).
    Duration slow_threshold{};
    bool slow_reported = false;   // a callback nested in the one timed now was reported
    bool measure_idle = false;    // set_idle_time_measurement()
    TimePoint timers_taken_at{};  // the clock reading that took this iteration's due timers
    detail::LoopMetrics metrics;

    // Embedding: a timerfd in the selector, armed so the selector's own
    // descriptor polls readable whenever there is work.
    int embed_timer_fd = -1;
    std::optional<TimePoint> embed_armed_for;

    // Thread-safe wakeups: an eventfd registered in the selector, drained by
    // the iteration itself (not by a callback), so threadsafe callbacks run in
    // the iteration that woke up.
    int wake_fd = -1;
    // Other threads take it: on a cache line of its own, apart from the
    // fields above, which every dispatch reads.
    alignas(64) std::mutex incoming_mutex;
    std::vector<Callback> incoming;  // guarded by incoming_mutex
    std::vector<Callback> incoming_spare;
    // Guarded by incoming_mutex. True while a wakeup is written or the
    // eventfd holds one the loop has not drained: calls then need not write
    // (coalescing). Never true while the eventfd is empty for good, or a
    // wakeup would be lost.
    bool wake_pending = false;
    bool incoming_closed = false;           // guarded by incoming_mutex
    std::uint64_t incoming_takes = 0;       // guarded by incoming_mutex: times `incoming` was taken
    std::atomic<int> wakers{0};             // call_soon_threadsafe() calls writing to wake_fd now
    std::uint64_t missed_wakeups_seen = 0;  // the loop's last look at missed_wakeups
    // wakeup_from_signal()'s view of wake_fd: -1 once close() began. Lock-free,
    // so a signal handler may read it; close() waits for signal_wakers to drop
    // to zero before it closes the descriptor.
    std::atomic<int> signal_wake_fd{-1};
    std::atomic<int> signal_wakers{0};
    static_assert(std::atomic<int>::is_always_lock_free, "wakeup_from_signal() needs lock-free atomics");

    // Signals handled by this reactor and what was installed before. Last:
    // 14 KiB that would otherwise part the fields a dispatch reads.
    std::array<Callback, detail::signal_limit> signal_handlers;
    std::array<std::optional<struct sigaction>, detail::signal_limit> previous_actions;

    TimePoint now() const { return clock ? clock() : Clock::now(); }

    std::size_t& side_count(Events side) noexcept { return side == EVENT_READ ? reader_count : writer_count; }

    // The time left until `deadline` on this reactor's clock, saturated.
    // Out of line on purpose: inlined into run_iteration, these few
    // instructions change the register allocation of its dispatch loop for
    // the worse (callgrind's instructions per echoed message show it).
    [[gnu::noinline]] Duration time_until(TimePoint deadline) const { return detail::time_until(deadline, now()); }

    // Notes that the running fd callback's registration is being changed.
    void touching(int fd, Events side) noexcept {
        if (fd == running_fd) {
            running_touched = true;
            running_replaced = running_replaced || side == running_side;
        }
    }

    // Runs the `side` callback of `key`. Returns whether `key` is still the
    // fd's registration without a new lookup: true unless the callback
    // touched it. The keys live at stable addresses, so an untouched key
    // needs neither a second lookup nor a check.
    template <bool Timed>
    [[gnu::always_inline]] bool run_handler(Reactor& reactor, const Key& key, Events side, std::uint64_t token) {
        Callback& slot = side == EVENT_READ ? key.data.reader : key.data.writer;
        // Moved out while it runs, so that replacing or removing itself (or
        // unregistering the fd) cannot destroy the callable under its feet.
        Callback running = std::move(slot);
        running_fd = key.fd;
        running_side = side;
        running_touched = false;
        running_replaced = false;
        reactor.invoke<Timed>(running, side == EVENT_READ ? CallbackKind::reader : CallbackKind::writer);
        running_fd = -1;
        if (!running_touched) {
            slot.assign_to_empty(std::move(running));
            return true;
        }
        const std::uint64_t current = running_renewed ? renewed_token : token;
        running_renewed = false;
        if (!running_replaced) {
            if (const Key* still = detail::find_current(*selector, current)) {
                (side == EVENT_READ ? still->data.reader : still->data.writer) = std::move(running);
            }
        }
        return false;
    }
};

// In the header so that the loop and the signal dispatch both inline it:
// the exception wrapper costs no call around every callback. `kind` is a
// constant at each call site, used only on the cold paths.
template <bool Timed>
[[gnu::always_inline]] inline void Reactor::invoke(Callback& callback, CallbackKind kind) noexcept {
    if constexpr (Timed) {
        if (debug_) {
            invoke_timed(callback, kind);
            return;
        }
    }
    try {
        callback();
    } catch (...) {
        report(std::current_exception(), kind);
    }
}

}  // namespace muxio
