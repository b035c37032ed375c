// Task<T>: the lazy, move-only coroutine type every muxio coroutine returns.
#pragma once

#include <coroutine>
#include <exception>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <type_traits>
#include <utility>

#include "muxio/detail/resume_loop.hpp"

namespace muxio {

template <class T = void>
class Task;

namespace detail {

struct TaskAccess;
class PromiseBase;

// Ties a suspended `co_await task` (it lives in the awaiting frame) to the
// task it awaits. Whichever goes first unties the two: a task that ends or
// is destroyed leaves the awaiter alone, and an awaiting frame destroyed
// while suspended leaves the task with nobody to resume, so neither ever
// reaches into the other's freed frame.
class AwaitLink {
public:
    AwaitLink() noexcept = default;
    AwaitLink(const AwaitLink&) = delete;
    AwaitLink& operator=(const AwaitLink&) = delete;
    AwaitLink(AwaitLink&&) = delete;
    AwaitLink& operator=(AwaitLink&&) = delete;
    inline ~AwaitLink();

private:
    friend class PromiseBase;
    PromiseBase* task_ = nullptr;
};

// What every Task promise has, whatever it returns: who awaits it, how it
// ended, and the stop token its awaits listen to.
class PromiseBase {
public:
    PromiseBase() noexcept = default;
    PromiseBase(const PromiseBase&) = delete;
    PromiseBase& operator=(const PromiseBase&) = delete;
    PromiseBase(PromiseBase&&) = delete;
    PromiseBase& operator=(PromiseBase&&) = delete;
    ~PromiseBase() { untie(); }

    // Lazy: nothing runs until the task is awaited or started.
    std::suspend_always initial_suspend() noexcept { return {}; }

    // The awaiter goes on through the loop that runs this task (see
    // ResumeLoop), not by a nested resume(): a chain of tasks that end at
    // once uses no stack, whatever the optimiser does.
    struct FinalAwaiter {
        bool await_ready() noexcept { return false; }
        template <class Promise>
        void await_suspend(std::coroutine_handle<Promise> self) noexcept {
            PromiseBase& promise = self.promise();
            promise.untie();
            if (const std::coroutine_handle<> next = std::exchange(promise.continuation_, {})) {
                ResumeLoop::transfer(self, next);
            }
        }
        void await_resume() noexcept {}
    };
    FinalAwaiter final_suspend() noexcept { return {}; }

    void unhandled_exception() noexcept { error_ = std::current_exception(); }

    /// The token the awaits of this task listen to (see Task).
    [[nodiscard]] const std::stop_token& get_stop_token() const noexcept { return stop_token_; }

    /// Rethrows the exception the task ended with, if any.
    void rethrow_if_failed() const {
        if (error_) {
            std::rethrow_exception(error_);
        }
    }

private:
    friend struct TaskAccess;
    friend class AwaitLink;
    template <class>
    friend class muxio::Task;

    // `awaiter`, suspended in a `co_await` that holds `link`, resumes at the end.
    void tie(AwaitLink& link, std::coroutine_handle<> awaiter) noexcept {
        continuation_ = awaiter;
        awaiter_ = &link;
        link.task_ = this;
    }
    void untie() noexcept {
        if (awaiter_ != nullptr) {
            awaiter_->task_ = nullptr;
            awaiter_ = nullptr;
        }
    }

