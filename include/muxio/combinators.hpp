// Combining tasks and awaitables: with_timeout(), when_all(), when_any(),
// and the joining machinery TaskGroup shares.
#pragma once

#include <chrono>
#include <concepts>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <functional>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

#include "muxio/awaitables.hpp"
#include "muxio/detail/resume_loop.hpp"
#include "muxio/error.hpp"
#include "muxio/reactor.hpp"
#include "muxio/task.hpp"

namespace muxio {

namespace detail {

template <class A>
concept HasMemberCoAwait = requires(A&& awaitable) {
    static_cast<A&&>(awaitable).operator co_await();
};
template <class A>
concept HasFreeCoAwait = requires(A&& awaitable) {
    operator co_await(static_cast<A&&>(awaitable));
};

// The awaiter `co_await expr` uses, for an expression of type A (A&& an
// rvalue, A& an lvalue): what operator co_await returns, or the object itself.
template <class A>
struct AwaiterOf {
    using type = A;
};
template <HasMemberCoAwait A>
struct AwaiterOf<A> {
    using type = decltype(std::declval<A>().operator co_await());
};
template <class A>
requires(!HasMemberCoAwait<A> && HasFreeCoAwait<A>) struct AwaiterOf<A> {
    using type = decltype(operator co_await(std::declval<A>()));
};
template <class A>
using awaiter_t = std::remove_reference_t<typename AwaiterOf<A&&>::type>;

template <class H>
concept AwaitSuspendResult =
    std::same_as<H, void> || std::same_as<H, bool> || std::convertible_to<H, std::coroutine_handle<>>;

template <class W>
concept Awaiter = requires(W& awaiter, std::coroutine_handle<Promise<void>> handle) {
    { awaiter.await_ready() } -> std::convertible_to<bool>;
    { awaiter.await_suspend(handle) } -> AwaitSuspendResult;
    awaiter.await_resume();
};

}  // namespace detail

/// What `co_await` accepts inside a muxio Task: an awaiter (await_ready(),
/// await_suspend(handle), await_resume()) or an object whose operator
/// co_await, member or free, returns one. A is the argument's type as a
/// forwarding reference sees it (an rvalue `T`/`T&&` or an lvalue `T&`).
template <class A>
concept Awaitable = detail::Awaiter<detail::awaiter_t<A>>;

/// What `co_await` of an A returns (await_resume()'s type, references kept).
template <class A>
requires Awaitable<A>
using await_result_t = decltype(std::declval<detail::awaiter_t<A>&>().await_resume());

/// Customisation point: true for an awaitable type whose pending await ends
/// promptly (most often with muxio::Cancelled) once the ambient stop token of
/// the awaiting task is stopped. muxio's own awaitables (readable(),
/// writable(), sleep_for(), sleep_until(), yield(), get_stop_token()) are;
/// Task and socket operations count as such wherever they are taken.
///
/// A user's awaitable becomes stop-aware by reading the token in a templated
/// `await_suspend(std::coroutine_handle<P> handle)` through
/// `handle.promise().get_stop_token()`, resuming (on the loop's thread) when
/// it is stopped, and then declaring it:
///
///     template <> inline constexpr bool muxio::enable_stop_aware<MyAwaitable> = true;
///
/// What the combinators do with one that is not is said at with_timeout().
template <class A>
inline constexpr bool enable_stop_aware = false;

/// readable(), writable(), sleep_for(), sleep_until() and yield() listen to the stop token.
template <>
inline constexpr bool enable_stop_aware<detail::ReactorWait> = true;
/// get_stop_token() never suspends.
template <>
inline constexpr bool enable_stop_aware<detail::StopTokenAwaiter> = true;

namespace detail {

// Logs, once per await, that a combinator stopped an awaitable which is not
// declared stop-aware, and therefore waits for it to end.
void warn_stop_not_heard(const char* combinator) noexcept;

struct WarnStopNotHeard {
    const char* combinator;
    void operator()() const noexcept { warn_stop_not_heard(combinator); }
};

// What a Task made of an awaitable returns: a value as it is, an lvalue
// reference as a std::reference_wrapper (Task<T&> does not exist), an
// rvalue reference as the value it refers to, moved.
template <class R>
struct TaskValue {
    using type = std::remove_cv_t<R>;
};
template <class R>
struct TaskValue<R&> {
    using type = std::reference_wrapper<R>;
};
template <class R>
struct TaskValue<R&&> {
    using type = std::remove_cv_t<R>;
};
template <class A>
using awaitable_task_t = Task<typename TaskValue<await_result_t<A>>::type>;

// The Task a combinator runs for an awaitable: `Stored` is its type (owned,
// moved into the frame) or a reference to it (an lvalue, awaited in place).
template <class Stored>
awaitable_task_t<Stored&&> awaitable_task(Stored awaitable, const char* combinator) {
    using Result = await_result_t<Stored&&>;
    [[maybe_unused]] std::optional<std::stop_callback<WarnStopNotHeard>> warn;
    if constexpr (!enable_stop_aware<std::remove_cvref_t<Stored>>) {
        std::stop_token token = co_await get_stop_token();
        if (token.stop_possible()) {
            warn.emplace(std::move(token), WarnStopNotHeard{combinator});
        }
    }
    if constexpr (std::is_void_v<Result>) {
        co_await static_cast<Stored&&>(awaitable);
    } else if constexpr (std::is_lvalue_reference_v<Result>) {
        co_return std::ref(co_await static_cast<Stored&&>(awaitable));
    } else {
        co_return co_await static_cast<Stored&&>(awaitable);
    }
}

// The Task that stands for a combinator's argument. Precondition:
// Awaitable<A> (the combinators check it first, for a short error).
template <class A>
auto as_task(A&& awaitable, const char* combinator) {
    using Plain = std::remove_cvref_t<A>;
    if constexpr (is_task_v<Plain>) {
        static_assert(!std::is_lvalue_reference_v<A>, "muxio combinators take a Task by value: std::move() it");
        return Plain{std::move(awaitable)};
    } else if constexpr (TaskConvertible<A>) {
        return into_task(std::forward<A>(awaitable));
    } else if constexpr (std::is_lvalue_reference_v<A>) {
        return awaitable_task<A>(awaitable, combinator);
    } else {
        static_assert(std::is_move_constructible_v<Plain>,
                      "muxio combinators keep an rvalue awaitable in a frame of their own, so it must be movable; "
                      "pass a non-movable one as an lvalue that outlives the await");
        return awaitable_task<Plain>(std::move(awaitable), combinator);
    }
}

template <class A>
using as_task_t = decltype(as_task(std::declval<A>(), nullptr));

template <class T>
struct TaskResult;
template <class T>
struct TaskResult<Task<T>> {
    using type = T;
};

// Forwards a stop request from one token to a stop_source (an outer
// cancellation reaching the children of a combinator).
struct ForwardStop {
    std::stop_source* target;
    void operator()() const noexcept { target->request_stop(); }
};

// Cancels a reactor callback when it goes out of scope, on every way out of
// the frame that holds it, its destruction while suspended included. Hooked
// onto the reactor's close, which drops every callback: a frame destroyed
// after its reactor closed, or was destroyed, then has nothing to cancel and
// does not touch it.
class ScopedCallback : private CloseHook {
public:
    ScopedCallback(Reactor& reactor, TimerHandle handle) noexcept : handle_{handle} {
        hook(reactor, Phase::late, &on_reactor_close);
    }
    ScopedCallback(const ScopedCallback&) = delete;
    ScopedCallback& operator=(const ScopedCallback&) = delete;
    ScopedCallback(ScopedCallback&&) = delete;
    ScopedCallback& operator=(ScopedCallback&&) = delete;
    ~ScopedCallback() {
        if (hooked()) {
            handle_.cancel();
        }
    }

private:
    // Unhooked already, so the destructor leaves the handle alone.
    static void on_reactor_close(CloseHook& /*hook*/) noexcept {}

