// Wakeups of the reactor from other threads and from signal handlers: the
// eventfd every one of them writes, and the queue call_soon_threadsafe() fills.
#include "muxio/reactor.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <utility>

#include "muxio/error.hpp"
#include "reactor/reactor_impl.hpp"

namespace muxio {

namespace detail {

namespace {

// The errno a test makes this call fail with, or 0 (see wakeup_fault.hpp).
int injected_fault(WakeupCall call, int fd) noexcept {
    const WakeupFault fault = wakeup_fault.load(std::memory_order_relaxed);
    return fault == nullptr ? 0 : fault(call, fd);
}

}  // namespace

std::atomic<std::uint64_t> missed_wakeups{0};

namespace {

// One eventfd read or write (`transfer`), a test's injected fault first,
// retried after a signal. 0 once it went through or would block (EAGAIN: a
// full counter is readable already, an empty one has nothing to drain),
// else the errno value. Async-signal-safe.
template <class Transfer>
int eventfd_call(int fd, WakeupCall call, Transfer transfer) noexcept {
    for (;;) {
        int error = injected_fault(call, fd);
        if (error == 0) {
            if (transfer() >= 0) {
                return 0;
            }
            error = errno;
        }
        if (error == EAGAIN) {
            return 0;
        }
        if (error != EINTR) {
            return error;
        }
    }
}

}  // namespace

int write_wakeup(int fd, WakeupCall call) noexcept {
    const std::uint64_t one = 1;
    return eventfd_call(fd, call, [&] { return ::write(fd, &one, sizeof one); });
}

int drain_wakeup(int fd, WakeupCall call) noexcept {
    std::uint64_t count = 0;
    return eventfd_call(fd, call, [&] { return ::read(fd, &count, sizeof count); });
}

void refuse_drain(int error, int fd) {
    throw_system_error(error, "run: read of the reactor's own wakeup descriptor", fd);
}

}  // namespace detail

// ----- Thread-safe wakeups ------------------------------------------------------------------

void Reactor::call_soon_threadsafe(Callback callback) {
    if (forked_away()) [[unlikely]] {
        refuse_in_child("call_soon_threadsafe");  // its eventfd is the parent's too
    }
    detail::require_callback(callback, "call_soon_threadsafe");
    Impl& impl = *impl_;
    int wake_fd = -1;
    std::size_t position = 0;
    std::uint64_t takes = 0;
    {
        std::lock_guard lock{impl.incoming_mutex};
        if (impl.incoming_closed) {
            throw std::logic_error("call_soon_threadsafe: reactor is closed");
        }
        impl.incoming.push_back(std::move(callback));
        if (!impl.wake_pending) {
            impl.wake_pending = true;
            wake_fd = impl.wake_fd;
            // Where this callback is until the loop takes the queue, in case
            // the write fails and it must come out again.
            position = impl.incoming.size() - 1;
            takes = impl.incoming_takes;
            // Counted under the lock: close() waits for this write before it
            // closes the descriptor.
            impl.wakers.fetch_add(1, std::memory_order_relaxed);
        }
    }
    // Written outside the lock, so the woken loop does not find it held.
    if (wake_fd >= 0) {
        if (const int error = detail::write_wakeup(wake_fd, detail::WakeupCall::threadsafe_write); error != 0)
            [[unlikely]] {
            wakeup_failed(error, wake_fd, position, takes);
        }
        impl.wakers.fetch_sub(1, std::memory_order_release);
    }
}

void Reactor::wakeup_from_signal() const noexcept {
    const int saved_errno = errno;
    // A child forked after the reactor was made shares its eventfd with the
    // parent: a write there would wake the parent's loop.
    if (!forked_away()) {
        Impl& impl = *impl_;
        impl.signal_wakers.fetch_add(1, std::memory_order_acq_rel);
        if (const int fd = impl.signal_wake_fd.load(std::memory_order_acquire); fd >= 0) {
            if (detail::write_wakeup(fd, detail::WakeupCall::signal_write) != 0) {
                // The loop's next iteration takes its wakeups whatever ends
                // its wait: late, not lost.
                detail::missed_wakeups.fetch_add(1, std::memory_order_relaxed);
            }
        }
        impl.signal_wakers.fetch_sub(1, std::memory_order_release);
    }
    errno = saved_errno;
}

void Reactor::wakeup_failed(int error, int wake_fd, std::size_t position, std::uint64_t takes) {
    Impl& impl = *impl_;
    Callback refused;
    bool others_waiting = false;
    {
        std::lock_guard lock{impl.incoming_mutex};
        // Nothing was written: the next call must write again.
        impl.wake_pending = false;
        // Unless the loop (or close()) took the queue meanwhile, the callback
        // is where it was put: it comes out, so that the error means it will
        // not run.
        if (impl.incoming_takes == takes) {
            refused = std::move(impl.incoming[position]);
            impl.incoming.erase(impl.incoming.begin() + static_cast<std::ptrdiff_t>(position));
        }
        others_waiting = !impl.incoming.empty();
    }
    if (others_waiting) {
        // Calls since this one did not write, counting on this write.
        detail::missed_wakeups.fetch_add(1, std::memory_order_relaxed);
    }
    if (refused) {
        refused = nullptr;  // its captures are destroyed here, on the caller's thread
        impl.wakers.fetch_sub(1, std::memory_order_release);
        throw_system_error(error, "call_soon_threadsafe: write to the reactor's eventfd", wake_fd);
    }
    // Taken by the loop, which runs it (or by close(), which drops it):
    // the write was not needed.
}

void Reactor::drain_wakeups() {
    Impl& impl = *impl_;
    if (const int error = detail::drain_wakeup(impl.wake_fd, detail::WakeupCall::drain_read); error != 0) [[unlikely]] {
        detail::refuse_drain(error, impl.wake_fd);
    }
    take_wakeups();
}

void Reactor::take_wakeups() {
    Impl& impl = *impl_;
    {
        std::lock_guard lock{impl.incoming_mutex};
        if (impl.incoming_spare.empty()) [[likely]] {
            impl.incoming.swap(impl.incoming_spare);
        } else {
            // Taken twice in one iteration (a missed wakeup besides a
            // drained one): appended after the batch taken first.
            impl.incoming_spare.reserve(impl.incoming_spare.size() + impl.incoming.size());
            std::move(impl.incoming.begin(), impl.incoming.end(), std::back_inserter(impl.incoming_spare));
            impl.incoming.clear();
        }
        // Cleared while taking the queue: a callback added after this point
        // writes a new wakeup, so none is left behind without one.
        impl.wake_pending = false;
        ++impl.incoming_takes;
    }
    // The batch runs in place in this iteration (run_iteration step 4):
    // these callbacks have no handle to cancel them.
    for (int signo = 1; signo < detail::signal_limit; ++signo) {
        if (!impl.signal_handlers[static_cast<std::size_t>(signo)]) {
            continue;
        }
        if (detail::signal_routes[static_cast<std::size_t>(signo)].pending.exchange(false, std::memory_order_acq_rel)) {
            queued_soon(soon_.queue.emplace([this, signo] { run_signal_handler(signo); }));
        }
    }
}

}  // namespace muxio
