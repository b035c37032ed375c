// The reactor's loop. Reading order: the iteration (Reactor::run_iteration),
// then the I/O registration helpers, timers, stopping and closing. Wakeups
// from other threads, signals and embedding have files of their own.
#include "muxio/reactor.hpp"

#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <mutex>
#include <new>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include "base/exception_code.hpp"
#include "muxio/detail/registration_token.hpp"
#include "muxio/detail/ring_queue.hpp"
#include "muxio/detail/selector_loop.hpp"
#include "muxio/error.hpp"
#include "muxio/log.hpp"
#include "muxio/selectors.hpp"
#include "reactor/completions.hpp"
#include "reactor/reactor_impl.hpp"
#include "selector/descriptor_table.hpp"

namespace muxio {

std::atomic<std::uint64_t> detail::fork_generation{0};
std::atomic<detail::WakeupFault> detail::wakeup_fault{nullptr};

std::string describe(const CallbackOrigin& origin) {
    switch (origin.kind) {
        case CallbackKind::reader:
            return fmt::format("reader of fd {}", origin.fd);
        case CallbackKind::writer:
            return fmt::format("writer of fd {}", origin.fd);
        case CallbackKind::timer:
            return "timer";
        case CallbackKind::soon:
            return "call_soon callback";
        case CallbackKind::threadsafe:
            return "call_soon_threadsafe callback";
        case CallbackKind::signal:
            return fmt::format("handler of signal {}", origin.signo);
    }
    return "callback";
}

void detail::default_exception_handler(std::exception_ptr error, const CallbackOrigin& origin) {
    try {
        std::rethrow_exception(std::move(error));
    } catch (const std::exception& e) {
        logger().error("reactor: exception in {}: {}", describe(origin), e.what());
    } catch (...) {
        logger().error("reactor: unknown exception in {}", describe(origin));
    }
}

void detail::refuse_empty_callback(std::string_view operation) {
    throw std::invalid_argument(fmt::format("{}: empty callback", operation));
}

namespace {

// ----- Fork detection ---------------------------------------------------------
// A forked child shares the parent's epoll or io_uring instance (and its
// eventfd and timerfd): running the parent's reactor there would steal the
// parent's events, and removing a registration there would remove the
// parent's. Each fork bumps a counter in the child; a reactor refuses to work
// when the counter moved since it was built. One atomic load per check, no
// getpid() system call. The counter is detail::fork_generation (reactor.hpp).
//
// The signal owners' lock is held across the fork, so that a child of a
// process that was adding or removing a handler on another thread does not
// inherit it locked. The child's handler is Reactor::after_fork_in_child().
std::uint64_t current_fork_generation(void (*in_child)()) {
    static std::once_flag registered;
    std::call_once(registered, [in_child] {
        ::pthread_atfork([] { detail::signal_owners_mutex.lock(); }, [] { detail::signal_owners_mutex.unlock(); },
                         in_child);
    });
    return detail::fork_generation.load(std::memory_order_relaxed);
}

// The reactor whose run() this thread is in, innermost first (a callback
// may run another reactor); see Reactor::after_fork_in_child().
thread_local Reactor* innermost_run = nullptr;

void note_timer_lag(detail::LoopMetrics& metrics, Reactor::Duration lag) noexcept {
    metrics.timer_lag_last.store(lag.count(), std::memory_order_relaxed);
    if (lag.count() > metrics.timer_lag_max.load(std::memory_order_relaxed)) {
        metrics.timer_lag_max.store(lag.count(), std::memory_order_relaxed);
    }
}

constexpr std::uint64_t timer_token(detail::Scheduler::Id id) noexcept {
    return (std::uint64_t{id.generation} << 32U) | id.slot;
}
constexpr detail::Scheduler::Id timer_id(std::uint64_t token) noexcept {
    return {static_cast<std::uint32_t>(token & 0xffff'ffffU), static_cast<std::uint32_t>(token >> 32U)};
}

}  // namespace

// ----- Construction -----------------------------------------------------------------

Reactor::Reactor(ReactorOptions options) : impl_{std::make_unique<Impl>()} {
    impl_->clock = std::move(options.clock);
    fork_generation_ = current_fork_generation(&Reactor::after_fork_in_child);
    auto poller = options.selector.empty() ? detail::make_default_poller() : detail::make_poller(options.selector);
    impl_->completions = poller->completion_ring();
    if (impl_->completions != nullptr) {
        // A first call through the interface, now: UBSan checks a dynamic
        // type once, through a pipe, which a process out of descriptors
        // (an accept failing with EMFILE) could not make later.
        (void)impl_->completions->has_completions();
    }
    impl_->selector = std::make_unique<detail::NamedSelector<FdHandlers>>(std::move(poller));
    detail::OwnedFd wake{::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)};
    if (!wake.valid()) {
        throw_system_error(errno, "eventfd");
    }
    impl_->selector->register_(wake.get(), EVENT_READ);
    impl_->wake_fd = wake.release();  // close() closes it from here on
    impl_->signal_wake_fd.store(impl_->wake_fd, std::memory_order_release);
}

Reactor::~Reactor() {
    // A destructor cannot refuse: close() must not throw for a reactor
    // destroyed from one of its own callbacks. From another thread while the
    // loop runs, its thread check throws, and std::terminate reports it:
    // going on would free what the loop is using.
    if (on_loop_thread()) {
        running_ = false;
    }
    close();
}

void detail::refuse_nan_delay(std::string_view operation) {
    throw std::invalid_argument(fmt::format("{}: the delay is not a number", operation));
}

void Reactor::refuse(std::string_view operation) const {
    if (!on_loop_thread()) {
        refuse_thread(operation);
    }
    if (closed_) {
        throw std::logic_error(fmt::format("{}: reactor is closed", operation));
    }
    refuse_in_child(operation);
}

void Reactor::after_fork_in_child() noexcept {
    detail::fork_generation.fetch_add(1, std::memory_order_relaxed);
    // A signal delivered to the child is not written to the eventfd it
    // shares with the parent.
    for (detail::SignalRoute& route : detail::signal_routes) {
        route.wake_fd.store(-1, std::memory_order_relaxed);
    }
    detail::signal_owners_mutex.unlock();
    // The forking thread is the child's only one. The runs it is inside (a
    // callback forked) end with the iteration of the fork, then throw: the
    // next iteration would wait on the parent's kernel objects. Marked here
    // so that the loop pays no check per iteration.
    for (Reactor* reactor = innermost_run; reactor != nullptr; reactor = reactor->enclosing_run_) {
        reactor->stopping_ = true;
    }
}

void Reactor::refuse_in_child(std::string_view operation) {
    throw std::logic_error(
        fmt::format("{}: this reactor was created before a fork(); a child process must create its own", operation));
}

void Reactor::refuse_thread(std::string_view operation) {
    if (operation == "stop") {
        throw std::logic_error("stop: called from another thread while the reactor runs; use stop_threadsafe()");
    }
    if (operation == "close") {
        throw std::logic_error(
            "close: called from another thread while the reactor runs; stop it with stop_threadsafe(), then close it");
    }
    throw std::logic_error(fmt::format(
        "{}: called from another thread while the reactor runs; use call_soon_threadsafe() to call it on the "
        "reactor's thread",
        operation));
}

// ----- The iteration ----------------------------------------------------------------

void Reactor::enter_loop(std::string_view operation) {
    check_usable(operation);
    // Claimed atomically: of two threads that both found the reactor idle,
    // one runs it and the other is refused.
    const void* idle = nullptr;
    if (!owner_.compare_exchange_strong(idle, detail::this_thread_tag(), std::memory_order_acquire,
                                        std::memory_order_relaxed)) {
        if (idle == detail::this_thread_tag()) {
            throw std::logic_error(fmt::format("{}: reactor is already running", operation));
        }
        refuse_thread(operation);
    }
    running_ = true;
}

void Reactor::leave_loop() noexcept {
    running_ = false;
    owner_.store(nullptr, std::memory_order_release);
}

void Reactor::run() {
    enter_loop("run");
    enclosing_run_ = std::exchange(innermost_run, this);
    std::size_t ran = 0;
    try {
        do {
            // A stop() that came before run() leaves room for one polling
            // iteration; later iterations block as long as they need.
            run_iteration(stopping_ ? std::optional<Duration>{Duration::zero()} : std::nullopt, ran);
        } while (!stopping_);
        if (forked_away()) [[unlikely]] {
            refuse_in_child("run");  // a callback forked: see after_fork_in_child()
        }
    } catch (...) {
        innermost_run = enclosing_run_;
        stopping_ = false;
        leave_loop();
        throw;
    }
    innermost_run = enclosing_run_;
    stopping_ = false;
    leave_loop();
}

std::size_t Reactor::run_once(std::optional<Duration> timeout) {
    enter_loop("run_once");
    std::size_t ran = 0;
    try {
        run_iteration(timeout, ran);
    } catch (...) {
        leave_loop();
        throw;
    }
    leave_loop();
    return ran;
}

template <bool Timed>
void Reactor::run_iteration(std::optional<Duration> timeout, std::size_t& ran) {
    Impl& impl = *impl_;

    // 1. How long to wait: not at all if callbacks are queued; else until the
    //    nearest timer, bounded by the caller's timeout. (A pending stop is
    //    run()'s business: it passes a zero timeout. Here it would make every
    //    later run_once() poll, a busy loop for a caller driving run_once().)
    detail::Timeout wait = timeout;
    if (!soon_.queue.empty()) {
        wait = Duration::zero();
    } else if (const auto deadline = impl.scheduler.next_deadline()) {
        const Duration until = impl.time_until(*deadline);
        if (!wait || until < *wait) {
            wait = until;
        }
    }

    // 2. Select. The reactor's own descriptors are serviced first, so that
    //    threadsafe callbacks and signal handlers join this iteration. The
    //    ready span stays valid through step 4: nothing else selects. Its
    //    entries are unchecked; dispatch_io() looks each one up.
    const std::size_t ran_before = ran;
    TimePoint wait_began{};
    if constexpr (Timed) {
        wait_began = impl.now();
    }
    const auto ready = detail::select_tokens(*impl.selector, wait);
    if constexpr (Timed) {
        detail::LoopMetrics::add(impl.metrics.idle_time, detail::time_until(impl.now(), wait_began).count());
    }
    for (const detail::PollEvent& entry : ready) {
        const int fd = detail::RegistrationToken::fd(entry.token);
        if (fd == impl.wake_fd) {
            drain_wakeups();
        } else if (fd == impl.embed_timer_fd) {
            if (const int error = detail::drain_wakeup(fd, detail::WakeupCall::drain_read); error != 0) [[unlikely]] {
                detail::refuse_drain(error, fd);
            }
            impl.embed_armed_for.reset();
        }
    }
    // A wakeup write failed somewhere: what it would have announced is
    // taken now, in this iteration, whatever woke it.
    if (const std::uint64_t missed = detail::missed_wakeups.load(std::memory_order_relaxed);
        missed != impl.missed_wakeups_seen) [[unlikely]] {
        impl.missed_wakeups_seen = missed;
        take_wakeups();
    }

    // 3. Take the due timers, in deadline order, ties in scheduling order.
    //    The clock is read after the wait, so nothing runs before its
    //    deadline. No timer, no clock read: a loop of I/O alone never pays
    //    for one.
    impl.due.clear();
    if (impl.scheduler.timer_count() != 0) {
        const TimePoint now = impl.now();
        impl.timers_taken_at = now;
        if (const TimePoint earliest = *impl.scheduler.next_deadline(); earliest <= now) {
            note_timer_lag(impl.metrics, detail::time_until(now, earliest));
        }
        while (const auto due = impl.scheduler.pop_due(now)) {
            impl.due.push_back(*due);
        }
    }

    // 4. Run exactly what is queued now, oldest first: call_soon callbacks
    //    (signal handlers among them), the threadsafe batch, I/O callbacks,
    //    due timers. What these callbacks schedule waits for the next
    //    iteration.
    if (!soon_.queue.empty()) {
        std::swap(soon_.queue, impl.running_batch);
        soon_.queue.restart_at(impl.running_batch.next_position());
        do {
            // Out of the queue before it runs, so its own handle no longer
            // finds it; destroyed after, in place.
            Callback& callback = impl.running_batch.pop_in_place();
            if (callback) {
                --soon_.live;
                invoke<Timed>(callback, CallbackKind::soon);
                callback = nullptr;
                ++ran;
            }
        } while (!impl.running_batch.empty());
    }
    if (!impl.incoming_spare.empty()) {
        // Run in place: only drain_wakeups() touches incoming_spare, and not
        // before the next select.
        for (Callback& callback : impl.incoming_spare) {
            invoke<Timed>(callback, CallbackKind::threadsafe);
            ++ran;
        }
        impl.incoming_spare.clear();
    }
    // The next entry's slot is fetched while this one's callback runs: with
    // many descriptors every slot is a cache miss, and the callback's system
    // calls give the load time to land.
    const std::size_t ready_count = ready.size();
    for (std::size_t index = 0; index < ready_count; ++index) {
        if (index + 1 < ready_count) {
            detail::prefetch_slot(*impl.selector, ready[index + 1].token);
        }
        const detail::PollEvent& entry = ready[index];
        const int fd = detail::RegistrationToken::fd(entry.token);
        if (fd != impl.wake_fd && fd != impl.embed_timer_fd) {
            ran += dispatch_io<Timed>(entry.token, entry.events);
        }
    }
    if (impl.completions != nullptr) {
        ran += detail::ReactorCompletions::dispatch(*this, *impl.completions);
    }
    // A few timers ahead are fetched while one runs: in a large heap each
    // one's record and callback are a cache miss, and the order is known.
    constexpr std::size_t prefetch_distance = 4;
    const std::size_t due_count = impl.due.size();
    for (std::size_t index = 0; index < due_count; ++index) {
        if (index + prefetch_distance < due_count) {
            impl.scheduler.prefetch(impl.due[index + prefetch_distance]);
        }
        bool repeating = false;
        if (Callback callback = impl.scheduler.take(impl.due[index], &repeating)) {
            invoke<Timed>(callback, CallbackKind::timer);
            ++ran;
            if (repeating) [[unlikely]] {
                impl.scheduler.finish_repeat(impl.due[index], std::move(callback), impl.timers_taken_at);
            }
        }
    }

    if (impl.embed_timer_fd >= 0) {
        rearm_embedding();
    }
    detail::LoopMetrics::add(impl.metrics.iterations, std::uint64_t{1});
    detail::LoopMetrics::add(impl.metrics.callbacks_run, static_cast<std::uint64_t>(ran - ran_before));
}

detail::CompletionRing* detail::ReactorCompletions::ring(Reactor& reactor) noexcept {
    return reactor.closed_ || reactor.forked_away() ? nullptr : reactor.impl_->completions;
}

std::size_t detail::ReactorCompletions::dispatch(Reactor& reactor, CompletionRing& ring) {
    return ring.dispatch(
        [](void* owner, std::exception_ptr error, int fd) {
            auto& target = *static_cast<Reactor*>(owner);
            target.impl_->running_fd = fd;
            target.report(std::move(error), CallbackKind::reader);
            target.impl_->running_fd = -1;
        },
        &reactor);
}

CallbackOrigin Reactor::origin_of(CallbackKind kind) const noexcept {
    CallbackOrigin origin{kind};
    if (kind == CallbackKind::reader || kind == CallbackKind::writer) {
        origin.fd = impl_->running_fd;
    } else if (kind == CallbackKind::signal) {
        origin.signo = impl_->running_signal;
    }
    return origin;
}

void Reactor::report(std::exception_ptr error, CallbackKind kind) noexcept {
    const CallbackOrigin origin = origin_of(kind);
    try {
        impl_->exception_handler(std::move(error), origin);
    } catch (...) {
        detail::default_exception_handler(std::current_exception(), origin);
    }
}

// Debug mode's invoke(): the callback between two clock readings. A signal
// handler runs inside a call_soon callback of the reactor's own; only the
// innermost slow callback is reported, under its own name.
void Reactor::invoke_timed(Callback& callback, CallbackKind kind) noexcept {
    Impl& impl = *impl_;
    const CallbackOrigin origin = origin_of(kind);  // before it runs: it may change its registration
    impl.slow_reported = false;
    // An injected clock that throws costs the measurement, not the callback.
    std::optional<TimePoint> began;
    try {
        began = impl.now();
    } catch (...) {
    }
    try {
        callback();
    } catch (...) {
        report(std::current_exception(), kind);
    }
    if (!began) {
        return;
    }
    try {
        const Duration took = detail::time_until(impl.now(), *began);
        if (took >= impl.slow_threshold && !impl.slow_reported) {
            impl.slow_reported = true;
            detail::LoopMetrics::add(impl.metrics.slow_callbacks, std::uint64_t{1});
            logger().warn("reactor: slow callback: {} took {:.3f} ms (threshold {:.3f} ms)", describe(origin),
                          std::chrono::duration<double, std::milli>{took}.count(),
                          std::chrono::duration<double, std::milli>{impl.slow_threshold}.count());
        }
    } catch (...) {
        // A clock or a logger that throws: debugging output is not worth the callback's iteration.
    }
}

// Inlined into the loop, with run_handler(): after the callback's system
// calls every return up to the loop mispredicts (perf puts the dispatch's
// samples on the instructions after calls), so fewer frames cost less.
template <bool Timed>
[[gnu::always_inline]] inline std::size_t Reactor::dispatch_io(std::uint64_t token, Events events) {
    Impl& impl = *impl_;
    // Checked before each callback: an earlier one of this iteration may
    // have removed this fd, or removed and added it again (a new
    // registration, which the token's generation tells apart).
    const Impl::Key* key = detail::find_current(*impl.selector, token);
    std::size_t ran = 0;
    if (detail::watched(key, events).contains(EVENT_READ)) {
        ++ran;
        if (!impl.run_handler<Timed>(*this, *key, EVENT_READ, token)) {
            key = detail::find_current(*impl.selector, token);
        }
    }
    if (detail::watched(key, events).contains(EVENT_WRITE)) {
        ++ran;
        impl.run_handler<Timed>(*this, *key, EVENT_WRITE, token);
    }
    return ran;
}

// ----- I/O registration ---------------------------------------------------------------

void Reactor::add_handler(int fd, Events side, Callback callback) {
    const std::string_view operation = side == EVENT_READ ? "add_reader" : "add_writer";
    check_usable(operation);
    detail::require_callback(callback, operation);
    if (fd < 0) {
        throw std::invalid_argument(fmt::format("invalid file descriptor: {}", fd));
    }
    Impl& impl = *impl_;
    if (fd == impl.wake_fd || fd == impl.embed_timer_fd) {
        throw std::invalid_argument(fmt::format("fd {} belongs to the reactor itself", fd));
    }
    const auto map = impl.selector->get_map();
    const auto* key = map.find(fd);
    if (key == nullptr) {
        FdHandlers handlers;
        (side == EVENT_READ ? handlers.reader : handlers.writer) = std::move(callback);
        impl.selector->register_(fd, side, std::move(handlers));
        impl.touching(fd, side);
        ++impl.descriptor_count;
        ++impl.side_count(side);
        return;
    }
    const bool had_side = key->events.contains(side);
    // Registered anew even when only a callback is replaced: the fd may have
    // been closed and its number reused without telling the reactor, and the
    // kernel would then watch the old file, or nothing, for the new reader.
    // The new token drops late events of what was watched before. On a
    // closed fd this throws EBADF and changes nothing.
    impl.selector->reregister(fd, key->events | side);
    impl.touching(fd, side);
    if (!had_side) {
        ++impl.side_count(side);
    }
    if (fd == impl.running_fd) {
        impl.running_renewed = true;  // the running callback goes back under the new token
        impl.renewed_token = detail::token_of(*impl.selector, *key);
    }
    // The replaced callback dies last, once the key is consistent: its
    // captures' destructors may call back into the reactor, even remove `fd`.
    const Callback replaced =
        std::exchange(side == EVENT_READ ? key->data.reader : key->data.writer, std::move(callback));
}

void Reactor::replace_handler(int fd, Events side, Callback callback) {
    check_usable(side == EVENT_READ ? "add_reader" : "add_writer");
    Impl& impl = *impl_;
    const auto* key = fd < 0 ? nullptr : impl.selector->get_map().find(fd);
    if (key == nullptr || !key->events.contains(side) || fd == impl.wake_fd || fd == impl.embed_timer_fd) {
        throw std::logic_error(fmt::format("fd {} has no {} to replace", fd, side == EVENT_READ ? "reader" : "writer"));
    }
    impl.touching(fd, side);
    const Callback replaced =
        std::exchange(side == EVENT_READ ? key->data.reader : key->data.writer, std::move(callback));
}

bool Reactor::remove_handler(int fd, Events side) {
    check_thread(side == EVENT_READ ? "remove_reader" : "remove_writer");
    if (closed_ || fd < 0) {
        return false;  // removal must be safe from destructors running at close
    }
    if (forked_away()) [[unlikely]] {
        // The registration is the parent's too: removing it here would remove it there.
        refuse_in_child(side == EVENT_READ ? "remove_reader" : "remove_writer");
    }
    Impl& impl = *impl_;
    const auto* key = impl.selector->get_map().find(fd);
    if (key == nullptr || !key->events.contains(side) || fd == impl.wake_fd || fd == impl.embed_timer_fd) {
        return false;
    }
    const Events remaining = key->events & ~side;
    if (remaining.empty()) {
        impl.touching(fd, side);
        --impl.descriptor_count;
        --impl.side_count(side);
        // The returned key, and the callbacks in it, die here.
        (void)impl.selector->unregister(fd);
        return true;
    }
    // The flag touching() may set, so that a refusal can take it back
    // (running_touched may stay: it only costs the running callback a
    // lookup).
    const bool was_replaced = impl.running_replaced;
    impl.touching(fd, side);
    Callback& slot = side == EVENT_READ ? key->data.reader : key->data.writer;
    // Dies at the end of this function, after the modify, for the same
    // reason as in add_handler().
    Callback removed = std::move(slot);
    try {
        // Not BaseSelector::modify(): on a refusal it unregisters the fd, and
        // the other side would go with it. This leaves the key as it was.
        detail::modify_or_keep(*impl.selector, fd, remaining);
    } catch (const std::system_error& error) {
        // On a descriptor closed behind the reactor's back the modify
        // succeeds: the other side stays, and the selector reports it as an
        // error condition until it is removed. A mechanism that still
        // refuses a closed descriptor (kqueue, /dev/poll) may have dropped
        // part of the registration: the fd goes, removal must work after a
        // close all the same.
        if (error.code() == std::errc::bad_file_descriptor) {
            --impl.descriptor_count;
            --impl.side_count(side);
            --impl.side_count(remaining);
            (void)impl.selector->unregister(fd);
            return true;
        }
        // Refused otherwise (ENOMEM, a failed io_uring submission): the
        // kernel still watches both sides, so both callbacks stay, a running
        // callback that removed itself included.
        slot.assign_to_empty(std::move(removed));
        impl.running_replaced = was_replaced;
        throw;
    }
    --impl.side_count(side);
    return true;
}

bool Reactor::has_handler(int fd, Events side) const {
    check_thread(side == EVENT_READ ? "has_reader" : "has_writer");
    if (closed_ || fd < 0) {
        return false;
    }
    const Impl& impl = *impl_;
    if (fd == impl.wake_fd || fd == impl.embed_timer_fd) {
        return false;
    }
    const auto* key = impl.selector->get_map().find(fd);
    return key != nullptr && key->events.contains(side);
}

bool Reactor::has_reader(int fd) const {
    return has_handler(fd, EVENT_READ);
}
bool Reactor::has_writer(int fd) const {
    return has_handler(fd, EVENT_WRITE);
}

void Reactor::add_reader(int fd, Callback callback) {
    add_handler(fd, EVENT_READ, std::move(callback));
}
void Reactor::add_writer(int fd, Callback callback) {
    add_handler(fd, EVENT_WRITE, std::move(callback));
}
void Reactor::add_reader(int fd, Callback callback, std::error_code& ec) noexcept {
    add_handler(fd, EVENT_READ, std::move(callback), ec);
}
void Reactor::add_writer(int fd, Callback callback, std::error_code& ec) noexcept {
    add_handler(fd, EVENT_WRITE, std::move(callback), ec);
}
bool Reactor::remove_reader(int fd, std::error_code& ec) noexcept {
    return remove_handler(fd, EVENT_READ, ec);
}
bool Reactor::remove_writer(int fd, std::error_code& ec) noexcept {
    return remove_handler(fd, EVENT_WRITE, ec);
}

// Why a reactor refuses work, as the error_code forms report it; errc{}
// when it does not.
std::errc Reactor::misuse() const noexcept {
    if (!on_loop_thread() || forked_away()) {
        return std::errc::operation_not_permitted;
    }
    if (closed_) {
        return std::errc::operation_canceled;
    }
    return std::errc{};
}

void Reactor::add_handler(int fd, Events side, Callback callback, std::error_code& ec) noexcept {
    ec.clear();
    if (const std::errc refused = misuse(); refused != std::errc{}) {
        ec = std::make_error_code(refused);
        return;
    }
    if (fd < 0 || !callback || fd == impl_->wake_fd || fd == impl_->embed_timer_fd) {
        ec = std::make_error_code(std::errc::invalid_argument);
        return;
    }
    try {
        add_handler(fd, side, std::move(callback));
    } catch (...) {
        ec = detail::code_of_current_exception();
    }
}

bool Reactor::remove_handler(int fd, Events side, std::error_code& ec) noexcept {
    ec.clear();
    if (!on_loop_thread() || (!closed_ && fd >= 0 && forked_away())) {
        ec = std::make_error_code(std::errc::operation_not_permitted);
        return false;
    }
    try {
        return remove_handler(fd, side);
    } catch (...) {
        ec = detail::code_of_current_exception();
        return false;
    }
}

bool Reactor::remove_reader(int fd) {
    return remove_handler(fd, EVENT_READ);
}
bool Reactor::remove_writer(int fd) {
    return remove_handler(fd, EVENT_WRITE);
}

// ----- Callbacks and timers -------------------------------------------------------------

TimerHandle Reactor::call_soon(Callback callback) {
    check_usable("call_soon");
    detail::require_callback(callback, "call_soon");
    return queued_soon(soon_.queue.push(std::move(callback)));
}

TimerHandle Reactor::call_later(Duration delay, Callback callback) {
    // The clock is read now, not at the last iteration, so a timer never
    // fires less than `delay` after this call.
    return call_at(detail::deadline_after(impl_->now(), delay), std::move(callback));
}

TimerHandle Reactor::call_at(TimePoint when, Callback callback) {
    return schedule_timer(when, std::move(callback), Duration::zero(), "call_at");
}

TimerHandle Reactor::call_every(Duration interval, Callback callback) {
    check_usable("call_every");
    if (interval <= Duration::zero()) {
        throw std::invalid_argument("call_every: the interval must be positive");
    }
    return schedule_timer(detail::deadline_after(impl_->now(), interval), std::move(callback), interval, "call_every");
}

// The callback by reference: moving a Callback is an indirect call, paid
// once, into the scheduler.
TimerHandle Reactor::schedule_timer(TimePoint when, Callback&& callback, Duration interval,
                                    std::string_view operation) {
    check_usable(operation);
    detail::require_callback(callback, operation);
    const auto id = impl_->scheduler.add_timer(when, std::move(callback), interval);
    if (impl_->embed_timer_fd >= 0 && !running_) {
        rearm_embedding();
    }
    return {this, timer_token(id), false};
}

Reactor::TimePoint Reactor::time() const {
    return impl_->now();
}

ReactorStats Reactor::stats() const {
    check_thread("stats");
    ReactorStats stats;
    if (closed_) {
        return stats;
    }
    const Impl& impl = *impl_;
    stats.descriptors = impl.descriptor_count;
    stats.readers = impl.reader_count;
    stats.writers = impl.writer_count;
    stats.soon_callbacks = soon_.live;
    stats.timers = impl.scheduler.size();
    for (const Callback& handler : impl.signal_handlers) {
        stats.signal_handlers += handler ? 1U : 0U;
    }
    return stats;
}

ReactorMetrics Reactor::metrics() const noexcept {
    const detail::LoopMetrics& totals = impl_->metrics;
    ReactorMetrics metrics;
    metrics.iterations = totals.iterations.load(std::memory_order_relaxed);
    metrics.callbacks_run = totals.callbacks_run.load(std::memory_order_relaxed);
    metrics.idle_time = Duration{totals.idle_time.load(std::memory_order_relaxed)};
    metrics.timer_lag_last = Duration{totals.timer_lag_last.load(std::memory_order_relaxed)};
    metrics.timer_lag_max = Duration{totals.timer_lag_max.load(std::memory_order_relaxed)};
    metrics.slow_callbacks = totals.slow_callbacks.load(std::memory_order_relaxed);
    return metrics;
}

void Reactor::set_idle_time_measurement(bool on) {
    check_thread("set_idle_time_measurement");
    impl_->measure_idle = on;
    timed_ = debug_ || on;
}

void Reactor::set_slow_callback_threshold(std::optional<Duration> threshold) {
    check_thread("set_slow_callback_threshold");
    debug_ = threshold.has_value();
    timed_ = debug_ || impl_->measure_idle;
    impl_->slow_threshold = threshold.value_or(Duration::zero());
}

std::size_t Reactor::scheduled_count() const {
    check_thread("scheduled_count");
    return closed_ ? 0 : impl_->scheduler.size() + soon_.live;
}

bool TimerHandle::cancel() {
    if (reactor_ == nullptr) {
        return false;
    }
    reactor_->check_thread("TimerHandle::cancel");
    if (reactor_->closed_) {
        return false;
    }
    Reactor::Impl& impl = *reactor_->impl_;
    if (!queued_) {
        return impl.scheduler.cancel(timer_id(id_));
    }
    Callback* queued = reactor_->soon_.queue.find(id_);
    if (queued == nullptr) {
        queued = impl.running_batch.find(id_);
    }
    if (queued == nullptr || !*queued) {
        return false;
    }
    // Destroyed once the entry is empty: the captures' destructors may
    // schedule callbacks, which can grow the queue and move the entry.
    const Callback doomed = std::move(*queued);
    --reactor_->soon_.live;
    return true;
}

bool TimerHandle::reschedule_at(std::chrono::steady_clock::time_point when) {
    if (reactor_ == nullptr) {
        return false;
    }
    reactor_->check_thread("TimerHandle::reschedule_at");
    if (reactor_->closed_ || queued_) {
        return false;
    }
    if (!reactor_->impl_->scheduler.reschedule(timer_id(id_), when)) {
        return false;
    }
    if (reactor_->impl_->embed_timer_fd >= 0 && !reactor_->running_) {
        reactor_->rearm_embedding();
    }
    return true;
}

bool TimerHandle::reschedule_after(std::chrono::steady_clock::duration delay) {
    if (reactor_ == nullptr) {
        return false;
    }
    reactor_->check_thread("TimerHandle::reschedule_after");
    if (reactor_->closed_ || queued_) {
        return false;
    }
    return reschedule_at(detail::deadline_after(reactor_->impl_->now(), delay));
}

bool TimerHandle::pending() const {
    if (reactor_ == nullptr) {
        return false;
    }
    reactor_->check_thread("TimerHandle::pending");
    if (reactor_->closed_) {
        return false;
    }
    const Reactor::Impl& impl = *reactor_->impl_;
    if (!queued_) {
        return impl.scheduler.pending(timer_id(id_));
    }
    const Callback* queued = reactor_->soon_.queue.find(id_);
    if (queued == nullptr) {
        queued = impl.running_batch.find(id_);
    }
    return queued != nullptr && static_cast<bool>(*queued);
}

// ----- Stopping and closing ---------------------------------------------------------------

void Reactor::stop() {
    check_thread("stop");
    stopping_ = true;
}

void Reactor::stop_threadsafe() {
    call_soon_threadsafe([this] { stop(); });
}

void Reactor::close() {
    check_thread("close");
    if (closed_) {
        return;
    }
    if (running_) {
        throw std::logic_error("close: reactor is running; stop() it first");
    }
    Impl& impl = *impl_;
    // In a child forked after the reactor was made, its kernel objects are
    // the parent's too. Everything is then released once the reactor counts
    // as closed, so that whatever the releases remove (a spawned task's
    // pending await, a socket's reader) is forgotten rather than asked of the
    // shared epoll or io_uring instance.
    const bool inherited = forked_away();
    if (debug_) {
        report_still_registered();
    }
    if (!inherited) {
        // Spawned tasks' frames go first, while the reactor still works:
        // their pending awaits remove their registrations.
        notify_close_hooks(early_hooks_);
    }
    for (int signo = 1; signo < detail::signal_limit; ++signo) {
        remove_signal_handler(signo);
    }
    std::vector<Callback> never_run;
    {
        // In a child no thread can be inside call_soon_threadsafe() (it
        // refuses there), but a parent's thread may have held the lock at
        // the fork, and that thread does not exist here to release it.
        std::unique_lock lock{impl.incoming_mutex, std::defer_lock};
        if (inherited) {
            (void)lock.try_lock();
        } else {
            lock.lock();
        }
        impl.incoming_closed = true;
        if (lock.owns_lock()) {
            ++impl.incoming_takes;
            never_run.swap(impl.incoming);
        }
    }
    impl.signal_wake_fd.store(-1, std::memory_order_release);
    while (!inherited && (impl.wakers.load(std::memory_order_acquire) != 0 ||
                          impl.signal_wakers.load(std::memory_order_acquire) != 0)) {
        std::this_thread::yield();  // a call_soon_threadsafe() or wakeup_from_signal() is still writing to wake_fd
    }
    // Destroyed outside the lock: a capture's destructor may call
    // call_soon_threadsafe() and get its logic_error instead of a deadlock.
    never_run.clear();
    closed_ = true;
    if (inherited) {
        notify_close_hooks(early_hooks_);
    }
    // Sockets, watches and awaits still bound to the reactor forget it: a
    // socket destroyed later only closes its descriptor.
    notify_close_hooks(late_hooks_);
    // Destroying the keys destroys the fd callbacks; a destructor among them
    // that calls remove_reader() sees a closed reactor and gets false.
    if (inherited) {
        impl.selector->abandon();
    } else {
        impl.selector->close();
    }
    impl.scheduler.clear();
    impl.descriptor_count = 0;
    impl.reader_count = 0;
    impl.writer_count = 0;
    soon_.queue.clear();
    impl.running_batch.clear();
    soon_.live = 0;
    embedded_ = false;
    impl.due.clear();
    impl.incoming_spare.clear();
    // The child's own copies: closing them leaves the parent's open.
    for (int* fd : {&impl.wake_fd, &impl.embed_timer_fd}) {
        if (*fd >= 0) {
            ::close(*fd);
            *fd = -1;
        }
    }
    // Whatever hooked itself on while the above destroyed callbacks.
    notify_close_hooks(late_hooks_);
}

void Reactor::notify_close_hooks(detail::CloseHook& sentinel) noexcept {
    // The first hook each time: a notification may unhook others (a frame
    // destroyed takes its sockets' watches with it).
    while (sentinel.next_ != &sentinel) {
        detail::CloseHook& hook = *sentinel.next_;
        hook.unhook();
        hook.notify_(hook);
    }
}

void Reactor::set_exception_handler(ExceptionHandler handler) {
    check_thread("set_exception_handler");
    if (!handler) {
        impl_->exception_handler = detail::default_exception_handler;
        return;
    }
    impl_->exception_handler = [handler = std::move(handler)](std::exception_ptr error, const CallbackOrigin&) {
        handler(std::move(error));
    };
}

void Reactor::set_exception_handler(OriginExceptionHandler handler) {
    check_thread("set_exception_handler");
    impl_->exception_handler = handler ? std::move(handler) : OriginExceptionHandler{detail::default_exception_handler};
}

void Reactor::report_still_registered() const noexcept {
    try {
        const Impl& impl = *impl_;
        for (const auto& key : impl.selector->get_map()) {
            if (key.fd == impl.wake_fd || key.fd == impl.embed_timer_fd) {
                continue;
            }
            const char* sides = key.events == (EVENT_READ | EVENT_WRITE) ? "a reader and a writer"
                                : key.events.contains(EVENT_READ)        ? "a reader"
                                                                         : "a writer";
            logger().warn("reactor: close: fd {} still has {}", key.fd, sides);
        }
        if (const std::size_t timers = impl.scheduler.size(); timers != 0) {
            logger().warn("reactor: close: {} timer(s) still scheduled", timers);
        }
        if (soon_.live != 0) {
            logger().warn("reactor: close: {} call_soon callback(s) still queued", soon_.live);
        }
    } catch (...) {
        // Logging only: close() goes on whatever happens here.
    }
}

std::string_view Reactor::selector_name() const noexcept {
    return impl_->selector->name();
}

}  // namespace muxio