    TimerHandle handle_;
};

// Children running concurrently under one parent: counts those still
// running, resumes the parent (through the ResumeLoop, from the last child's
// end) once none is, remembers the first failure and stops the others.
struct Join {
    std::size_t running = 0;
    std::coroutine_handle<> parent;
    std::stop_source stop;
    std::exception_ptr first_error;
    std::optional<std::size_t> first_done;
    bool stop_on_first_done = false;  // when_any

    // A child ended: the parent to resume, if it was the last and the parent waits.
    std::coroutine_handle<> arrive() noexcept {
        --running;
        return running == 0 ? std::exchange(parent, {}) : std::coroutine_handle<>{};
    }

    // Awaited by the parent: suspends until no child runs.
    struct Wait {
        Join* join;
        [[nodiscard]] bool await_ready() const noexcept { return join->running == 0; }
        void await_suspend(std::coroutine_handle<> awaiter) const noexcept { join->parent = awaiter; }
        void await_resume() const noexcept {}
    };
    [[nodiscard]] Wait wait() noexcept { return {this}; }
};

// One child of a Join: awaits its task, records how it ended, and at its
// end hands control to the parent if it was the last. Owned by the parent,
// or (TaskGroup) by a list it leaves when it ends, freeing its own frame.
class JoinChild {
public:
    struct promise_type {
        Join* join = nullptr;
        // Set for a TaskGroup child: the list of the group's running
        // children, newest first. Such a child unlinks and frees itself at
        // its end, so a long-lived group does not pile up ended frames.
        promise_type** list = nullptr;
        promise_type* prev = nullptr;
        promise_type* next = nullptr;

