// TaskGroup: structured concurrency; children that cannot outlive their group.
#pragma once

#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <type_traits>
#include <utility>

#include "muxio/combinators.hpp"
#include "muxio/error.hpp"
#include "muxio/task.hpp"

namespace muxio {

/// What a TaskGroup does when a child fails, that is, ends with an exception
/// other than the muxio::Cancelled of the group's own cancellation.
enum class ChildFailure : std::uint8_t {
    /// The first failure stops the group's token, cancelling the siblings,
    /// and join() rethrows it (trio's nursery). The default.
    cancel_group,
    /// The siblings go on; every failure goes to the group's failure handler
    /// and join() does not rethrow it. For a server whose children are its
    /// connections: one failing client must not end the others.
    isolate,
};

/// Receives a child's failure that join() does not rethrow; called on the
/// loop thread as the child ends (or as the group is destroyed). What it
/// throws is logged and dropped.
using ChildFailureHandler = std::function<void(std::exception_ptr)>;

namespace detail {

// Logs a child's failure through muxio::logger() (error level).
void log_child_failure(const std::exception_ptr& failure, const char* context) noexcept;

}  // namespace detail

/// A scope for concurrent child tasks, trio's nursery in small:
///
///     TaskGroup group;
///     group.spawn(serve(a));
///     group.spawn(serve(b));
///     co_await group.join();  // both ended; rethrows the first failure
///
/// spawn() starts a child at once (it runs until its first suspension before
/// spawn() returns). Every child has the group's token as its ambient token.
/// While a task awaits join(), a stop request on its own ambient token
/// cancels the children too, and join() then throws muxio::Cancelled.
///
/// Failures: a child *fails* when it ends with an exception, except a
/// muxio::Cancelled that ends it once the group's token was stopped (by
/// cancel(), by the joiner's cancellation, or by a first failure): that is
/// the group's own doing, not a failure. So `cancel()` then `co_await
/// join()` returns normally, unless a child failed for real. What happens at
/// a failure is the group's ChildFailure policy:
/// - cancel_group (default): the first failure stops the group's token, so
///   its siblings' pending awaits throw Cancelled, and join() rethrows it.
/// - isolate: the siblings go on; join() does not rethrow it.
///
/// No failure is dropped silently: every one that join() does not rethrow
/// (each one under isolate, the later ones under cancel_group, a first one
/// nobody joined before the group was destroyed) goes to the failure handler
/// given to the constructor, or without one is logged through
/// muxio::logger() at error level. failed() counts them all.
///
///     TaskGroup connections{ChildFailure::isolate};  // a server's clients
///
/// Children cannot outlive the group: destroying it destroys the frames of
/// those still running (their pending awaits removed, nothing resumed), so
/// a parent unwinding past its group leaves nothing behind. Fire-and-forget
/// tasks that outlive their creator go through muxio::spawn() instead.
///
/// Exit paths: a task awaiting join() may be destroyed while suspended there
/// (the group then resumes nobody); a group destroyed while another task
/// awaits its join() leaves that task suspended for good, detached from the
/// group (cancelling or destroying it later is safe): destroy the group only
/// from the task that joins it, or after the join.
///
/// A child's frame is freed as soon as it ends, so a group may serve an
/// unbounded stream of children (one per connection, say).
/// Not movable: the children point to it.
class TaskGroup {
public:
    /// A group with the cancel_group policy whose later failures are logged.
    TaskGroup() = default;
    /// A group with `policy`; the failures join() does not rethrow go to
    /// `on_failure`, or are logged if it is empty.
    explicit TaskGroup(ChildFailure policy, ChildFailureHandler on_failure = {}) noexcept
        : policy_{policy}, on_failure_{std::move(on_failure)} {}
    TaskGroup(const TaskGroup&) = delete;
    TaskGroup& operator=(const TaskGroup&) = delete;
    TaskGroup(TaskGroup&&) = delete;
    TaskGroup& operator=(TaskGroup&&) = delete;
    ~TaskGroup() {
        if (joiner_ != nullptr) {
            joiner_->detach();  // the awaiting task stays suspended, pointing nowhere
        }
        // The frames of running children go first (the Join must outlive
        // them), latest first.
        detail::JoinChild::destroy_all(children_);
        if (join_.first_error) {
            report(std::exchange(join_.first_error, nullptr), "a failure nobody joined");
        }
    }

    /// Adds `task` as a child and starts it; its value is discarded.
    /// std::logic_error for an empty task.
    template <class T>
    void spawn(Task<T> task) {
        if (!task.valid()) {
            throw std::logic_error("TaskGroup::spawn: empty Task");
        }
        detail::TaskAccess::set_stop_token(task, join_.stop.get_token());
        child(*this, std::move(task)).start_in(join_, children_);
    }
    /// spawn() of any awaitable (muxio::Awaitable): a socket operation,
    /// readable(), a user's awaiter, made a Task as with_timeout() does (an
    /// lvalue is awaited in place and must outlive the child).
    template <class A>
    requires(!detail::is_task_v<std::remove_cvref_t<A>>) void spawn(A&& awaitable) {
        static_assert(Awaitable<A>,
                      "TaskGroup::spawn: the argument must be muxio::Awaitable (a Task, an object with await_ready(), "
                      "await_suspend(handle) and await_resume(), or one with operator co_await)");
        if constexpr (Awaitable<A>) {
            spawn(detail::as_task(std::forward<A>(awaitable), "TaskGroup"));
        }
    }