    std::coroutine_handle<> continuation_;  // none: a task resumed by hand
    AwaitLink* awaiter_ = nullptr;          // the co_await resuming continuation_, if any
    std::exception_ptr error_;
    std::stop_token stop_token_;
    bool stop_token_set_ = false;  // set explicitly: awaiting does not replace it
};

AwaitLink::~AwaitLink() {
    if (task_ != nullptr) {
        // The awaiting frame goes first: the task ends with nobody to resume.
        task_->awaiter_ = nullptr;
        task_->continuation_ = {};
    }
}

template <class T>
class Promise final : public PromiseBase {
public:
    Task<T> get_return_object() noexcept;
    template <class U = T>
    requires std::is_convertible_v<U&&, T>
    void return_value(U&& value) noexcept(std::is_nothrow_constructible_v<T, U&&>) {
        value_.emplace(std::forward<U>(value));
    }
    T take() {
        rethrow_if_failed();
        return std::move(*value_);
    }

private:
    std::optional<T> value_;
};

template <>
class Promise<void> final : public PromiseBase {
public:
    Task<void> get_return_object() noexcept;
    void return_void() noexcept {}
    void take() const { rethrow_if_failed(); }
};

// Reads the ambient stop token of the coroutine behind `handle`: the Task's
// token, or an empty one for another coroutine type.
template <class Promise>
std::stop_token ambient_stop_token(std::coroutine_handle<Promise> handle) noexcept {
    if constexpr (requires { handle.promise().get_stop_token(); }) {
        return handle.promise().get_stop_token();
    } else {
        return {};
    }
}

}  // namespace detail

/// A lazy coroutine producing a T (or nothing, for Task<void>).
///
/// Created suspended; its body runs when it is awaited (`co_await
/// std::move(task)` or `co_await task`), spawned, or given to
/// run_until_complete(). Awaiting resumes the awaiter when the task ends
/// (at once, without suspending, if it ended before its first suspension),
/// and returns its value or rethrows its exception. A task can be awaited
/// once. Move-only; destroying a Task destroys its coroutine frame, whether
/// it never started or is suspended, and with it everything the frame holds
/// (a pending await's registration included).
///
/// Exit paths: a task awaiting another may be destroyed while suspended,
/// and the awaited task then ends with nobody to resume. A task destroyed
/// while another awaits it (`co_await task` of a Task held elsewhere)
/// leaves that awaiter suspended for good; destroying it is safe.
///
/// Cancellation: every task has a std::stop_token, its *ambient* token. A
/// task awaited by another inherits the awaiter's token unless it was given
/// one (spawn(), run_until_complete(), with_timeout() and the combinators do
/// that). Every muxio awaitable listens to the ambient token of the task that
/// awaits it, besides any token passed to it, and throws muxio::Cancelled when
/// one is stopped.
///
/// Stack: awaiting a task, and a task's end resuming its awaiter, go
/// through a loop on the resuming thread rather than a nested call (see
/// detail::ResumeLoop), so any chain of awaits runs in constant stack: a
/// loop of a million awaits of tasks that end at once, a million tasks each
/// awaiting the next, a loop over a socket operation that is always ready.
/// This holds at every optimisation level, -O0 and the sanitizers included,
/// and asks nothing of the compiler (no tail calls, no flags).
///
/// T must not be a reference.
template <class T>
class [[nodiscard]] Task {
    static_assert(!std::is_reference_v<T>, "Task<T&> is not supported; return a pointer");

public:
    using promise_type = detail::Promise<T>;             ///< For the compiler's coroutine machinery.
    using Handle = std::coroutine_handle<promise_type>;  ///< The coroutine a Task owns.

    /// An empty task (valid() is false), to assign to later.
    Task() noexcept = default;
    /// Takes the coroutine; `other` ends empty.
    Task(Task&& other) noexcept : handle_{std::exchange(other.handle_, {})} {}
    /// Destroys the coroutine held (as the destructor does), then takes `other`'s.
    Task& operator=(Task&& other) noexcept {
        if (this != &other) {
            reset();
            handle_ = std::exchange(other.handle_, {});
        }
        return *this;
    }
    Task(const Task&) = delete;
    Task& operator=(const Task&) = delete;
    ~Task() { reset(); }

    /// True if the task holds a coroutine (not default-constructed or moved from).
    [[nodiscard]] bool valid() const noexcept { return static_cast<bool>(handle_); }
    /// True once the coroutine has finished (returned or thrown).
    [[nodiscard]] bool done() const noexcept { return handle_ && handle_.done(); }

