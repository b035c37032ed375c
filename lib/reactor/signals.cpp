// Signals delivered to the reactor: a handler that only records the signal
// and wakes the owning reactor, whose loop then runs the user's callback.
#include "muxio/reactor.hpp"

#include <cerrno>
#include <csignal>
#include <mutex>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>

#include "muxio/error.hpp"
#include "reactor/reactor_impl.hpp"

namespace muxio {

std::array<detail::SignalRoute, detail::signal_limit> detail::signal_routes;
std::mutex detail::signal_owners_mutex;

namespace {

extern "C" void muxio_on_signal(int signo) {
    const int saved_errno = errno;
    detail::SignalRoute& route = detail::signal_routes[static_cast<std::size_t>(signo)];
    route.pending.store(true, std::memory_order_release);
    if (const int fd = route.wake_fd.load(std::memory_order_acquire); fd >= 0) {
        if (detail::write_wakeup(fd, detail::WakeupCall::signal_write) != 0) {
            // Nothing to report to from here. `pending` stays set, and the
            // loop's next iteration, whatever wakes it, runs the handler.
            detail::missed_wakeups.fetch_add(1, std::memory_order_relaxed);
        }
    }
    errno = saved_errno;
}

}  // namespace

// ----- Signals ----------------------------------------------------------------------------------

void Reactor::add_signal_handler(int signo, Callback callback) {
    check_usable("add_signal_handler");
    detail::require_callback(callback, "add_signal_handler");
    if (signo <= 0 || signo >= detail::signal_limit || signo == SIGKILL || signo == SIGSTOP) {
        throw std::invalid_argument(fmt::format("invalid signal number: {}", signo));
    }
    Impl& impl = *impl_;
    const auto index = static_cast<std::size_t>(signo);
    std::unique_lock lock{detail::signal_owners_mutex};
    detail::SignalRoute& route = detail::signal_routes[index];
    if (route.owner != nullptr && route.owner != this) {
        throw std::logic_error(fmt::format("add_signal_handler: signal {} is handled by another reactor", signo));
    }
    if (!impl.previous_actions[index]) {
        struct sigaction action {};
        action.sa_handler = muxio_on_signal;
        sigemptyset(&action.sa_mask);
        // SA_RESTART: other threads' blocking calls are not disturbed; this
        // loop is woken by the descriptor write, not by EINTR.
        action.sa_flags = SA_RESTART;
        struct sigaction previous {};
        route.pending.store(false);
        route.wake_fd.store(impl.wake_fd, std::memory_order_release);
        if (::sigaction(signo, &action, &previous) == -1) {
            route.wake_fd.store(-1);
            throw_system_error(errno, fmt::format("sigaction({})", signo));
        }
        impl.previous_actions[index] = previous;
        route.owner = this;
    }
    // The replaced handler dies after the lock is released (its captures'
    // destructors may add or remove signal handlers).
    Callback replaced = std::exchange(impl.signal_handlers[index], std::move(callback));
    lock.unlock();
}

bool Reactor::remove_signal_handler(int signo) {
    check_thread("remove_signal_handler");
    if (signo <= 0 || signo >= detail::signal_limit || closed_) {
        return false;
    }
    Impl& impl = *impl_;
    const auto index = static_cast<std::size_t>(signo);
    if (!impl.previous_actions[index]) {
        return false;
    }
    // Declared before the lock so the handler dies after it is released.
    const Callback removed = std::move(impl.signal_handlers[index]);
    std::lock_guard lock{detail::signal_owners_mutex};
    ::sigaction(signo, &*impl.previous_actions[index], nullptr);
    impl.previous_actions[index].reset();
    detail::SignalRoute& route = detail::signal_routes[index];
    route.wake_fd.store(-1, std::memory_order_release);
    route.pending.store(false);
    route.owner = nullptr;
    return true;
}

void Reactor::run_signal_handler(int signo) {
    Callback& slot = impl_->signal_handlers[static_cast<std::size_t>(signo)];
    if (!slot) {
        return;
    }
    // Same precaution as for fd callbacks: the handler may remove itself.
    Callback running = std::move(slot);
    impl_->running_signal = signo;
    invoke<true>(running, CallbackKind::signal);  // debug mode decided at run time: not the loop
    if (!slot && impl_->previous_actions[static_cast<std::size_t>(signo)]) {
        slot = std::move(running);
    }
}

}  // namespace muxio