        void unlink() noexcept {
            (prev != nullptr ? prev->next : *list) = next;
            if (next != nullptr) {
                next->prev = prev;
            }
            prev = next = nullptr;
        }

        JoinChild get_return_object() noexcept {
            return JoinChild{std::coroutine_handle<promise_type>::from_promise(*this)};
        }
        std::suspend_always initial_suspend() noexcept { return {}; }
        auto final_suspend() noexcept {
            struct Final {
                [[nodiscard]] bool await_ready() const noexcept { return false; }
                void await_suspend(std::coroutine_handle<promise_type> self) const noexcept {
                    promise_type& promise = self.promise();
                    const std::coroutine_handle<> parent = promise.join->arrive();
                    if (promise.list != nullptr) {
                        promise.unlink();
                        self.destroy();  // suspended here, so it may go; nothing touches it after
                    }
                    if (parent) {
                        ResumeLoop::transfer(self, parent);
                    }
                }
                void await_resume() const noexcept {}
            };
            return Final{};
        }
        void return_void() noexcept {}
        void unhandled_exception() noexcept { std::terminate(); }  // bodies catch everything
    };

    JoinChild(JoinChild&& other) noexcept : handle_{std::exchange(other.handle_, {})} {}
    JoinChild& operator=(JoinChild&&) = delete;
    JoinChild(const JoinChild&) = delete;
    JoinChild& operator=(const JoinChild&) = delete;
    ~JoinChild() {
        if (handle_) {
            handle_.destroy();  // a suspended child's task is destroyed with it
        }
    }

    /// Counts the child in and runs it until its first suspension.
    void start(Join& join) {
        handle_.promise().join = &join;
        ++join.running;
        ResumeLoop::run(handle_);
    }

    /// Like start(), handing the frame to `list` (see promise_type::list).
    void start_in(Join& join, promise_type*& list) {
        promise_type& promise = handle_.promise();
        promise.list = &list;
        promise.next = list;
        if (list != nullptr) {
            list->prev = &promise;
        }
        list = &promise;
        promise.join = &join;
        ++join.running;
        ResumeLoop::run(std::exchange(handle_, {}));
    }