    /// Awaits the task: starts it, and returns its value or rethrows its
    /// exception when it ends. std::logic_error for an empty task.
    auto operator co_await() & noexcept { return Awaiter{handle_, {}}; }
    /// The same for a temporary, `co_await std::move(task)` or `co_await make()`:
    /// the Task must live until the await ends, as a temporary in the
    /// co_await expression does.
    auto operator co_await() && noexcept { return Awaiter{handle_, {}}; }

private:
    friend class detail::Promise<T>;
    friend struct detail::TaskAccess;

    explicit Task(Handle handle) noexcept : handle_{handle} {}

    void reset() noexcept {
        if (handle_) {
            std::exchange(handle_, {}).destroy();
        }
    }

    struct Awaiter {
        Handle handle;
        detail::AwaitLink link;

        [[nodiscard]] bool await_ready() const noexcept { return !handle || handle.done(); }
        template <class Promise>
        bool await_suspend(std::coroutine_handle<Promise> awaiter) noexcept {
            promise_type& promise = handle.promise();
            promise.tie(link, awaiter);
            if (!promise.stop_token_set_) {
                promise.stop_token_ = detail::ambient_stop_token(awaiter);
            }
            return detail::ResumeLoop::start(awaiter, handle);
        }
        T await_resume() {
            if (!handle) {
                throw std::logic_error("co_await on an empty Task");
            }
            return handle.promise().take();
        }
    };

    Handle handle_;
};

namespace detail {

template <class T>
Task<T> Promise<T>::get_return_object() noexcept {
    return Task<T>{std::coroutine_handle<Promise>::from_promise(*this)};
}

inline Task<void> Promise<void>::get_return_object() noexcept {
    return Task<void>{std::coroutine_handle<Promise>::from_promise(*this)};
}

template <class A>
inline constexpr bool is_task_v = false;
template <class T>
inline constexpr bool is_task_v<Task<T>> = true;

// An awaitable that becomes a Task on request (a socket's StreamOperation):
// spawn(), run_until_complete() and the combinators take it where they take
// a Task.
template <class A>
concept TaskConvertible = !is_task_v<std::remove_cvref_t<A>> && requires {
    typename std::remove_cvref_t<A>::task_type;
}
&&std::is_convertible_v<A&&, typename std::remove_cvref_t<A>::task_type>;

template <class A>
concept TaskOrConvertible = is_task_v<std::remove_cvref_t<A>> || TaskConvertible<A>;

// The Task a combinator's argument stands for.
template <class T>
Task<T> into_task(Task<T>&& task) noexcept {
    return std::move(task);
}
template <TaskConvertible A>
typename std::remove_cvref_t<A>::task_type into_task(A&& awaitable) {
    return std::forward<A>(awaitable);
}

// For muxio's own drivers (spawn, run_until_complete, combinators): set the
// token, start the coroutine with a chosen continuation, take the result.
struct TaskAccess {
    template <class T>
    static void set_stop_token(Task<T>& task, std::stop_token token) noexcept {
        auto& promise = task.handle_.promise();
        promise.stop_token_ = std::move(token);
        promise.stop_token_set_ = true;
    }
    template <class Promise>
    static void set_continuation(std::coroutine_handle<Promise> task, std::coroutine_handle<> awaiter) noexcept {
        task.promise().continuation_ = awaiter;
    }
    template <class T>
    static typename Task<T>::Handle handle(Task<T>& task) noexcept {
        return task.handle_;
    }
};

// Awaits a task's end without taking its result.
template <class T>
struct Completion {
    typename Task<T>::Handle task;
    [[nodiscard]] bool await_ready() const noexcept { return task.done(); }
    bool await_suspend(std::coroutine_handle<> awaiter) noexcept {
        TaskAccess::set_continuation(task, awaiter);
        return ResumeLoop::start(awaiter, task);
    }
    void await_resume() const noexcept {}
};

// The Task's result, value or exception, once it is done.
template <class T>
T take_result(Task<T>& task) {
    return TaskAccess::handle(task).promise().take();
}

}  // namespace detail

}  // namespace muxio