    /// Stops the group's token: the children's pending awaits throw
    /// Cancelled, which is not a failure (join() returns normally for it).
    /// Children spawned afterwards start cancelled.
    void cancel() noexcept { join_.stop.request_stop(); }

    /// Number of children still running.
    [[nodiscard]] std::size_t running() const noexcept { return join_.running; }
    /// Number of children that failed so far (see the class comment).
    [[nodiscard]] std::size_t failed() const noexcept { return failed_; }
    /// The policy given to the constructor.
    [[nodiscard]] ChildFailure policy() const noexcept { return policy_; }

    /// `co_await group.join()` resumes once no child runs. Under cancel_group
    /// it rethrows the first failure of a child (once: a second join() does
    /// not rethrow it); under isolate it rethrows none. Throws
    /// muxio::Cancelled if the awaiting task's own ambient token was stopped
    /// while it waited (its children were cancelled then). One task at a time
    /// may await it: std::logic_error (at the co_await) for a second one
    /// while the first waits.
    [[nodiscard]] auto join() noexcept { return JoinAwaiter{this}; }

private:
    class JoinAwaiter {
    public:
        explicit JoinAwaiter(TaskGroup* group) noexcept : group_{group} {}
        JoinAwaiter(const JoinAwaiter&) = delete;
        JoinAwaiter& operator=(const JoinAwaiter&) = delete;
        JoinAwaiter(JoinAwaiter&&) = delete;
        JoinAwaiter& operator=(JoinAwaiter&&) = delete;
        // Also runs when the awaiting frame is destroyed while suspended
        // here: the group then resumes nobody when its last child ends.
        ~JoinAwaiter() {
            if (group_ != nullptr && group_->joiner_ == this) {
                group_->joiner_ = nullptr;
                group_->join_.parent = {};
            }
        }

        [[nodiscard]] bool await_ready() const noexcept { return group_->join_.running == 0; }
        template <class Promise>
        void await_suspend(std::coroutine_handle<Promise> awaiter) {
            if (group_->joiner_ != nullptr) {
                throw std::logic_error("TaskGroup::join: another task is awaiting this group's join() already");
            }
            group_->joiner_ = this;
            group_->join_.parent = awaiter;
            outer_ = detail::ambient_stop_token(awaiter);
            if (outer_.stop_possible()) {
                forward_.emplace(outer_, detail::ForwardStop{&group_->join_.stop});
            }
        }
        void await_resume() {
            forward_.reset();
            if (group_->joiner_ == this) {
                group_->joiner_ = nullptr;
            }
            if (group_->join_.first_error) {
                std::rethrow_exception(std::exchange(group_->join_.first_error, nullptr));
            }
            if (outer_.stop_requested()) {
                throw Cancelled{};
            }
        }

    private:
        friend class TaskGroup;
        // The group is being destroyed: forget it.
        void detach() noexcept {
            forward_.reset();
            group_->joiner_ = nullptr;
            group_->join_.parent = {};
            group_ = nullptr;
        }

        TaskGroup* group_;
        std::stop_token outer_;
        std::optional<std::stop_callback<detail::ForwardStop>> forward_;
    };

    // The body of a child: awaits `task` and sorts out how it ended.
    template <class T>
    static detail::JoinChild child(TaskGroup& group, Task<T> task) {
        co_await detail::Completion<T>{detail::TaskAccess::handle(task)};
        try {
            detail::TaskAccess::handle(task).promise().rethrow_if_failed();
        } catch (const Cancelled&) {
            if (!group.join_.stop.stop_requested()) {
                group.child_failed(std::current_exception());
            }
        } catch (...) {
            group.child_failed(std::current_exception());
        }
    }

    void child_failed(std::exception_ptr failure) noexcept {
        ++failed_;
        if (policy_ == ChildFailure::cancel_group && !join_.first_error) {
            join_.first_error = std::move(failure);
            join_.stop.request_stop();
            return;
        }
        report(std::move(failure), "a child failed");
    }

    void report(std::exception_ptr failure, const char* context) const noexcept {
        if (!on_failure_) {
            detail::log_child_failure(failure, context);
            return;
        }
        try {
            on_failure_(failure);
        } catch (...) {
            detail::log_child_failure(failure, "a child failed, and the failure handler threw");
        }
    }

    detail::Join join_;
    detail::JoinChild::promise_type* children_ = nullptr;  // running, newest first
    JoinAwaiter* joiner_ = nullptr;                        // the join() awaited now, if any
    ChildFailure policy_ = ChildFailure::cancel_group;
    ChildFailureHandler on_failure_;
    std::size_t failed_ = 0;
};

}  // namespace muxio