    /// Destroys the frames of a list's children, newest first.
    static void destroy_all(promise_type*& list) noexcept {
        while (list != nullptr) {
            promise_type& child = *list;
            child.unlink();
            std::coroutine_handle<promise_type>::from_promise(child).destroy();
        }
    }

private:
    explicit JoinChild(std::coroutine_handle<promise_type> handle) noexcept : handle_{handle} {}
    std::coroutine_handle<promise_type> handle_;
};

// The body of a child: `task` runs with the Join's stop token; its result
// stays in its promise for the parent to take.
template <class T>
JoinChild join_child(Join& join, std::size_t index, Task<T>& task) {
    TaskAccess::set_stop_token(task, join.stop.get_token());
    co_await Completion<T>{TaskAccess::handle(task)};
    if (!join.first_done) {
        join.first_done = index;
        if (join.stop_on_first_done) {
            join.stop.request_stop();
        }
    }
    try {
        TaskAccess::handle(task).promise().rethrow_if_failed();
    } catch (...) {
        if (!join.first_error) {
            join.first_error = std::current_exception();
            join.stop.request_stop();
        }
    }
}

template <class T>
using NonVoid = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

template <class T>
NonVoid<T> take_non_void(Task<T>& task) {
    if constexpr (std::is_void_v<T>) {
        take_result(task);
        return {};
    } else {
        return take_result(task);
    }
}

}  // namespace detail

/// Awaits `task` for at most `timeout`: returns its value or rethrows its
/// exception if it ends in time; otherwise cancels it (its ambient token is
/// stopped, so its pending await throws muxio::Cancelled), waits for it to
/// end, and throws muxio::TimeoutError. A task that catches the cancellation
/// and returns a value anyway has its value returned. A stop request on the
/// awaiter's own ambient token reaches the task too, and ends in Cancelled,
/// not TimeoutError.
///
/// Exit paths: the timer and the forwarding of the awaiter's token are
/// released however the await ends (a value, Cancelled, TimeoutError, any
/// other exception, std::logic_error for an empty task) and when the frame
/// is destroyed while suspended; nothing fires into a freed frame.
template <class T, class Rep, class Period>
Task<T> with_timeout(Reactor& reactor, std::chrono::duration<Rep, Period> timeout, Task<T> task) {
    std::stop_source inner;
    const std::stop_token outer = co_await get_stop_token();
    const std::stop_callback<detail::ForwardStop> forward{outer, detail::ForwardStop{&inner}};
    bool timed_out = false;
    auto on_timeout = [&inner, &timed_out] {
        timed_out = true;
        inner.request_stop();
    };
    // Declared after what its callback refers to, so it goes first.
    const detail::ScopedCallback timer{reactor, reactor.call_later(timeout, std::move(on_timeout))};
    if (task.valid()) {
        detail::TaskAccess::set_stop_token(task, inner.get_token());
    }
    try {
        if constexpr (std::is_void_v<T>) {
            co_await std::move(task);
        } else {
            co_return co_await std::move(task);
        }
    } catch (const Cancelled&) {
        if (timed_out && !outer.stop_requested()) {
            throw TimeoutError{};
        }
        throw;
    }
}

/// with_timeout() of any awaitable (muxio::Awaitable): `readable(reactor,
/// fd)`, `sleep_for(...)`, a socket operation, a user's own awaiter. It is
/// made a Task (that allocates its frame) and awaited as one; the result is
/// what its await_resume() returns (an lvalue reference comes back as a
/// std::reference_wrapper). An rvalue is moved into that frame; an lvalue is
/// awaited in place and must outlive the await.
///
/// Cancellation reaches the awaitable through the ambient stop token of that
/// Task, which muxio's awaitables listen to (see enable_stop_aware). An
/// awaitable that does not listen cannot be interrupted: with_timeout() then
/// waits for it to end (its value is returned, as for a task that ignores
/// the cancellation), and logs a warning through muxio::logger() when it
/// stops it, so that the wait is never silent. It is not abandoned, since
/// it may still resume its frame or write into memory its caller owns.
///
/// Anything else is refused at compile time by a static_assert naming
/// muxio::Awaitable.
template <class A, class Rep, class Period>
requires(!detail::is_task_v<std::remove_cvref_t<A>>) auto with_timeout(Reactor& reactor,
                                                                       std::chrono::duration<Rep, Period> timeout,
                                                                       A&& awaitable) {
    static_assert(Awaitable<A>,
                  "with_timeout: the argument must be muxio::Awaitable (a Task, an object with await_ready(), "
                  "await_suspend(handle) and await_resume(), or one with operator co_await)");
    if constexpr (Awaitable<A>) {
        return with_timeout(reactor, timeout, detail::as_task(std::forward<A>(awaitable), "with_timeout"));
    }
}

/// Runs the tasks concurrently and returns their values in order (a void
/// task gives std::monostate). The first task to fail cancels the others
/// (their ambient tokens are stopped); once all have ended, its exception is
/// rethrown. A stop request on the awaiter's ambient token reaches every task.
/// std::logic_error (at the co_await) if a task is empty.
///
/// Exit paths: it returns or throws only once every task has ended;
/// destroying its frame while suspended destroys the tasks' frames (their
/// pending awaits removed, nothing resumed) and stops forwarding the token.
template <class... T>
Task<std::tuple<detail::NonVoid<T>...>> when_all(Task<T>... tasks) {
    if (!(tasks.valid() && ...)) {
        throw std::logic_error("when_all: empty Task");
    }
    detail::Join join;
    const std::stop_token outer = co_await get_stop_token();
    const std::stop_callback<detail::ForwardStop> forward{outer, detail::ForwardStop{&join.stop}};
    auto children = [&]<std::size_t... I>(std::index_sequence<I...>) {
        return std::tuple<decltype(detail::join_child(join, I, tasks))...>{detail::join_child(join, I, tasks)...};
    }
    (std::index_sequence_for<T...>{});
    std::apply([&join](auto&... child) { (child.start(join), ...); }, children);
    co_await join.wait();
    if (join.first_error) {
        std::rethrow_exception(join.first_error);
    }
    co_return std::tuple<detail::NonVoid<T>...>{detail::take_non_void(tasks)...};
}

/// when_all() of any mix of Tasks and awaitables (muxio::Awaitable): each
/// awaitable is made a Task, as with_timeout() does, with the same rules for
/// rvalues, lvalues, references and awaitables that do not listen to the
/// stop token (when_all() waits for them). A static_assert names
/// muxio::Awaitable for an argument that is not one.
template <class... A>
requires(sizeof...(A) > 0 && !(detail::is_task_v<std::remove_cvref_t<A>> && ...)) auto when_all(A&&... awaitables) {
    static_assert((Awaitable<A> && ...),
                  "when_all: every argument must be muxio::Awaitable (a Task, an object with await_ready(), "
                  "await_suspend(handle) and await_resume(), or one with operator co_await)");
    if constexpr ((Awaitable<A> && ...)) {
        return when_all(detail::as_task(std::forward<A>(awaitables), "when_all")...);
    }
}

/// What when_any() returns: which task ended first, and its value.
template <class T>
struct AnyResult {
    /// Position of the first task to end among when_any()'s arguments, from 0.
    std::size_t index;
    /// Its value; std::monostate for Task<void>.
    detail::NonVoid<T> value;
};

/// Runs the tasks concurrently until the first one ends; cancels the others
/// and waits for them to end; returns the first one's index and value, or
/// rethrows its exception. How the others ended (cancelled, most likely) is
/// not reported. All tasks return the same type. std::logic_error (at the
/// co_await) if a task is empty. Exit paths as when_all().
template <class T, class... Rest>
requires(std::is_same_v<T, Rest>&&...) Task<AnyResult<T>> when_any(Task<T> first, Task<Rest>... rest) {
    if (!first.valid() || !(rest.valid() && ...)) {
        throw std::logic_error("when_any: empty Task");
    }
    detail::Join join;
    const std::stop_token outer = co_await get_stop_token();
    const std::stop_callback<detail::ForwardStop> forward{outer, detail::ForwardStop{&join.stop}};
    join.stop_on_first_done = true;
    auto children = [&]<std::size_t... I>(std::index_sequence<I...>) {
        return std::tuple<detail::JoinChild, decltype(detail::join_child(join, I + 1, rest))...>{
            detail::join_child(join, 0, first), detail::join_child(join, I + 1, rest)...};
    }
    (std::index_sequence_for<Rest...>{});
    std::apply([&join](auto&... child) { (child.start(join), ...); }, children);
    co_await join.wait();
    const std::size_t winner = *join.first_done;
    Task<T>* tasks[] = {&first, &rest...};
    co_return AnyResult<T>{winner, detail::take_non_void(*tasks[winner])};
}

/// when_any() of any mix of Tasks and awaitables (muxio::Awaitable), each
/// awaitable made a Task as when_all() does; every argument must produce the
/// same type. The losers are cancelled and awaited: one that does not listen
/// to the stop token is waited for (see with_timeout()). A static_assert
/// names the requirement an argument misses.
template <class... A>
requires(sizeof...(A) > 0 && !(detail::is_task_v<std::remove_cvref_t<A>> && ...)) auto when_any(A&&... awaitables) {
    static_assert((Awaitable<A> && ...),
                  "when_any: every argument must be muxio::Awaitable (a Task, an object with await_ready(), "
                  "await_suspend(handle) and await_resume(), or one with operator co_await)");
    if constexpr ((Awaitable<A> && ...)) {
        using First = typename detail::TaskResult<detail::as_task_t<std::tuple_element_t<0, std::tuple<A...>>>>::type;
        static_assert((std::is_same_v<First, typename detail::TaskResult<detail::as_task_t<A>>::type> && ...),
                      "when_any: every argument must produce the same type");
        if constexpr ((std::is_same_v<First, typename detail::TaskResult<detail::as_task_t<A>>::type> && ...)) {
            return when_any(detail::as_task(std::forward<A>(awaitables), "when_any")...);
        }
    }
}

}  // namespace muxio
