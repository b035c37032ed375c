// Running tasks on a Reactor: spawn() (detached) and run_until_complete().
#pragma once

#include <coroutine>
#include <exception>
#include <stdexcept>
#include <stop_token>
#include <utility>

#include "muxio/detail/resume_loop.hpp"
#include "muxio/reactor.hpp"
#include "muxio/task.hpp"

namespace muxio {

namespace detail {

// A minimal coroutine that awaits one Task for muxio's own plumbing. Created
// suspended; a detached driver frees itself when it ends, an owned one waits
// at its end for its Driver to destroy it.
class Driver {
public:
    // Once a detached driver starts, its promise is hooked onto the reactor,
    // which destroys the frame at close() if the task has not ended; the
    // hook unhooks itself when the frame is destroyed, whoever destroys it.
    struct promise_type : CloseHook {
        bool detached = false;

        promise_type() = default;
        promise_type(const promise_type&) = delete;
        promise_type& operator=(const promise_type&) = delete;
        ~promise_type() = default;

        static void destroy_frame(CloseHook& hook) noexcept {
            std::coroutine_handle<promise_type>::from_promise(static_cast<promise_type&>(hook)).destroy();
        }

        Driver get_return_object() noexcept { return Driver{std::coroutine_handle<promise_type>::from_promise(*this)}; }
        std::suspend_always initial_suspend() noexcept { return {}; }
        auto final_suspend() noexcept {
            struct Final {
                bool detached;
                // Ready: the coroutine runs off its end and its frame is freed.
                [[nodiscard]] bool await_ready() const noexcept { return detached; }
                void await_suspend(std::coroutine_handle<>) const noexcept {}
                void await_resume() const noexcept {}
            };
            return Final{detached};
        }
        void return_void() noexcept {}
        // The driver bodies catch everything they await.
        void unhandled_exception() noexcept { std::terminate(); }
    };

    Driver(Driver&& other) noexcept : handle_{std::exchange(other.handle_, {})} {}
    Driver& operator=(Driver&&) = delete;
    Driver(const Driver&) = delete;
    Driver& operator=(const Driver&) = delete;
    ~Driver() {
        if (handle_) {
            handle_.destroy();
        }
    }

    void start() { ResumeLoop::run(handle_); }
    /// Hands the frame to itself: it is freed when the coroutine ends, or
    /// by `reactor`'s close() if it has not ended by then.
    [[nodiscard]] std::coroutine_handle<promise_type> detach(Reactor& reactor) noexcept {
        promise_type& promise = handle_.promise();
        promise.detached = true;
        promise.hook(reactor, CloseHook::Phase::early, &promise_type::destroy_frame);
        return std::exchange(handle_, {});
    }

private:
    explicit Driver(std::coroutine_handle<promise_type> handle) noexcept : handle_{handle} {}
    std::coroutine_handle<promise_type> handle_;
};

template <class T>
Driver drive_detached(Reactor& reactor, Task<T> task) {
    try {
        (void)co_await std::move(task);
    } catch (...) {
        // Delivered through a callback so the reactor's exception handler gets it.
        reactor.call_soon([error = std::current_exception()] { std::rethrow_exception(error); });
    }
}

// Starts a detached driver in the next iteration; destroys it unstarted if
// the reactor is closed first.
class StartDriver {
public:
    StartDriver(Reactor& reactor, Driver driver) noexcept : reactor_{&reactor}, driver_{std::move(driver)} {}
    StartDriver(StartDriver&&) noexcept = default;
    StartDriver& operator=(StartDriver&&) = delete;
    StartDriver(const StartDriver&) = delete;
    StartDriver& operator=(const StartDriver&) = delete;
    ~StartDriver() = default;
    void operator()() { ResumeLoop::run(driver_.detach(*reactor_)); }

private:
    Reactor* reactor_;
    Driver driver_;
};

}  // namespace detail

/// Runs `task` detached on `reactor`, asyncio's create_task without the
/// handle: it starts in the next iteration and runs until it ends. Its value
/// is discarded; an exception escaping it goes to the reactor's exception
/// handler (Reactor::set_exception_handler), in the iteration after.
///
/// `token` becomes the task's ambient stop token (see Task): stopping it
/// cancels the await pending in the task. A task that has not ended when
/// the reactor closes is destroyed by close(), before anything else is
/// released: its pending await removes its registration or timer, and the
/// destructors of its locals run, as when a suspended Task is destroyed. (In
/// a forked child close() destroys it once the reactor counts as closed:
/// what it removes is forgotten, never asked of the parent's kernel objects.)
///
/// A task that is not spawned (held by its owner, or awaited by one that
/// is) may outlive its reactor: the reactor's close() detaches its pending
/// await, which then never resumes and no longer refers to the reactor, so
/// destroying the task later, even after the reactor is gone, is safe.
///
/// std::logic_error for an empty task or a closed reactor.
template <class T>
void spawn(Reactor& reactor, Task<T> task, std::stop_token token = {}) {
    if (!task.valid()) {
        throw std::logic_error("spawn: empty Task");
    }
    detail::TaskAccess::set_stop_token(task, std::move(token));
    reactor.call_soon(detail::StartDriver{reactor, detail::drive_detached(reactor, std::move(task))});
}

/// spawn() of a socket operation (see StreamOperation), made a Task.
template <detail::TaskConvertible A>
void spawn(Reactor& reactor, A&& operation, std::stop_token token = {}) {
    spawn(reactor, detail::into_task(std::forward<A>(operation)), std::move(token));
}

/// Runs `reactor` until `task` ends, and returns its value or rethrows its
/// exception (asyncio's run_until_complete). `token` becomes the task's
/// ambient stop token. The task starts in the first iteration; other
/// callbacks and spawned tasks run alongside it.
///
/// std::logic_error for an empty task, a reactor that is running or closed,
/// or one stopped (Reactor::stop) before the task ended; the task is then
/// destroyed, its pending await cancelled without resuming. What
/// Reactor::run() throws.
template <class T>
T run_until_complete(Reactor& reactor, Task<T> task, std::stop_token token = {}) {
    if (!task.valid()) {
        throw std::logic_error("run_until_complete: empty Task");
    }
    detail::TaskAccess::set_stop_token(task, std::move(token));
    bool finished = false;
    auto driver = [](Reactor& loop, typename Task<T>::Handle handle, bool& done) -> detail::Driver {
        co_await detail::Completion<T>{handle};
        done = true;
        loop.stop();
    }(reactor, detail::TaskAccess::handle(task), finished);
    // Started from a callback, so even the task's synchronous part runs in
    // the loop, and a task that never suspends still stops it.
    auto* start = &driver;
    const TimerHandle first = reactor.call_soon([start] { start->start(); });
    try {
        reactor.run();
    } catch (...) {
        TimerHandle{first}.cancel();
        throw;
    }
    if (!finished) {
        TimerHandle{first}.cancel();
        throw std::logic_error("run_until_complete: the reactor stopped before the task ended");
    }
    return detail::take_result(task);
}

/// run_until_complete() of a socket operation (see StreamOperation), made a Task.
template <detail::TaskConvertible A>
auto run_until_complete(Reactor& reactor, A&& operation, std::stop_token token = {}) {
    return run_until_complete(reactor, detail::into_task(std::forward<A>(operation)), std::move(token));
}

}  // namespace muxio
